"""Short probes of FedVQ's gap to FedAvg on Fashion-MNIST (issue 25): one config per job, scored on VALIDATION.

Each probe is one in-process federated job (the real ServerApp and ClientApp on ``run_local``, the cells of
``bench/fashion_mnist.py``) with ``metrics.pooled-validation = true``: every client also scores the model it
evaluates on the union of all clients' validation splits (``pooled-val``, the federation's label mix, the proxy
of global accuracy used for choices). The global test accuracy is recorded beside it but never used to choose.
Per round it records the mean training accuracy, local and pooled validation accuracy, codes used and
perplexity; rows go to ``bench/results/fedvq_fashion_probes.jsonl``.

    python bench/fedvq_fashion_probe.py --probe defaults --probe no-recal=fedvq.recalibrate-bn=false
    python bench/fedvq_fashion_probe.py --method fedavg --probe fedavg
    python bench/fedvq_fashion_probe.py --dataset digits --scenario dirichlet-0.5 --probe defaults

``--probe NAME[=key=value,key=value...]``: the overrides are run-config keys (booleans true/false, numbers).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import emit, rounds_of  # noqa: E402
from bench.fashion_mnist import ROW_OF, cell_config  # noqa: E402

NAME = "fedvq_fashion_probes"


def parse_value(text: str):
    if text in ("true", "false"):
        return text == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_probe(text: str) -> tuple[str, dict]:
    name, _, rest = text.partition("=")
    overrides = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        overrides[key.strip()] = parse_value(value.strip())
    return name, overrides


def bipartition_purity(sim: np.ndarray, ids: list, entry: dict) -> float | None:
    """Purity of the halves complete linkage would cut this round (rotation groups: the last half rotated)."""
    from fedvq_app.aggregation.clustering import bipartition, cluster_purity  # noqa: PLC0415

    if len(ids) < 2:
        return None
    halves = bipartition(sim, [int(i) for i in ids])
    return cluster_purity(list(halves), {int(i): int(int(i) >= len(ids) // 2) for i in ids})


def cfl_stats(record: dict) -> dict:
    """CFL's root-cluster norms, mean member norm and the similarity within / across the rotation groups."""
    stats = (record.get("strategy") or {}).get("cluster_stats") or {}
    if not stats:
        return {}
    out = {"clusters": len((record.get("strategy") or {}).get("clusters") or {})}
    for cluster, entry in stats.items():
        ids = entry["participants"]
        norms = entry["client_norms"]
        sim = np.asarray(entry["similarity"], float)
        rotated = np.array([int(i) >= len(ids) // 2 for i in ids])  # rotated-half: the last half is rotated
        same = rotated[:, None] == rotated[None, :]
        off = ~np.eye(len(ids), dtype=bool)
        out[f"c{cluster}"] = {
            "mean_norm": entry["mean_norm"],
            "max_norm": entry["max_norm"],
            "avg_member_norm": float(np.mean(list(norms.values()))),
            "within_sim": float(sim[same & off].mean()) if (same & off).any() else None,
            "cross_sim": float(sim[~same].mean()) if (~same).any() else None,
            "bipartition_purity": bipartition_purity(sim, ids, entry),
            "split": entry["split"],
            "reason": entry["reason"],
        }
    return out


def per_round(rounds: list[dict]) -> list[dict]:
    out = []
    for record in rounds:
        train = (record.get("train") or {}).get("aggregated") or {}
        evaluate = (record.get("evaluate") or {}).get("aggregated") or {}
        out.append(
            {
                **cfl_stats(record),
                "round": record["round"],
                "train_accuracy": train.get("train-accuracy"),
                "codes_used": train.get("codebook-used"),
                "perplexity": train.get("codebook-perplexity"),
                "val_accuracy": evaluate.get("val-accuracy"),
                "pooled_val_accuracy": evaluate.get("pooled-val-accuracy"),
                "test_accuracy": evaluate.get("test-accuracy"),
            }
        )
    return out


def apply_diagnostics(overrides: dict) -> dict:
    """Diagnostic ablations that are not run-config options (keys ``probe.*``), applied in this process only.

    * ``probe.identity-vq``: the quantizer still runs (codes, EMA, statistics) but the decoder gets the
      encoder's features unquantized and the commitment loss is zero: what the quantization itself costs.
    * ``probe.decoder-norm-none``: the decoder's BatchNorm layers replaced by identities.
    """
    from torch import nn  # noqa: PLC0415

    from fedvq_app.models import vq  # noqa: PLC0415

    diagnostics = {k: v for k, v in overrides.items() if k.startswith("probe.")}
    if diagnostics.get("probe.identity-vq"):
        original = vq.EMAVQ.forward

        def passthrough(self, x):
            _, commitment, perplexity, codes = original(self, x)
            return x, commitment * 0.0, perplexity, codes

        vq.EMAVQ.forward = passthrough
    if diagnostics.get("probe.decoder-norm-none"):
        vq._norm = lambda dim, kind: nn.Identity()
    return {k: v for k, v in overrides.items() if not k.startswith("probe.")}


def run_probe(method: str, name: str, overrides: dict, args: argparse.Namespace, work: str) -> dict:
    logging.getLogger("flwr").setLevel(logging.WARNING)
    run_overrides = apply_diagnostics(overrides)
    from fedvq_app.client_app import app as client_app  # noqa: PLC0415
    from fedvq_app.local_grid import run_local  # noqa: PLC0415
    from fedvq_app.server_app import app as server_app  # noqa: PLC0415

    setup = {
        "rounds": args.rounds,
        "eval_every": 1,
        "local_epochs": args.local_epochs,
        "max_train_samples": args.max_train_samples,
        "max_test_samples": args.max_test_samples,
    }
    config = cell_config(method, args.scenario, args.seed, setup, work)
    config["metrics.pooled-validation"] = True
    if args.dataset != "fashion-mnist":
        config["dataset.name"] = args.dataset
        config["dataset.size"] = args.size
    config["experiment-name"] = f"{method}_{name}_s{args.seed}"
    config.update(run_overrides)
    started = time.time()
    run_local(server_app, client_app, args.clients or ROW_OF[args.scenario].clients, config)
    curve = per_round(rounds_of(Path(work) / config["experiment-name"]))
    return {
        "probe": name,
        "method": method,
        "overrides": overrides,
        "dataset": args.dataset,
        "scenario": args.scenario,
        "seed": args.seed,
        "rounds": args.rounds,
        "local_epochs": args.local_epochs,
        "max_train_samples": args.max_train_samples,
        "final": curve[-1] if curve else {},
        "curve": curve,
        "seconds": time.time() - started,
    }


def plot(out: Path) -> Path:
    """Pooled validation accuracy per round of every recorded Fashion-MNIST Dirichlet 0.5 probe (newest per name)."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    from bench.common import RESULTS  # noqa: PLC0415

    records = [json.loads(x) for x in (RESULTS / f"{NAME}.jsonl").read_text().splitlines() if x.strip()]
    newest = {r["probe"]: r for r in records if r["dataset"] == "fashion-mnist" and r["scenario"] == "dirichlet-0.5"}
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for name, record in newest.items():
        points = [(c["round"], c["pooled_val_accuracy"]) for c in record["curve"] if c["pooled_val_accuracy"]]
        style = {"lw": 2.5, "color": "k"} if name == "fedavg" else {}
        ax.plot(*zip(*points, strict=True), marker="o", ms=3, label=f"{record['method']}: {name}", **style)
    ax.set_xlabel("round")
    ax.set_ylabel("pooled validation accuracy")
    ax.set_title("Fashion-MNIST, Dirichlet 0.5, 10 clients, 12k pool, seed 0", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plot", type=Path, help="only draw the Dirichlet 0.5 probes' curves to this PNG")
    parser.add_argument("--probe", action="append", default=[], help="NAME[=key=value,...]")
    parser.add_argument("--method", default="fedvq")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--scenario", default="dirichlet-0.5", choices=sorted(ROW_OF))
    parser.add_argument("--clients", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--max-train-samples", type=int, default=12000)
    parser.add_argument("--max-test-samples", type=int, default=0)
    args = parser.parse_args(argv)
    if args.plot:
        print(f"wrote {plot(args.plot)}")
        return
    if not args.probe:
        parser.error("--probe is required (or --plot)")
    for text in args.probe:
        name, overrides = parse_probe(text)
        work = tempfile.mkdtemp(prefix="fedvq_probe_")
        try:
            record = run_probe(args.method, name, overrides, args, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        record = emit(NAME, record)
        final = record["final"]
        print(
            f"PROBE {args.method}/{name} {args.dataset} {args.scenario} s{args.seed}: "
            f"pooled-val {final.get('pooled_val_accuracy')} val {final.get('val_accuracy')} "
            f"train {final.get('train_accuracy')} test {final.get('test_accuracy')} "
            f"codes {final.get('codes_used')} ppl {final.get('perplexity')} ({record['seconds']:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
