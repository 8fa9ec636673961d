"""Every registered classification method x five non-IID scenarios on digits.

Each (method, scenario) cell is one whole federated job (the real ServerApp and
ClientApp on the in-process grid), same seed, clients, rounds and local epochs
for all: test accuracy, macro-F1 and balanced accuracy of the final round (mean
over clients of each client's model on the global test set), the final gradient
dissimilarity Gamma, and the job's seconds. The methods are read from the
registry: every method that builds a neural model takes part (k-means does not).

Each cell prints one JSON line and appends it to ``bench/results/methods.jsonl``
(``--quick`` cells are printed, not recorded);
``bench/results/methods.md`` (table) and ``methods.png`` (chart) are rebuilt after
every cell from the newest cell of each (method, scenario) with the same setup, so
a later invocation with ``--methods``/``--scenarios`` adds rows to the same table.

    python bench/methods.py                            # full grid
    python bench/methods.py --quick                    # smoke test: 2 rounds, one scenario, not recorded
    python bench/methods.py --methods cfl,fedloge      # add two methods to the table
    python bench/methods.py --scenarios pathological-2 # one scenario
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS, emit, rounds_of  # noqa: E402
from fedvq_app.client_app import app as client_app  # noqa: E402
from fedvq_app.local_grid import full_run_config, run_local  # noqa: E402
from fedvq_app.registry import get_method, method_names  # noqa: E402
from fedvq_app.server_app import app as server_app  # noqa: E402

NAME = "methods"

#: scenario name -> run-config overrides (everything else: pyproject defaults)
SCENARIOS: dict[str, dict] = {
    "dirichlet-0.5": {"partition.kind": "dirichlet", "partition.alpha": 0.5},
    "dirichlet-0.05": {"partition.kind": "dirichlet", "partition.alpha": 0.05},
    "pathological-2": {"partition.kind": "pathological", "partition.classes-per-client": 2},
    # seed 001's covariate shift: Dirichlet 1.0 labels, the last half of the clients rotated 180 degrees
    "rotated-half": {
        "partition.kind": "dirichlet",
        "partition.alpha": 1.0,
        "shift.rotate-fraction": 0.5,
        "shift.rotate-degrees": 180,
    },
    "long-tail-0.01": {"partition.kind": "long-tail", "partition.imbalance-factor": 0.01, "partition.alpha": 0.5},
}
QUICK_SCENARIOS = ("dirichlet-0.05",)


def classification_methods() -> list[str]:
    """Registered methods that train a neural classifier (k-means builds no model)."""
    return [name for name in method_names() if get_method(name).build_model is not None]


def setup_of(args: argparse.Namespace) -> dict:
    """What must match for two cells to share a table."""
    return {
        "dataset": "digits",
        "size": args.size,
        "clients": args.clients,
        "rounds": args.rounds,
        "local_epochs": args.local_epochs,
        "seed": args.seed,
        "gradient_batches": args.gradient_batches,
        "quick": args.quick,
    }


def scenario_legend(scenarios: list[str]) -> str:
    """One line naming each scenario's partition and shift settings (the tables' legend)."""
    return (
        "Scenarios: "
        + "; ".join(f"`{s}` = " + ", ".join(f"{k}={v}" for k, v in SCENARIOS[s].items()) for s in scenarios)
        + "."
    )


def run_cell(method: str, scenario: str, setup: dict, work: Path) -> dict:
    """One federated job; its final figures (or the error that stopped it)."""
    name = f"{method}_{scenario}"
    config = full_run_config(
        method=method,
        seed=setup["seed"],
        **{
            "num-server-rounds": setup["rounds"],
            "eval-every": setup["rounds"],
            "train.local-epochs": setup["local_epochs"],
            "dataset.name": "digits",
            "dataset.size": setup["size"],
            "metrics.gradient-dissimilarity": True,
            "metrics.gradient-batches": setup["gradient_batches"],
            "log-dir": str(work),
            "experiment-name": name,
            **SCENARIOS[scenario],
        },
    )
    started = time.time()
    row = {"method": method, "scenario": scenario}
    try:
        run_local(server_app, client_app, setup["clients"], config)
        summary = json.loads((work / name / "summary.json").read_text())
    except Exception as err:  # noqa: BLE001 - one failing method must not stop the grid
        return {**row, "error": f"{type(err).__name__}: {err}"[:300], "seconds": time.time() - started}
    final = summary.get("final") or {}
    gamma = (summary.get("gradient_dissimilarity") or {}).get("final")
    if gamma is None:  # a strategy whose final report does not carry it: the last evaluated round's value
        evaluated = [r["evaluate"]["aggregated"] for r in rounds_of(work / name) if r.get("evaluate")]
        gamma = next((e["gradient-dissimilarity"] for e in reversed(evaluated) if "gradient-dissimilarity" in e), None)
    communication = summary.get("communication") or {}
    return {
        **row,
        "accuracy": final.get("accuracy"),
        "macro_f1": final.get("macro_f1"),
        "balanced_accuracy": final.get("balanced_accuracy"),
        "gamma": gamma,
        "bytes_per_round": communication.get("mean_bytes_per_round"),
        "seconds": time.time() - started,
    }


# ----------------------------------------------------------------------------
# Table and chart from bench/results/methods.jsonl
# ----------------------------------------------------------------------------
def load_cells() -> list[dict]:
    path = RESULTS / f"{NAME}.jsonl"
    if not path.is_file():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def table_cells(records: list[dict]) -> tuple[dict, dict[tuple[str, str], dict]]:
    """The setup of the newest full-size cell (quick ones only when there is none) and its newest cells."""
    full = [r for r in records if not r["setup"]["quick"]]
    pool = full or records
    if not pool:
        return {}, {}
    setup = pool[-1]["setup"]
    cells = {(r["method"], r["scenario"]): r for r in pool if r["setup"] == setup}
    return setup, cells


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def render_markdown(records: list[dict]) -> str:
    setup, cells = table_cells(records)
    if not cells:
        return "No cells measured yet.\n"
    methods = list(dict.fromkeys(m for m, _ in cells))
    scenarios = [s for s in SCENARIOS if any(s == sc for _, sc in cells)]
    dates = sorted(c["date"] for c in cells.values())
    lines = [
        f"Digits (scikit-learn, {setup['size']}x{setup['size']}), {setup['clients']} clients, "
        f"{setup['rounds']} rounds x {setup['local_epochs']} "
        f"local epoch(s), seed {setup['seed']}, 2-conv CNN, final-round figures (mean over clients on the global "
        f"test set); Gamma over {setup['gradient_batches']} batch(es) per client at the final global parameters. "
        f"Measured {dates[0]} .. {dates[-1]}{' (quick smoke-test size)' if setup['quick'] else ''}.",
        "",
        scenario_legend(scenarios),
        "",
        "Accuracy % (macro-F1 % / balanced accuracy %):",
        "",
        "| method | " + " | ".join(scenarios) + " |",
        "|---|" + "---|" * len(scenarios),
    ]
    for m in methods:
        row = []
        for s in scenarios:
            c = cells.get((m, s))
            if c is None:
                row.append("not run")
            elif "error" in c:
                row.append("failed")
            else:
                row.append(f"**{_pct(c['accuracy'])}** ({_pct(c['macro_f1'])} / {_pct(c['balanced_accuracy'])})")
        lines.append(f"| {m} | " + " | ".join(row) + " |")
    lines += [
        "",
        "Gamma (final) and seconds per job:",
        "",
        "| method | " + " | ".join(scenarios) + " |",
        "|---|" + "---|" * len(scenarios),
    ]
    for m in methods:
        row = []
        for s in scenarios:
            c = cells.get((m, s))
            if c is None or "error" in c:
                row.append("-" if c is None else f"failed ({c['seconds']:.0f} s)")
            else:
                gamma = "-" if c["gamma"] is None else f"{c['gamma']:.2f}"
                row.append(f"{gamma} / {c['seconds']:.0f} s")
        lines.append(f"| {m} | " + " | ".join(row) + " |")
    if any(c.get("bytes_per_round") for c in cells.values()):
        lines += [
            "",
            "Bytes per round (sent to + received from all clients, mean over rounds; Flower's count_bytes "
            "of the records):",
            "",
            "| method | " + " | ".join(scenarios) + " |",
            "|---|" + "---|" * len(scenarios),
        ]
        for m in methods:
            values = [(cells.get((m, s)) or {}).get("bytes_per_round") for s in scenarios]
            lines.append(f"| {m} | " + " | ".join("-" if v is None else f"{v / 1e6:.2f} MB" for v in values) + " |")
    errors = [c for c in cells.values() if "error" in c]
    if errors:
        lines += ["", "Failures:", ""] + [f"- {c['method']} / {c['scenario']}: {c['error']}" for c in errors]
    return "\n".join(lines) + "\n"


def render_chart(records: list[dict], path: Path) -> None:
    """Grouped bars: accuracy per scenario, one bar per method."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    setup, cells = table_cells(records)
    if not cells:
        return
    methods = list(dict.fromkeys(m for m, _ in cells))
    scenarios = [s for s in SCENARIOS if any(s == sc for _, sc in cells)]
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(scenarios) + 3), 4.2))
    x = np.arange(len(scenarios))
    for i, m in enumerate(methods):
        values = [(cells.get((m, s)) or {}).get("accuracy") for s in scenarios]
        ax.bar(
            x + (i - (len(methods) - 1) / 2) * width, [100 * v if v is not None else 0 for v in values], width, label=m
        )
    ax.set_xticks(x, scenarios)
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(
        f"digits {setup['size']}x{setup['size']}, {setup['clients']} clients, "
        f"{setup['rounds']} rounds x {setup['local_epochs']} epoch(s), "
        f"seed {setup['seed']}"
    )
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_reports(records: list[dict], folder: Path) -> Path:
    """``methods.md`` and ``methods.png`` of ``records`` in ``folder``; the table's path."""
    table = folder / f"{NAME}.md"
    table.write_text(render_markdown(records))
    render_chart(records, folder / f"{NAME}.png")
    return table


