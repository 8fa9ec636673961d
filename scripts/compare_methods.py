#!/usr/bin/env python
"""Every classification method on one scenario, in-process, then one ``fedvq-compare`` report.

Each method is a whole federated job (the real ServerApp and ClientApp on the
in-process grid) with the same seed, clients, rounds and local epochs; the
experiment folders land in ``--log-dir`` and the report in ``--out``.

    python scripts/compare_methods.py                                   # digits 8x8, 10 clients, 5 rounds
    python scripts/compare_methods.py --methods fedavg,fedvq --rounds 3 -- partition.alpha=0.1

Trailing ``key=value`` pairs override the run config of every job (Flower's
``--run-config`` syntax).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from flwr.common.config import parse_config_args  # noqa: E402

from fedvq_app.client_app import app as client_app  # noqa: E402
from fedvq_app.local_grid import full_run_config, run_local  # noqa: E402
from fedvq_app.registry import get_method, method_names  # noqa: E402
from fedvq_app.server_app import app as server_app  # noqa: E402
from fedvq_app.tracking.compare import compare  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    classifiers = [m for m in method_names() if get_method(m).build_model is not None]
    parser.add_argument("--methods", default=",".join(classifiers), help="comma-separated methods")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--size", type=int, default=8, help="digits image side (8 = native)")
    parser.add_argument("--log-dir", type=Path, default=ROOT / "logs" / "compare_methods")
    parser.add_argument("--out", type=Path, default=ROOT / "logs" / "compare_methods_report")
    parser.add_argument("overrides", nargs="*", help="key=value run-config overrides for every job")
    args = parser.parse_args()
    overrides = parse_config_args([" ".join(args.overrides)]) if args.overrides else {}
    logging.getLogger("flwr").setLevel(logging.WARNING)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder = args.log_dir.resolve() / stamp
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for method in methods:
        config = full_run_config(
            method=method,
            **{
                "num-server-rounds": args.rounds,
                "train.local-epochs": args.local_epochs,
                "dataset.name": "digits",
                "dataset.size": args.size,
                "log-dir": str(folder),
                "experiment-name": method,
                **overrides,
            },
        )
        started = time.time()
        run_local(server_app, client_app, args.clients, config)
        print(f"{method}: {time.time() - started:.0f} s", flush=True)
    scenario = ", ".join(f"{k}={v}" for k, v in overrides.items()) or "pyproject defaults"
    title = (
        f"digits {args.size}x{args.size}, {args.clients} clients, {args.rounds} rounds x "
        f"{args.local_epochs} local epoch(s) ({scenario})"
    )
    files = compare([folder / m for m in methods], args.out / stamp, title)
    print(f"report: {files['html']}")


if __name__ == "__main__":
    main()
