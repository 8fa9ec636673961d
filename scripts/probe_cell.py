#!/usr/bin/env python
"""One cell of ``bench/reproduce.py`` (same run config) with run-config overrides; prints val and test figures.

For choosing a method's defaults by *validation* at the grid's budget: the line carries the final
mean validation accuracy (each client's own validation split) next to the global-test accuracy,
the own-distribution accuracy, the accuracy on the classes each client has / never trained on, for
FusedSpaceFed the final reconstruction loss and for FedLoGe every inference mode's own-validation and
own-test accuracy (``bench/reproduce.py``'s helpers). One JSON line
per run, appended to ``--out``.

    python scripts/probe_cell.py fusedspace dirichlet-0.05 --seed 42 -- fusedspace.task-aware=false
    python scripts/probe_cell.py fusedspace dirichlet-0.05 --rounds 30
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.methods import SCENARIOS  # noqa: E402
from bench.reproduce import (  # noqa: E402
    mode_figures,
    pooled_val_accuracy,
    reconstruction_seen_unseen,
    seen_unseen_accuracy,
)
from fedvq_app.simulation import parse_overrides  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("method")
    parser.add_argument("scenario", choices=list(SCENARIOS))
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--tag", default="")
    parser.add_argument("--out", type=Path, default=ROOT / "logs" / "probe_cells.jsonl")
    args, rest = parser.parse_known_args()
    overrides = parse_overrides([x for x in rest if x != "--"], "probe_cell.py") if rest else {}

    from fedvq_app.client_app import app as client_app  # noqa: PLC0415
    from fedvq_app.local_grid import full_run_config, run_local  # noqa: PLC0415
    from fedvq_app.server_app import app as server_app  # noqa: PLC0415

    logging.getLogger("flwr").setLevel(logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="probe_cell_"))
    name = f"{args.method}_{args.scenario}_s{args.seed}"
    # bench/reproduce.py's cell: digits 8x8, 2 local epochs, evaluation (and Gamma, 4 batches) at the end only
    config = full_run_config(
        method=args.method,
        seed=args.seed,
        **{
            "num-server-rounds": args.rounds,
            "eval-every": args.rounds,
            "train.local-epochs": 2,
            "dataset.name": "digits",
            "dataset.size": 8,
            "metrics.gradient-dissimilarity": True,
            "metrics.gradient-batches": 4,
            "metrics.pooled-validation": True,
            "log-dir": str(work),
            "experiment-name": name,
            **SCENARIOS[args.scenario],
            **overrides,
        },
    )
    started = time.time()
    run_local(server_app, client_app, args.clients, config)
    summary = json.loads((work / name / "summary.json").read_text())
    final = summary.get("final") or {}
    stats = summary.get("fusedspace") if isinstance(summary.get("fusedspace"), dict) else {}
    seen, unseen = seen_unseen_accuracy(work / name)
    modes = mode_figures(work / name)
    rec_seen, rec_unseen = reconstruction_seen_unseen(work / name)
    row = {
        "tag": args.tag,
        "method": args.method,
        "scenario": args.scenario,
        "seed": args.seed,
        "rounds": args.rounds,
        "overrides": overrides,
        "val_accuracy": final.get("val_accuracy"),
        "pooled_val_accuracy": pooled_val_accuracy(work / name),
        "accuracy": final.get("accuracy"),
        "own_test_accuracy": final.get("own_test_accuracy"),
        "reconstruction_loss": stats.get("reconstruction-loss"),
        "seen_class_accuracy": seen,
        "unseen_class_accuracy": unseen,
        "reconstruction_seen": rec_seen,
        "reconstruction_unseen": rec_unseen,
        **({"modes": modes} if modes else {}),
        "seconds": round(time.time() - started, 1),
        "folder": str(work / name),
    }
    print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as fh:
        fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
