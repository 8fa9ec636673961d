#!/usr/bin/env python
"""Run conf files for several seeds in-process (``run_local``) and print their final figures.

One JSON line per run (appended to ``--out`` too): accuracy, macro-F1, balanced accuracy,
own-distribution accuracy when the run reports it, and for long-tailed runs the
overall/head/medium/tail accuracy of every reported mode (FedLoGe's modes; for methods
with one shared model its final model scored on the same per-client long-tailed test
sets, ``model`` / ``model-balanced``). ``--summarize`` prints mean and spread over seeds.

    python scripts/run_seeds.py conf/seed003_digits_dirichlet_fedavg.toml --seeds 42,43,44
    python scripts/run_seeds.py conf/seed003_digits_dirichlet_fusedspace.toml --tag adam -- fusedspace.ae-optimizer=adam
    python scripts/run_seeds.py --summarize logs/seed_runs.jsonl

Trailing ``key=value`` pairs override the conf files (values parsed as TOML).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import tomllib
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fedvq_app.simulation import parse_overrides  # noqa: E402

FIGURES = ("accuracy", "macro_f1", "balanced_accuracy", "own_test_accuracy")


def run_one(conf: Path, seed: int, tag: str, overrides: dict, clients: int, log_dir: Path) -> dict:
    """One federated job; its final figures."""
    from fedvq_app.client_app import app as client_app  # noqa: PLC0415
    from fedvq_app.local_grid import full_run_config, run_local  # noqa: PLC0415
    from fedvq_app.server_app import app as server_app  # noqa: PLC0415
    from fedvq_app.tracking.fedloge_plots import group_report  # noqa: PLC0415

    name = f"{conf.stem}{'_' + tag if tag else ''}_s{seed}"
    config = {**tomllib.loads(conf.read_text()), **overrides, "seed": seed}
    config = full_run_config(**{**config, "log-dir": str(log_dir), "experiment-name": name})
    started = time.time()
    run_local(server_app, client_app, clients, config)
    folder = log_dir / name
    summary = json.loads((folder / "summary.json").read_text())
    final = summary.get("final") or {}
    row = {
        "conf": conf.stem,
        "tag": tag,
        "seed": seed,
        "seconds": round(time.time() - started, 1),
        **{k: final.get(k) for k in FIGURES},
    }
    if config.get("partition.kind") == "long-tail":
        report = group_report(folder)
        row["modes"] = {m: {k: f.get(k) for k in ("overall", "head", "medium", "tail")} for m, f in report.items()}
    return row


def summarize(path: Path) -> str:
    """Markdown: mean ± spread (sample std) over seeds per (conf, tag)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            groups[(row["conf"], row["tag"])].append(row)
    lines = [
        "| conf | tag | seeds | accuracy % | macro-F1 % | balanced % | own % | per seed (accuracy %) |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def stat(values):
        values = [v for v in values if v is not None]
        if not values:
            return "-"
        return f"{100 * np.mean(values):.2f} ± {100 * np.std(values, ddof=1 if len(values) > 1 else 0):.2f}"

    for (conf, tag), rows in groups.items():
        cells = [stat([r.get(k) for r in rows]) for k in FIGURES]
        seeds = ", ".join(f"{r['seed']}: {100 * r['accuracy']:.2f}" for r in rows if r.get("accuracy") is not None)
        lines.append(f"| {conf} | {tag or '-'} | {len(rows)} | " + " | ".join(cells) + f" | {seeds} |")
        modes = rows[0].get("modes")
        if modes:
            for mode in modes:
                parts = [
                    f"{k} {stat([r['modes'].get(mode, {}).get(k) for r in rows])}"
                    for k in ("overall", "head", "medium", "tail")
                ]
                lines.append(f"|  | {mode} |  | " + "; ".join(parts) + " | | | | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("confs", nargs="*", type=Path)
    parser.add_argument("--seeds", default="42,43,44")
    parser.add_argument("--tag", default="", help="names this variant in the output")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--log-dir", type=Path, default=ROOT / "logs" / "seed_runs")
    parser.add_argument("--out", type=Path, default=ROOT / "logs" / "seed_runs.jsonl")
    parser.add_argument("--summarize", type=Path, help="print the mean/spread table of this JSONL file and stop")
    args, rest = parser.parse_known_args()
    if args.summarize:
        print(summarize(args.summarize))
        return
    overrides = parse_overrides([x for x in rest if x != "--"], "run_seeds.py")
    logging.getLogger("flwr").setLevel(logging.WARNING)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for conf in args.confs:
        for seed in (int(s) for s in args.seeds.split(",")):
            row = run_one(conf, seed, args.tag, overrides, args.clients, args.log_dir)
            line = json.dumps(row)
            print(line, flush=True)
            with args.out.open("a") as fh:
                fh.write(line + "\n")


if __name__ == "__main__":
    main()
