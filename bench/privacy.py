"""Accuracy vs epsilon on digits: FedAvg, 10 clients, client-level and sample-level DP.

Every cell is a whole federated job (the real ServerApp and ClientApp on the
in-process grid) at the same budget as the no-privacy baseline: same clients,
rounds, local epochs, partition; three seeds per cell (partition, model init,
sampling and DP noise all follow ``seed``). Reported: the final round's mean
client test accuracy (mean +- std over seeds) and the epsilon at
``privacy.target-delta`` after the last round (summary.json ``privacy``: the
client-level ledger, or the largest client's Opacus epsilon for DP-SGD).

Images are digits at their native 8x8 (``dataset.size = 8``): the 2-conv CNN has
~52k parameters there instead of ~420k at 28x28, which keeps the job on CPU and
the client-level noise (one Gaussian draw per parameter) at a size ten clients can
carry at all.

    python bench/privacy.py            # full table (3 seeds)
    python bench/privacy.py --quick    # 1 seed, 2 rounds, not recorded
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS, emit  # noqa: E402

NAME = "privacy"
CLIENTS = 10
BASE = {
    "method": "fedavg",
    "dataset.size": 8,
    "partition.kind": "iid",
    "train.local-epochs": 1,
    "privacy.target-delta": 1e-5,
}
#: (label, overrides): the baseline, client-level at three noise levels (+ adaptive), DP-SGD at three
CELLS: list[tuple[str, dict]] = [
    ("none", {"privacy.mode": "none"}),
    *[
        (
            f"client-fixed z={z}",
            {"privacy.mode": "client-fixed", "privacy.noise-multiplier": z, "privacy.clipping-norm": 0.5},
        )
        for z in (0.1, 0.3, 1.0)
    ],
    (
        "client-adaptive z=0.3",
        {"privacy.mode": "client-adaptive", "privacy.noise-multiplier": 0.3, "privacy.clipping-norm": 0.5},
    ),
    *[
        (f"sample-dpsgd z={z}", {"privacy.mode": "sample-dpsgd", "privacy.noise-multiplier": z})
        for z in (0.5, 1.0, 2.0)
    ],
]


def run_cell(label: str, overrides: dict, seed: int, rounds: int) -> dict:
    from fedvq_app.client_app import app as client_app  # noqa: PLC0415
    from fedvq_app.local_grid import full_run_config, run_local  # noqa: PLC0415
    from fedvq_app.server_app import app as server_app  # noqa: PLC0415

    with tempfile.TemporaryDirectory() as tmp:
        config = full_run_config(
            **{**BASE, **overrides, "seed": seed, "num-server-rounds": rounds, "log-dir": tmp, "experiment-name": "x"}
        )
        started = time.time()
        run_local(server_app, client_app, CLIENTS, config)
        summary = json.loads((Path(tmp) / "x" / "summary.json").read_text())
    privacy = summary.get("privacy", {})
    return {
        "label": label,
        "mode": overrides["privacy.mode"],
        "noise_multiplier": overrides.get("privacy.noise-multiplier"),
        "clipping_norm": overrides.get("privacy.clipping-norm", 1.0),
        "seed": seed,
        "accuracy": summary["final"].get("accuracy"),
        "epsilon": privacy.get("epsilon"),
        "final_clipping_norm": privacy.get("clipping_norm"),
        "seconds": time.time() - started,
    }


def _mean_std(values: list[float]) -> tuple[float, float]:
    import numpy as np  # noqa: PLC0415

    return float(np.mean(values)), float(np.std(values))


def aggregate(runs: list[dict]) -> list[dict]:
    rows = []
    for label, _ in CELLS:
        cell = [r for r in runs if r["label"] == label]
        if not cell:
            continue
        acc, acc_std = _mean_std([r["accuracy"] or 0.0 for r in cell])
        eps = [r["epsilon"] for r in cell if r["epsilon"] is not None]
        rows.append(
            {
                "label": label,
                "mode": cell[0]["mode"],
                "noise_multiplier": cell[0]["noise_multiplier"],
                "clipping_norm": cell[0]["clipping_norm"],
                "seeds": [r["seed"] for r in cell],
                "accuracy_mean": acc,
                "accuracy_std": acc_std,
                "per_seed_accuracy": [r["accuracy"] for r in cell],
                "epsilon_mean": _mean_std(eps)[0] if eps else None,
                "epsilon_range": [min(eps), max(eps)] if eps else None,
                "seconds_mean": _mean_std([r["seconds"] for r in cell])[0],
            }
        )
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    base = next((r for r in rows if r["mode"] == "none"), None)
    if base:
        ax.axhline(base["accuracy_mean"], color="gray", ls="--", label=f"no DP ({base['accuracy_mean']:.3f})")
    for mode, marker in (("client-fixed", "o"), ("client-adaptive", "s"), ("sample-dpsgd", "^")):
        pts = sorted(
            (r["epsilon_mean"], r["accuracy_mean"], r["accuracy_std"])
            for r in rows
            if r["mode"] == mode and r["epsilon_mean"]
        )
        if pts:
            xs, ys, es = zip(*pts, strict=True)
            ax.errorbar(xs, ys, yerr=es, marker=marker, capsize=3, label=mode)
    ax.set_xscale("log")
    ax.set_xlabel("epsilon at delta = 1e-5 after the last round (log)")
    ax.set_ylabel("final mean client test accuracy")
    ax.set_title(f"FedAvg on digits, {CLIENTS} clients: accuracy vs epsilon")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(rows: list[dict], rounds: int) -> str:
    lines = [
        f"FedAvg, digits 8x8, {CLIENTS} clients (IID), {rounds} rounds x 1 local epoch, all clients every round; "
        "accuracy = final mean client test accuracy, mean +- std over seeds; epsilon at delta 1e-5 after the last "
        "round (client level: dp-accounting RDP, add-or-remove-one client; sample level: the largest client's "
        "Opacus RDP epsilon, add-or-remove-one example).",
        "",
        "| setting | noise multiplier | clipping norm | epsilon | accuracy | seeds | s per job |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        eps = "inf (no DP)" if r["epsilon_mean"] is None else f"{r['epsilon_mean']:.3g}"
        if r["epsilon_range"] and r["epsilon_range"][1] - r["epsilon_range"][0] > 1e-6 * r["epsilon_range"][1]:
            eps += f" ({r['epsilon_range'][0]:.3g}-{r['epsilon_range'][1]:.3g})"
        z = "-" if r["noise_multiplier"] is None else f"{r['noise_multiplier']:g}"
        clip = "-" if r["mode"] == "none" else f"{r['clipping_norm']:g}"
        if r["mode"] == "client-adaptive":
            clip += " (start)"
        lines.append(
            f"| {r['label']} | {z} | {clip} | {eps} | {r['accuracy_mean']:.3f} +- {r['accuracy_std']:.3f} | "
            f"{len(r['seeds'])} | {r['seconds_mean']:.0f} |"
        )
    return "\n".join(lines)


def section(records: list[dict]) -> list[str]:
    """BENCHMARKS.md section (bench/report.py)."""
    r = records[0]
    from bench.report import machine_line  # noqa: PLC0415

    return [
        machine_line(r),
        "",
        table(r["rows"], r["setup"]["rounds"]),
        "",
        "![accuracy vs epsilon](bench/results/privacy.png)",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 2 rounds, not recorded")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--cells", default="", help="comma-separated labels (default: all)")
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.WARNING)
    rounds = 2 if args.quick else args.rounds
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
    wanted = set(args.cells.split(",")) if args.cells else None
    runs = []
    for label, overrides in CELLS:
        if wanted and label not in wanted:
            continue
        for seed in seeds:
            run = run_cell(label, overrides, seed, rounds)
            print(json.dumps(run), flush=True)
            runs.append(run)
    rows = aggregate(runs)
    print(table(rows, rounds))
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        plot(rows, RESULTS / "privacy.png")
    emit(
        NAME,
        {
            "setup": {"clients": CLIENTS, "rounds": rounds, "seeds": seeds, **BASE, "quick": args.quick},
            "runs": runs,
            "rows": rows,
        },
        quick=args.quick,
    )


if __name__ == "__main__":
    main()