def parse_list(text: str, allowed: list[str], what: str) -> list[str]:
    chosen = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [x for x in chosen if x not in allowed]
    if unknown:
        raise SystemExit(f"unknown {what} {unknown}; allowed: {', '.join(allowed)}")
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: 2 rounds x 1 epoch, 5 clients, 1 scenario")
    parser.add_argument("--methods", default="", help="comma-separated subset (default: every classification method)")
    parser.add_argument("--scenarios", default="", help=f"comma-separated subset of {', '.join(SCENARIOS)}")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--local-epochs", type=int, default=2)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument(
        "--size", type=int, default=8, help="image side (digits are natively 8x8; 28 = the CNN default)"
    )
    parser.add_argument("--gradient-batches", type=int, default=4)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.local_epochs, args.clients, args.gradient_batches = 2, 1, 5, 1
    available = classification_methods()
    methods = parse_list(args.methods, available, "methods") if args.methods else available
    default_scenarios = list(QUICK_SCENARIOS if args.quick else SCENARIOS)
    scenarios = parse_list(args.scenarios, list(SCENARIOS), "scenarios") if args.scenarios else default_scenarios
    logging.getLogger("flwr").setLevel(logging.WARNING)
    setup = setup_of(args)
    work = Path(tempfile.mkdtemp(prefix="bench_methods_"))
    quick_cells: list[dict] = []
    try:
        for scenario in scenarios:
            for method in methods:
                record = emit(NAME, {"setup": setup, **run_cell(method, scenario, setup, work)}, quick=args.quick)
                if args.quick:  # not recorded: the table is rendered in the scratch folder and printed
                    quick_cells.append(record)
                    table = write_reports(quick_cells, work)
                else:
                    table = write_reports(load_cells(), RESULTS)
        print(table.read_text() if args.quick else f"wrote {table} and {table.with_suffix('.png')}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    from fedvq_app.errors import cli  # noqa: PLC0415

    sys.exit(cli(main))
