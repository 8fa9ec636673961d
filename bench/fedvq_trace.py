"""bench/fedvq_configs.py with an observer on FedVQ's local steps: what the gradient does in a federated run (issue 13).

The same jobs as ``bench/fedvq_configs.py`` (same arguments, same records and table), with
``FedVQClient``'s batch loss, training hooks and local training wrapped by a pure observer: it
computes the same loss in the same order and adds no randomness, so the run is the one the
configurations script would make. Per client and round it appends to ``--trace`` (default
``bench/results/fedvq_trace.jsonl``): the mean training loss, the largest batch loss, the
largest global gradient norm of the encoder and of the whole model over the local steps, and
for the ema quantizer the largest ``||q|| / ||z||`` among non-zero chunks and the mean share of
chunks with that ratio above 100 (the rotation trick scales a chunk's gradient by it).

    python bench/fedvq_trace.py --scenario readme --configs defaults-ste,defaults-rotation --seeds 7,123
"""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fedvq_app.clients.fedvq import FedVQClient  # noqa: E402
from fedvq_app.training.loop import TrainHook  # noqa: E402

RATIO_LIMIT = 100.0


def _fresh() -> dict:
    return {
        "ratio_max": 0.0,
        "ratio_over_100": 0.0,
        "loss_max": 0.0,
        "ce_max": 0.0,
        "recon_max": 0.0,
        "steps": 0,
        "encoder_grad_max": 0.0,
        "grad_max": 0.0,
    }


class GradientObserver(TrainHook):
    """Largest gradient norms of the encoder and of the whole model before each optimizer step."""

    def __init__(self, trace: dict) -> None:
        self.trace = trace

    def before_step(self, model) -> None:
        norms = {n: p.grad.norm() for n, p in model.named_parameters() if p.grad is not None}
        encoder = [v for n, v in norms.items() if n.startswith("encoder.")]
        if encoder:
            self.trace["encoder_grad_max"] = max(self.trace["encoder_grad_max"], float(torch.stack(encoder).norm()))
        self.trace["grad_max"] = max(self.trace["grad_max"], float(torch.stack(list(norms.values())).norm()))


def observe(trace_path: Path) -> None:
    """Wrap FedVQClient's batch loss, hooks and local training (same arithmetic, one trace line per client-round)."""
    train_hooks, local_train = FedVQClient.train_hooks, FedVQClient.local_train
    out = trace_path.open("a")

    def batch_loss(self, model, x, y):
        result = model(x)
        recon = F.mse_loss(result.decoded, result.features.detach())
        ce = F.cross_entropy(result.logits, y)
        loss = ce + self.options.vq_weight * result.commitment  # FedVQClient.batch_loss's terms, in its order
        loss = loss + self.options.recon_weight * recon
        self._perplexity_sum += float(result.perplexity.detach()) * len(y)
        self._perplexity_n += len(y)
        trace = self._trace
        with torch.no_grad():
            if self.options.quantizer == "ema":
                vq = model.vq
                chunks = result.features.permute(0, 2, 3, 1).reshape(-1, vq.heads, vq.code_dim)
                codes = vq.codebook[result.codes.reshape(-1, vq.heads)]
                norm = chunks.norm(dim=-1)
                ratio = codes.norm(dim=-1)[norm > 0] / norm[norm > 0]
                if ratio.numel():
                    trace["ratio_max"] = max(trace["ratio_max"], float(ratio.max()))
                    trace["ratio_over_100"] += float((ratio > RATIO_LIMIT).double().mean())
        trace["loss_max"] = max(trace["loss_max"], float(loss))
        trace["ce_max"] = max(trace["ce_max"], float(ce))
        trace["recon_max"] = max(trace["recon_max"], float(recon))
        trace["steps"] += 1
        return loss, result.logits

    def hooks(self, model, msg):
        return [GradientObserver(self._trace), *train_hooks(self, model, msg)]

    def train(self, model, msg, hook_list):
        self._trace = _fresh()
        result = local_train(self, model, msg, hook_list)
        trace = self._trace
        trace["ratio_over_100"] /= max(trace["steps"], 1)
        out.write(
            json.dumps(
                {
                    "experiment": self.settings.experiment_name,
                    "round": int(msg.content["config"]["server-round"]),
                    "partition": self.partition_id,
                    "mean_loss": result.loss,
                    **trace,
                }
            )
            + "\n"
        )
        out.flush()
        return result

    FedVQClient.batch_loss, FedVQClient.train_hooks, FedVQClient.local_train = batch_loss, hooks, train


def main() -> None:
    args = sys.argv[1:]
    trace = ROOT / "bench" / "results" / "fedvq_trace.jsonl"
    if "--trace" in args:
        at = args.index("--trace")
        trace = Path(args[at + 1])
        del args[at : at + 2]
    observe(trace)
    sys.argv = [str(ROOT / "bench" / "fedvq_configs.py"), *args]
    runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
