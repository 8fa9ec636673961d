"""The gradient through FedVQ's ema quantizer under the README's SGD: rotation trick vs straight-through (issue 13).

One model trained centrally on all of digits' training images (28x28, the pyproject's data
settings) with the README's optimizer (SGD, lr 0.05, momentum 0.9, weight decay 1e-4, batch 32)
for ``--steps`` steps, from the same initialisation and batches for every variant:
vector-quantize-pytorch's rotation trick (its default) or the straight-through estimator
(``fedvq.rotation-trick = false``), with the pool head and the flatten head, and the plain CNN
FedAvg trains for reference. Per window of 25 steps: mean loss, training accuracy of the
batches, the largest global gradient norm of the encoder, and for the VQ models the share of
non-zero 8-d chunks whose nearest code is more than 100x longer (``||q|| / ||z|| > 100``: the
rotation trick scales their gradient by that ratio). Appends to
``bench/results/fedvq_gradient.jsonl``.

    python bench/fedvq_gradient.py [--steps 100] [--seeds 0,1]
    python bench/fedvq_gradient.py --table    # the markdown table of docs/fedvq.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench.common import emit  # noqa: E402
from fedvq_app.data.client_data import load_client_data, normalize_batch  # noqa: E402
from fedvq_app.data.datasets import DatasetInfo  # noqa: E402
from fedvq_app.local_grid import full_run_config  # noqa: E402
from fedvq_app.methods.fedvq import build_model  # noqa: E402
from fedvq_app.models import build_classifier  # noqa: E402
from fedvq_app.registry import load_settings  # noqa: E402
from fedvq_app.training.loop import make_optimizer  # noqa: E402

NAME = "fedvq_gradient"
WINDOW = 25
#: variant -> run-config overrides of the fedvq model (None: the plain CNN)
VARIANTS = {
    "cnn": None,
    "rotation-pool": {"fedvq.rotation-trick": True},
    "ste-pool": {"fedvq.rotation-trick": False},
    "rotation-flatten": {"fedvq.rotation-trick": True, "fedvq.head": "flatten"},
    "ste-flatten": {"fedvq.rotation-trick": False, "fedvq.head": "flatten"},
}


def run(variant: str, steps: int, seed: int) -> dict:
    overrides = VARIANTS[variant]
    settings = load_settings(full_run_config(method="fedvq", seed=seed, **(overrides or {})))
    data = load_client_data(settings, 0, 1)  # one partition: every training image
    info = DatasetInfo(
        name=settings.dataset.name,
        num_classes=data.num_classes,
        channels=data.train_x.shape[1],
        size=data.train_x.shape[-1],
        class_names=(),
    )
    torch.manual_seed(seed)
    model = (
        build_classifier(settings.model, info.channels, info.size, info.num_classes)
        if overrides is None
        else build_model(settings, info)
    )
    optimizer = make_optimizer(model.parameters(), settings.train)
    batches = torch.Generator().manual_seed(seed)
    opts = settings.method_options
    steps_log = []
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, data.train_x.shape[0], (settings.train.batch_size,), generator=batches)
        x, y = normalize_batch(data.train_x[idx]), data.train_y[idx]
        large = None
        if overrides is None:
            logits = model(x)
            loss = F.cross_entropy(logits, y)
        else:
            out = model(x)
            logits = out.logits
            loss = (
                F.cross_entropy(logits, y)
                + opts.vq_weight * out.commitment
                + opts.recon_weight * F.mse_loss(out.decoded, out.features.detach())
            )
            with torch.no_grad():
                chunks = out.features.permute(0, 2, 3, 1).reshape(-1, model.vq.heads, model.vq.code_dim)
                codes = model.vq.codebook[out.codes.reshape(-1, model.vq.heads)]
                norm = chunks.norm(dim=-1)
                ratio = codes.norm(dim=-1)[norm > 0] / norm[norm > 0]
                large = float((ratio > 100).double().mean())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        first = model.encoder if overrides is not None else model.backbone
        grad = torch.stack([p.grad.norm() for p in first.parameters() if p.grad is not None]).norm()
        optimizer.step()
        steps_log.append((float(loss), float((logits.argmax(1) == y).double().mean()), float(grad), large))
    windows = []
    for start in range(0, steps, WINDOW):
        chunk = steps_log[start : start + WINDOW]
        ratios = [c[3] for c in chunk if c[3] is not None]
        windows.append(
            {
                "from_step": start,
                "loss": statistics.mean(c[0] for c in chunk),
                "accuracy": statistics.mean(c[1] for c in chunk),
                "max_encoder_grad": max(c[2] for c in chunk),
                "share_ratio_over_100": statistics.mean(ratios) if ratios else None,
            }
        )
    return {
        "variant": variant,
        "seed": seed,
        "steps": steps,
        "optimizer": settings.train.optimizer,
        "lr": settings.train.lr,
        "momentum": settings.train.momentum,
        "size": info.size,
        "train_images": int(data.train_x.shape[0]),
        "windows": windows,
        "final_window_accuracy": windows[-1]["accuracy"],
        "max_loss": max(c[0] for c in steps_log),
    }


def table() -> str:
    """Markdown: per variant and seed (newest record), accuracy of the last window, largest loss and encoder
    gradient, share of chunks with ||q||/||z|| > 100 (mean over the windows)."""
    import json  # noqa: PLC0415

    from bench.common import RESULTS  # noqa: PLC0415

    newest = {}
    for line in (RESULTS / f"{NAME}.jsonl").read_text().splitlines():
        r = json.loads(line)
        newest[(r["variant"], r["seed"])] = r
    lines = [
        "| variant | seed | batch accuracy, steps 75-99 | largest loss | largest encoder gradient norm | "
        "chunks with `\\|\\|q\\|\\|/\\|\\|z\\|\\|` > 100 |",
        "|---|---|---|---|---|---|",
    ]
    for (variant, seed), r in sorted(newest.items(), key=lambda kv: (list(VARIANTS).index(kv[0][0]), kv[0][1])):
        shares = [w["share_ratio_over_100"] for w in r["windows"] if w["share_ratio_over_100"] is not None]
        share = f"{statistics.mean(shares):.1e}" if shares else "-"
        grad = max(w["max_encoder_grad"] for w in r["windows"])
        lines.append(
            f"| {variant} | {seed} | {r['final_window_accuracy']:.3f} | {r['max_loss']:.1f} | {grad:.1f} | {share} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--quick", action="store_true", help="10 steps, one seed, not recorded")
    parser.add_argument("--table", action="store_true", help="only print the markdown table of the records")
    args = parser.parse_args()
    if args.table:
        print(table())
        return
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",") if s]
    for seed in seeds:
        for variant in [v for v in args.variants.split(",") if v]:
            emit(NAME, run(variant, 10 if args.quick else args.steps, seed), quick=args.quick)


if __name__ == "__main__":
    main()
