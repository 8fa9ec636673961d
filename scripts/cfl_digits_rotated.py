#!/usr/bin/env python
"""FedAvg vs CFL on digits with half the clients rotated 180 degrees (seed 001), in-process.

Runs ``conf/fedavg_digits_rotated.toml`` and ``conf/cfl_digits_rotated.toml`` (same scenario,
seed and rounds) against 10 in-process clients (``run_local``) and prints a markdown table:
split rounds, clusters and cluster purity of CFL, and the mean client accuracy of both
(last round and mean of the last 5 rounds; own-domain test set and own validation split).

    python scripts/cfl_digits_rotated.py                          # both runs, 10 clients
    python scripts/cfl_digits_rotated.py --only cfl -- cfl.eps2=0.5
    python scripts/cfl_digits_rotated.py --conf conf/cfl_digits_label_shift.toml --only cfl
    python scripts/cfl_digits_rotated.py --table logs/cfl_rotated/fedavg logs/cfl_rotated/cfl

Trailing ``key=value`` pairs override the conf files (values parsed as TOML).
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fedvq_app.client_app import app as client_app  # noqa: E402
from fedvq_app.local_grid import full_run_config, run_local  # noqa: E402
from fedvq_app.server_app import app as server_app  # noqa: E402
from fedvq_app.simulation import parse_overrides  # noqa: E402

CONFS = {"fedavg": ROOT / "conf" / "fedavg_digits_rotated.toml", "cfl": ROOT / "conf" / "cfl_digits_rotated.toml"}
LAST = 5


def _mean_client(record: dict, key: str) -> float | None:
    values = [c[key] for c in record["evaluate"]["clients"].values() if c.get(key) is not None]
    return sum(values) / len(values) if values else None


def figures(folder: Path) -> dict:
    """Headline figures of one finished run folder."""
    summary = json.loads((folder / "summary.json").read_text())
    rounds = [json.loads(line) for line in (folder / "rounds.jsonl").read_text().splitlines() if line.strip()]
    evaluated = [r for r in rounds if r["evaluate"]["clients"]][-LAST:]
    row = {"method": summary["method"], "rounds": summary["rounds"], "folder": str(folder)}
    for key, name in (("test-accuracy", "test"), ("val-accuracy", "val")):
        row[f"{name}_last"] = _mean_client(evaluated[-1], key) if evaluated else None
        values = [v for v in (_mean_client(r, key) for r in evaluated) if v is not None]
        row[f"{name}_last{LAST}"] = sum(values) / len(values) if values else None
    cfl = summary.get("cfl") or {}
    row["split_rounds"] = cfl.get("split_rounds", "-")
    row["clusters"] = cfl.get("clusters", "-")
    row["purity"] = cfl.get("cluster_purity", "-")
    return row


def table(folders: list[Path]) -> str:
    def fmt(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    cols = (
        "method",
        "rounds",
        "test_last",
        f"test_last{LAST}",
        "val_last",
        f"val_last{LAST}",
        "split_rounds",
        "purity",
        "clusters",
    )
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(figures(f)[c]) for c in cols) + " |" for f in folders]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--log-dir", default=str(ROOT / "logs" / "cfl_rotated"))
    parser.add_argument("--only", choices=tuple(CONFS), help="run one of the two")
    parser.add_argument("--conf", type=Path, help="with --only: this conf file instead of the default one")
    parser.add_argument("--table", nargs="+", type=Path, help="only print the table of these finished runs")
    parser.add_argument("overrides", nargs="*", help="key=value overrides as in --run-config")
    args = parser.parse_args()
    if args.table:
        print(table(args.table))
        return
    folders = []
    for method, conf in CONFS.items():
        if args.only and method != args.only:
            continue
        conf = args.conf if (args.only and args.conf) else conf
        config = {**tomllib.loads(conf.read_text()), **parse_overrides(args.overrides)}
        name = conf.stem
        config.update({"log-dir": args.log_dir, "experiment-name": name})
        run_local(server_app, client_app, args.clients, full_run_config(**config))
        folders.append(Path(args.log_dir) / name)
    print(table(folders))


if __name__ == "__main__":
    from fedvq_app.errors import cli  # noqa: PLC0415

    sys.exit(cli(main))
