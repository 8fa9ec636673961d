"""FedVQ: final accuracy and aggregation seconds per codebook aggregator, with and without alignment.

Every cell is one whole federated job (the real ServerApp and ClientApp on the
in-process grid) from ``conf/fedvq_digits.toml`` (digits, 10 clients, Dirichlet
0.5, small CNN trunk, 64 x 64 codebook) with the same seed, rounds and local
epochs; only ``codebook.aggregation`` and ``codebook.align`` change. Figures per
cell, read from the job's ``summary.json``: final mean global-test accuracy over
clients (each client's model: private encoder + global VQ/decoder/classifier),
the best round's, macro-F1, the mean seconds per round the server spent in
codebook aggregation, the final codebook inertia and usage ratio, and the job's
seconds.

Each cell prints one JSON line and appends it to ``bench/results/fedvq_accuracy.jsonl``;
``bench/results/fedvq_accuracy.md`` is rebuilt after every cell from the newest
cell of each (aggregator, align) with the same setup.

    python bench/fedvq_accuracy.py                                   # 5 aggregators x {none, hungarian}
    python bench/fedvq_accuracy.py --aggregators mean,kmeans --aligns hungarian
    python bench/fedvq_accuracy.py --quick                           # 3 clients, 1 round, not recorded
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS, emit  # noqa: E402
from fedvq_app.aggregation.codebook import AGGREGATORS, ALIGN_MODES  # noqa: E402
from fedvq_app.client_app import app as client_app  # noqa: E402
from fedvq_app.local_grid import full_run_config, run_local  # noqa: E402
from fedvq_app.server_app import app as server_app  # noqa: E402

NAME = "fedvq_accuracy"
ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf" / "fedvq_digits.toml"
#: the order of the grid: the issue's four aggregators first, weighted-kmeans last
ORDER = ("usage-kmeans", "kmeans", "mean", "wasserstein", "weighted-kmeans")


def cell(config: dict, clients: int, log_dir: Path, aggregation: str, align: str) -> dict:
    """One federated job; its figures from summary.json."""
    name = f"{aggregation}_{align}_seed{full_run_config(**config)['seed']}"
    run_config = full_run_config(
        **{
            **config,
            "codebook.aggregation": aggregation,
            "codebook.align": align,
            "log-dir": str(log_dir),
            "experiment-name": name,
        }
    )
    started = time.time()
    run_local(server_app, client_app, clients, run_config)
    seconds = time.time() - started
    summary = json.loads((log_dir / name / "summary.json").read_text())
    report = summary["fedvq"]
    final, best = summary["final"], summary["best"]
    return {
        "aggregation": aggregation,
        "align": align,
        "final_accuracy": final["accuracy"],
        "final_macro_f1": final.get("macro_f1"),
        "min_client_accuracy": final.get("min_client_accuracy"),
        "best_accuracy": best["accuracy"],
        "best_round": best["round"],
        "aggregation_s_per_round": report["aggregation_s_mean"],
        "final_inertia": report["final_inertia"],
        "final_usage_ratio": report["final_usage_ratio"],
        "job_seconds": seconds,
        "experiment_dir": str(log_dir / name),
    }


def setup_of(config: dict, clients: int) -> dict:
    keys = (
        "num-server-rounds",
        "train.local-epochs",
        "seed",
        "dataset.name",
        "partition.kind",
        "partition.alpha",
        "codebook.num-embeddings",
        "codebook.embedding-dim",
        "model.name",
        "eval-every",
    )
    full = full_run_config(**config)
    return {"clients": clients, **{k: full[k] for k in keys}}


def _section(setup: dict, newest: dict[tuple[str, str], dict]) -> list[str]:
    aligns = [a for a in ALIGN_MODES if any(k[1] == a for k in newest)]
    lines = [
        f"## {setup['dataset.name']}: {setup['clients']} clients, {setup['partition.kind']} "
        f"alpha={setup['partition.alpha']}, {setup['num-server-rounds']} rounds x {setup['train.local-epochs']} "
        f"local epochs, seed {setup['seed']}, codebook {setup['codebook.num-embeddings']} x "
        f"{setup['codebook.embedding-dim']}",
        "",
        "| aggregator | "
        + " | ".join(f"acc align={a}" for a in aligns)
        + " | "
        + " | ".join(f"agg s/round align={a}" for a in aligns)
        + " |",
        "|---|" + "---|" * (2 * len(aligns)),
    ]
    for aggregation in ORDER:
        row = [newest.get((aggregation, a)) for a in aligns]
        if not any(row):
            continue
        accs = [f"{r['final_accuracy']:.4f} ({r['best_accuracy']:.4f})" if r else "-" for r in row]
        secs = [f"{r['aggregation_s_per_round']:.4f}" if r else "-" for r in row]
        lines.append(f"| `{aggregation}` | " + " | ".join(accs) + " | " + " | ".join(secs) + " |")
    dates = sorted(r["date"] for r in newest.values())
    return [*lines, "", f"Measured {dates[0]} to {dates[-1]}.", ""]


def write_table() -> Path:
    """bench/results/fedvq_accuracy.md: one table per setup, the newest cell of each (aggregation, align)."""
    by_setup: dict[str, tuple[dict, dict[tuple[str, str], dict]]] = {}
    path = RESULTS / f"{NAME}.jsonl"
    for line in path.read_text().splitlines() if path.is_file() else []:
        record = json.loads(line)
        key = json.dumps(record["setup"], sort_keys=True)
        by_setup.setdefault(key, (record["setup"], {}))[1][(record["aggregation"], record["align"])] = record
    lines = [
        "# FedVQ: final mean global-test accuracy per codebook aggregator and alignment",
        "",
        "Final-round mean over clients of each client's global-test accuracy (best round's in brackets) and the "
        "mean seconds per round the server spent in codebook aggregation. `python bench/fedvq_accuracy.py`.",
        "",
    ]
    for setup, newest in by_setup.values():
        lines += _section(setup, newest)
    out = RESULTS / f"{NAME}.md"
    out.write_text("\n".join(lines))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--aggregators", default=",".join(ORDER))
    parser.add_argument("--aligns", default="none,hungarian")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=0, help="override num-server-rounds of the conf file")
    parser.add_argument("--local-epochs", type=int, default=0, help="override train.local-epochs")
    parser.add_argument("--seed", type=int, default=None, help="override the run seed (data split, init, sampling)")
    parser.add_argument("--log-dir", default=str(ROOT / "logs" / "bench_fedvq"))
    parser.add_argument("--quick", action="store_true", help="3 clients, 1 round; printed, not recorded")
    args = parser.parse_args()
    config = tomllib.loads(CONF.read_text())
    if args.rounds:
        config["num-server-rounds"] = args.rounds
    if args.local_epochs:
        config["train.local-epochs"] = args.local_epochs
    if args.seed is not None:
        config["seed"] = args.seed
    clients = args.clients
    if args.quick:
        config.update(
            {
                "num-server-rounds": 1,
                "train.local-epochs": 1,
                "dataset.size": 12,
                "codebook.num-embeddings": 16,
                "codebook.embedding-dim": 8,
            }
        )
        clients = 3
    aggregators = [a for a in args.aggregators.split(",") if a]
    aligns = [a for a in args.aligns.split(",") if a]
    unknown = sorted(set(aggregators) - set(AGGREGATORS)) + sorted(set(aligns) - set(ALIGN_MODES))
    if unknown:
        parser.error(f"unknown aggregator/align {unknown}; allowed {sorted(AGGREGATORS)} / {sorted(ALIGN_MODES)}")
    setup = setup_of(config, clients)
    log_dir = Path(args.log_dir).resolve()
    for aggregation in aggregators:
        for align in aligns:
            figures = cell(config, clients, log_dir, aggregation, align)
            emit(NAME, {"setup": setup, **figures}, quick=args.quick)
            if not args.quick:
                write_table()


if __name__ == "__main__":
    from fedvq_app.errors import cli  # noqa: PLC0415

    sys.exit(cli(main))
