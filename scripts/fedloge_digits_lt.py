#!/usr/bin/env python
"""FedAvg vs FedLoGe on digits-LT, in-process (``run_local``), and their head/medium/tail table.

Runs ``conf/fedavg_digits_lt.toml`` and ``conf/fedloge_digits_lt.toml`` (the same seed,
split and rounds) against 10 in-process clients, then prints the markdown table of
:mod:`fedvq_app.tracking.fedloge_plots`: fedloge's modes and fedavg's final model
scored on exactly the same per-client long-tailed test sets and on the balanced test set.

    python scripts/fedloge_digits_lt.py                         # both runs, 10 clients
    python scripts/fedloge_digits_lt.py --only fedloge -- fedloge.personal-global-head=realigned
    python scripts/fedloge_digits_lt.py --table logs/fedloge_lt/fedavg logs/fedloge_lt/fedloge

Trailing ``key=value`` pairs override the conf files (values parsed as TOML).
"""

from __future__ import annotations

import argparse
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fedvq_app.client_app import app as client_app  # noqa: E402
from fedvq_app.local_grid import full_run_config, run_local  # noqa: E402
from fedvq_app.server_app import app as server_app  # noqa: E402
from fedvq_app.simulation import parse_overrides  # noqa: E402
from fedvq_app.tracking.fedloge_plots import comparison_table  # noqa: E402

CONFS = {"fedavg": ROOT / "conf" / "fedavg_digits_lt.toml", "fedloge": ROOT / "conf" / "fedloge_digits_lt.toml"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--log-dir", default=str(ROOT / "logs" / "fedloge_lt"))
    parser.add_argument("--suffix", default="", help="appended to the experiment names (fedavg<suffix>, ...)")
    parser.add_argument("--only", choices=tuple(CONFS), help="run one of the two")
    parser.add_argument("--table", nargs="+", type=Path, help="only print the table of these finished runs")
    parser.add_argument("overrides", nargs="*", help="key=value overrides as in --run-config")
    args = parser.parse_args()
    if args.table:
        print(comparison_table(args.table))
        return
    folders = []
    for method, conf in CONFS.items():
        name = method + args.suffix
        folders.append(Path(args.log_dir) / name)
        if args.only and method != args.only:
            continue
        config = {**tomllib.loads(conf.read_text()), **parse_overrides(args.overrides)}
        config = full_run_config(**{**config, "log-dir": args.log_dir, "experiment-name": name})
        started = time.time()
        run_local(server_app, client_app, args.clients, config)
        print(f"{name}: {time.time() - started:.0f} s", flush=True)
    print(comparison_table([f for f in folders if (f / "summary.json").is_file()]))


if __name__ == "__main__":
    from fedvq_app.errors import cli  # noqa: PLC0415

    sys.exit(cli(main))
