"""Reproduction grid: every classification method x the seeds' scenarios on digits x 3 seeds.

Each cell (method, scenario, seed) is one whole federated job in-process (the real
ServerApp and ClientApp on ``run_local``), the same clients, rounds and local epochs for
every method. Per cell, from the final evaluated round: accuracy, macro-F1 and balanced
accuracy on the global test set, own-distribution accuracy (each client's model on test
rows drawn to its own label mix, ``final.own_test_accuracy``), tail accuracy on the global
test set for the long-tailed scenario (classes in the tail of the federation's training
counts, FedLoGe's 75 % / 95 % rule), and the gradient dissimilarity Gamma.

Cells are appended to ``bench/results/reproduce.jsonl`` (``--quick`` cells are not
recorded); ``reproduce.md`` (one table: mean ± sample standard deviation over seeds) and
``reproduce.png`` (accuracy, mean and spread) are rebuilt from the newest cells of the
newest full setup; ``bench/report.py`` renders the table into BENCHMARKS.md.

    python bench/reproduce.py                 # full grid (--jobs 2 workers)
    python bench/reproduce.py --quick         # smoke run: 2 rounds, 3 clients, 1 seed, 2 scenarios, not recorded
    python bench/reproduce.py --methods fedavg,fusedspace --scenarios dirichlet-0.05
    python bench/reproduce.py --targets --jobs 1    # the done-when cells at the issue's 30 rounds x 2 epochs

``--targets`` runs each done-when target's method and FedAvg on its scenario (fusedspace on
Dirichlet 0.05 and pathological-2, fedloge on long-tail IF 0.01) at 30 rounds, records them in
``reproduce_targets.jsonl`` and writes ``reproduce_targets.md`` (every figure, also the accuracy
on the classes a client has / never saw, validation accuracy, the autoencoder's reconstruction
MSE, and FedLoGe's per-mode validation / own-test accuracy in the records); the grid's table
stays as it is.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS, emit, rounds_of  # noqa: E402
from bench.methods import SCENARIOS, classification_methods, parse_list, scenario_legend  # noqa: E402

NAME = "reproduce"
#: the issue's done-when cells at the issue's own budget (``--targets``): their own records and table
TARGETS_NAME = "reproduce_targets"
TARGETS_ROUNDS = 30
SEEDS = (42, 43, 44)
QUICK_SCENARIOS = ("dirichlet-0.05", "long-tail-0.01")
LONG_TAIL = "long-tail"
#: (record key, column title, scale to %)
FIGURES = (
    ("accuracy", "accuracy %", True),
    ("macro_f1", "macro-F1 %", True),
    ("balanced_accuracy", "balanced acc. %", True),
    ("own_test_accuracy", "own-distribution acc. %", True),
    ("tail_accuracy", "tail acc. % (long-tail)", True),
    ("gamma", "Gamma", False),
)


def setup_of(args: argparse.Namespace) -> dict:
    """What must match for two cells to share a table."""
    return {
        "dataset": "digits",
        "size": args.size,
        "clients": args.clients,
        "rounds": args.rounds,
        "local_epochs": args.local_epochs,
        "gradient_batches": args.gradient_batches,
        "quick": args.quick,
    }


def _final_clients(folder: Path) -> tuple[dict, list[np.ndarray]] | None:
    """The final evaluated round's per-client metrics (by partition id) and every client's training label counts.

    The counts are rebuilt from the run's ``config.json`` (same seed, same split).
    """
    from fedvq_app.data.client_data import load_client_data  # noqa: PLC0415
    from fedvq_app.registry import load_settings  # noqa: PLC0415

    evaluated = [r for r in rounds_of(folder) if r["evaluate"]["clients"]]
    if not evaluated:
        return None
    settings = load_settings(json.loads((folder / "config.json").read_text()))
    clients = {int(m["partition-id"]): m for m in evaluated[-1]["evaluate"]["clients"].values()}
    counts = [load_client_data(settings, pid, len(clients)).label_counts() for pid in range(len(clients))]
    return clients, [np.asarray(c) for c in counts]


def _class_mean(metrics: dict, classes: np.ndarray) -> float | None:
    """Mean of a client's global-test per-class accuracy over ``classes`` (-1 = class absent from the test split)."""
    accuracy = np.asarray(metrics.get("test-class-accuracy", []), dtype=float)
    values = accuracy[classes[classes < len(accuracy)]]
    values = values[values >= 0]
    return float(values.mean()) if len(values) else None


def _mean_of(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def tail_accuracy(folder: Path) -> float | None:
    """Mean over clients of the final global-test accuracy over the federation's tail classes.

    The groups come from the training label counts of every client, cut by FedLoGe's 75 % / 95 % rule.
    """
    from fedvq_app.aggregation.etf import TAIL, shot_groups  # noqa: PLC0415

    final = _final_clients(folder)
    if final is None:
        return None
    clients, counts = final
    tail = np.flatnonzero(shot_groups(np.sum(counts, axis=0)) == TAIL)
    return _mean_of([_class_mean(m, tail) for m in clients.values()])


def seen_unseen_accuracy(folder: Path) -> tuple[float | None, float | None]:
    """Mean over clients of the final global-test accuracy on the classes the client trained on / never saw.

    Where a federated model loses under label skew, it loses on the classes a client never
    trained on; these two figures say which side of that split a gap is on.
    """
    final = _final_clients(folder)
    if final is None:
        return None, None
    clients, counts = final
    seen = [_class_mean(m, np.flatnonzero(counts[pid] > 0)) for pid, m in clients.items()]
    unseen = [_class_mean(m, np.flatnonzero(counts[pid] == 0)) for pid, m in clients.items()]
    return _mean_of(seen), _mean_of(unseen)


def pooled_val_accuracy(folder: Path) -> float | None:
    """Mean over clients of the final accuracy on every client's validation split (``metrics.pooled-validation``)."""
    final = _final_clients(folder)
    return None if final is None else _mean_of([m.get("pooled-val-accuracy") for m in final[0].values()])


def reconstruction_seen_unseen(folder: Path) -> tuple[float | None, float | None]:
    """FusedSpaceFed: mean over clients of the final reconstruction MSE on the global-test images of the classes the
    client trained on / never saw (``test-reconstruction-seen`` / ``-unseen``); (None, None) for other methods."""
    final = _final_clients(folder)
    if final is None:
        return None, None
    return tuple(_mean_of([m.get(f"test-reconstruction-{k}") for m in final[0].values()]) for k in ("seen", "unseen"))


def mode_figures(folder: Path) -> dict[str, dict[str, float | None]]:
    """Per inference mode (FedLoGe): the mean over clients of ``val-<mode>-accuracy`` (own validation split)
    and ``<mode>-accuracy`` (own long-tailed test rows) in the final evaluated round; {} for other methods."""
    final = _final_clients(folder)
    if final is None:
        return {}
    clients, _ = final
    keys = {
        k[len("val-") : -len("-accuracy")]
        for m in clients.values()
        for k in m
        if k.startswith("val-") and k.endswith("-accuracy")
    }
    keys = {k for k in keys if any(f"{k}-accuracy" in m for m in clients.values())}  # a mode: scored on both
    return {
        mode: {
            "val": _mean_of([m.get(f"val-{mode}-accuracy") for m in clients.values()]),
            "own_test": _mean_of([m.get(f"{mode}-accuracy") for m in clients.values()]),
        }
        for mode in sorted(keys)
    }


def run_cell(method: str, scenario: str, seed: int, setup: dict, work: str) -> dict:
    """One federated job (in a worker process); its final figures or the error that stopped it."""
    logging.getLogger("flwr").setLevel(logging.WARNING)
    from fedvq_app.client_app import app as client_app  # noqa: PLC0415
    from fedvq_app.local_grid import full_run_config, run_local  # noqa: PLC0415
    from fedvq_app.server_app import app as server_app  # noqa: PLC0415

    name = f"{method}_{scenario}_s{seed}"
    config = full_run_config(
        method=method,
        seed=seed,
        **{
            "num-server-rounds": setup["rounds"],
            "eval-every": setup["rounds"],
            "train.local-epochs": setup["local_epochs"],
            "dataset.name": "digits",
            "dataset.size": setup["size"],
            "metrics.gradient-dissimilarity": True,
            "metrics.gradient-batches": setup["gradient_batches"],
            "metrics.pooled-validation": True,
            "log-dir": work,
            "experiment-name": name,
            **SCENARIOS[scenario],
        },
    )
    started = time.time()
    row = {"method": method, "scenario": scenario, "seed": seed}
    folder = Path(work) / name
    try:
        run_local(server_app, client_app, setup["clients"], config)
        summary = json.loads((folder / "summary.json").read_text())
    except Exception as err:  # noqa: BLE001 - one failing cell must not stop the grid
        return {**row, "error": f"{type(err).__name__}: {err}"[:300], "seconds": time.time() - started}
    final = summary.get("final") or {}
    gamma = (summary.get("gradient_dissimilarity") or {}).get("final")
    if gamma is None:  # a strategy whose final report does not carry it: the last evaluated round's value
        evaluated = [r["evaluate"]["aggregated"] for r in rounds_of(folder) if r.get("evaluate")]
        gamma = next((e["gradient-dissimilarity"] for e in reversed(evaluated) if "gradient-dissimilarity" in e), None)
    tail = tail_accuracy(folder) if SCENARIOS[scenario].get("partition.kind") == LONG_TAIL else None
    seen, unseen = seen_unseen_accuracy(folder)
    stats = summary.get("fusedspace") if isinstance(summary.get("fusedspace"), dict) else {}
    modes = mode_figures(folder)
    rec_seen, rec_unseen = reconstruction_seen_unseen(folder)
    return {
        **row,
        "accuracy": final.get("accuracy"),
        "macro_f1": final.get("macro_f1"),
        "balanced_accuracy": final.get("balanced_accuracy"),
        "own_test_accuracy": final.get("own_test_accuracy"),
        "tail_accuracy": tail,
        "gamma": gamma,
        "val_accuracy": final.get("val_accuracy"),
        "pooled_val_accuracy": pooled_val_accuracy(folder),
        "seen_class_accuracy": seen,
        "unseen_class_accuracy": unseen,
        "reconstruction_loss": stats.get("reconstruction-loss"),
        "reconstruction_seen": rec_seen,
        "reconstruction_unseen": rec_unseen,
        **({"modes": modes} if modes else {}),
        "seconds": time.time() - started,
    }


# ----------------------------------------------------------------------------
# Table and chart
# ----------------------------------------------------------------------------
def load_cells(name: str = NAME) -> list[dict]:
    path = RESULTS / f"{name}.jsonl"
    if not path.is_file():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def table_cells(records: list[dict]) -> tuple[dict, dict[tuple[str, str, int], dict]]:
    """The setup of the newest full-size cell (quick ones only when there is none) and its newest cells."""
    full = [r for r in records if not r["setup"]["quick"]]
    pool = full or records
    if not pool:
        return {}, {}
    setup = pool[-1]["setup"]
    return setup, {(r["method"], r["scenario"], r["seed"]): r for r in pool if r["setup"] == setup}


def mean_spread(values: list[float | None]) -> tuple[float, float, int] | None:
    """Mean, sample standard deviation (0 for one value) and count of the measured values."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0, len(values)


def _cell_text(stat, percent: bool, digits: int = 2) -> str:
    if stat is None:
        return "-"
    mean, spread, _ = stat
    return f"{100 * mean:.2f} ± {100 * spread:.2f}" if percent else f"{mean:.{digits}f} ± {spread:.{digits}f}"


def aggregate(cells: dict, figures=FIGURES) -> dict[tuple[str, str], dict]:
    """(method, scenario) -> {figure: (mean, spread, n)}, plus seeds and failures."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for (method, scenario, _), cell in cells.items():
        groups.setdefault((method, scenario), []).append(cell)
    out = {}
    for key, group in groups.items():
        ok = [c for c in group if "error" not in c]
        out[key] = {fig: mean_spread([c.get(fig) for c in ok]) for fig, _, _ in figures}
        out[key]["seeds"] = sorted(c["seed"] for c in ok)
        out[key]["failed"] = [f"seed {c['seed']}: {c['error']}" for c in group if "error" in c]
        out[key]["seconds"] = float(np.mean([c["seconds"] for c in group]))
    return out


#: (method, scenario, figure, comparison with FedAvg's figure, what the target says)
TARGETS = (
    ("fusedspace", "dirichlet-0.05", "accuracy", ">=", "fusedspace accuracy >= FedAvg's on Dirichlet 0.05"),
    ("fusedspace", "pathological-2", "accuracy", ">=", "fusedspace accuracy >= FedAvg's on pathological-2"),
    (
        "fedloge",
        LONG_TAIL + "-0.01",
        "tail_accuracy",
        ">",
        "fedloge global-mode tail accuracy on the balanced test set > FedAvg's on long-tail IF 0.01",
    ),
    (
        "fedloge",
        LONG_TAIL + "-0.01",
        "own_test_accuracy",
        ">=",
        "fedloge personalised accuracy on each client's own long-tailed test >= FedAvg's (own-distribution)",
    ),
)


def target_lines(stats: dict[tuple[str, str], dict]) -> list[str]:
    """One line per target whose two cells were measured: both means, the seeds, met or MISSED."""
    lines = []
    for method, scenario, figure, relation, text in TARGETS:
        ours, base = ((stats.get((m, scenario)) or {}).get(figure) for m in (method, "fedavg"))
        if ours is None or base is None:
            continue
        met = ours[0] >= base[0] if relation == ">=" else ours[0] > base[0]
        lines.append(
            f"- {text}: {100 * ours[0]:.2f} ± {100 * ours[1]:.2f} vs {100 * base[0]:.2f} ± "
            f"{100 * base[1]:.2f} (n = {ours[2]} / {base[2]}): {'met' if met else '**MISSED**'}"
        )
    return lines


def render_markdown(records: list[dict]) -> str:
    setup, cells = table_cells(records)
    if not cells:
        return "No cells measured yet.\n"
    stats = aggregate(cells)
    methods = list(dict.fromkeys(m for m, _ in stats))
    scenarios = [s for s in SCENARIOS if any(s == sc for _, sc in stats)]
    dates = sorted(c["date"] for c in cells.values())
    lines = [
        f"Digits (scikit-learn, {setup['size']}x{setup['size']}), {setup['clients']} clients, {setup['rounds']} "
        f"rounds x {setup['local_epochs']} local epoch(s), every method at its defaults, final-round figures; "
        f"mean ± sample standard deviation over the seeds listed (n). Accuracy, macro-F1, balanced and tail "
        f"accuracy: mean over clients of each client's model on the global test set; own-distribution: on test "
        f"rows drawn to the client's own label mix; Gamma over {setup['gradient_batches']} batch(es) per client. "
        f"Measured {dates[0]} .. {dates[-1]}{' (quick smoke-test size)' if setup['quick'] else ''}.",
        "",
        scenario_legend(scenarios),
        "",
        "| scenario | method | n | " + " | ".join(title for _, title, _ in FIGURES) + " | s per job |",
        "|---|---|---|" + "---|" * (len(FIGURES) + 1),
    ]
    for s in scenarios:
        for m in methods:
            entry = stats.get((m, s))
            if entry is None:
                continue
            figures = [_cell_text(entry[fig], pct) for fig, _, pct in FIGURES]
            lines.append(
                f"| {s} | {m} | {len(entry['seeds'])} | " + " | ".join(figures) + f" | {entry['seconds']:.0f} |"
            )
    verdicts = target_lines(stats)
    if verdicts:
        lines += [
            "",
            f"Targets (issue 14) at this grid's budget ({setup['rounds']} rounds; mean over the seeds "
            "measured, compared with FedAvg's mean in the same grid; the 30-round figures and the causes are "
            "in docs/fusedspace.md and docs/fedloge.md):",
            "",
            *verdicts,
        ]
    missing = [
        f"- {m}: " + ", ".join(s for s in SCENARIOS if (m, s) not in stats)
        for m in classification_methods()
        if any((m, s) not in stats for s in SCENARIOS)
    ]
    if missing:
        lines += ["", "Not measured in this setup (no cell of the full grid yet):", "", *missing]
    failures = [f"- {m} / {s}: {f}" for (m, s), e in stats.items() for f in e["failed"]]
    if failures:
        lines += ["", "Failures:", "", *failures]
    return "\n".join(lines) + "\n"


#: the targets table's columns: (record key, column title, scale to %)
TARGET_FIGURES = (
    ("accuracy", "accuracy %", True),
    ("own_test_accuracy", "own-distribution acc. %", True),
    ("tail_accuracy", "tail acc. % (long-tail)", True),
    ("seen_class_accuracy", "acc. on the client's classes %", True),
    ("unseen_class_accuracy", "acc. on classes the client never saw %", True),
    ("val_accuracy", "validation acc. %", True),
    ("pooled_val_accuracy", "pooled validation acc. %", True),
    ("reconstruction_loss", "AE recon. MSE (training)", False),
    ("reconstruction_seen", "recon. MSE, test images of the client's classes", False),
    ("reconstruction_unseen", "recon. MSE, test images of classes it never saw", False),
)


def target_pairs() -> list[tuple[str, str]]:
    """(method, scenario) cells ``--targets`` runs: each target's method and FedAvg on its scenario."""
    pairs = []
    for method, scenario, *_ in TARGETS:
        for m in (method, "fedavg"):
            if (m, scenario) not in pairs:
                pairs.append((m, scenario))
    return pairs


def modes_lines(cells: dict) -> list[str]:
    """FedLoGe's inference modes per (scenario, method) with modes: own validation and own test, mean ± sd."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for (method, scenario, _), cell in cells.items():
        if cell.get("modes"):
            groups.setdefault((method, scenario), []).append(cell)
    lines = []
    for (method, scenario), group in groups.items():
        seeds = sorted(c["seed"] for c in group)
        lines += [
            "",
            f"{method} on {scenario}, every inference mode (seeds {', '.join(map(str, seeds))}): each "
            "client's own validation split (what a default is chosen on) and its own long-tailed test rows; "
            "mean over clients, then mean ± sd over seeds; per seed in brackets.",
            "",
            "| mode | own validation % | own test % |",
            "|---|---|---|",
        ]
        for mode in sorted({m for c in group for m in c["modes"]}):
            cols = []
            for key in ("val", "own_test"):
                values = [c["modes"].get(mode, {}).get(key) for c in sorted(group, key=lambda c: c["seed"])]
                per_seed = " / ".join("-" if v is None else f"{100 * v:.1f}" for v in values)
                cols.append(f"{_cell_text(mean_spread(values), True)} ({per_seed})")
            lines.append(f"| {mode} | " + " | ".join(cols) + " |")
    return lines


def render_targets_markdown(records: list[dict]) -> str:
    """The done-when table at the targets' budget: every figure, the target figure per seed, met / MISSED."""
    setup, cells = table_cells(records)
    if not cells:
        return "No cells measured yet.\n"
    stats = aggregate(cells, TARGET_FIGURES)
    dates = sorted(c["date"] for c in cells.values())
    scenarios = [s for s in SCENARIOS if any(s == sc for _, sc in stats)]
    budget = " (the budget of the issue's own table)" if setup["rounds"] == TARGETS_ROUNDS else ""
    lines = [
        f"The issue's targets at {setup['rounds']} rounds x {setup['local_epochs']} local epoch(s){budget}, digits "
        f"{setup['size']}x{setup['size']}, {setup['clients']} clients, every method "
        f"at its defaults, FedAvg in the same session at the same budget; mean ± sample standard deviation over "
        f"the seeds (n), final round. Columns as in the grid; 'acc. on the client's classes' / 'never saw': each "
        f"client's model on the global-test classes it has / has no training images of (mean over clients); "
        f"validation: each client's own validation split; pooled validation: every client's validation split "
        f"together (held-out training rows of every class). Measured {dates[0]} .. {dates[-1]}"
        f"{' (quick smoke-test size)' if setup['quick'] else ''}.",
        "",
        scenario_legend(scenarios),
        "",
        "| scenario | method | n | " + " | ".join(t for _, t, _ in TARGET_FIGURES) + " | per seed (target figure) "
        "| s per job |",
        "|---|---|---|" + "---|" * (len(TARGET_FIGURES) + 2),
    ]
    figure_of = {}
    for method, scenario, figure, *_ in TARGETS:
        figure_of.setdefault((method, scenario), figure)
        figure_of.setdefault(("fedavg", scenario), figure)
    for s in scenarios:
        for (m, sc), entry in stats.items():
            if sc != s:
                continue
            figure = figure_of.get((m, s), "accuracy")
            per_seed = " / ".join(
                "-" if cells[(m, s, seed)].get(figure) is None else f"{100 * cells[(m, s, seed)][figure]:.2f}"
                for seed in sorted(seed for mm, ss, seed in cells if (mm, ss) == (m, s))
                if "error" not in cells[(m, s, seed)]
            )
            lines.append(
                f"| {s} | {m} | {len(entry['seeds'])} | "
                + " | ".join(_cell_text(entry[f], pct, 4) for f, _, pct in TARGET_FIGURES)
                + f" | {figure.replace('_', ' ')}: {per_seed} | {entry['seconds']:.0f} |"
            )
    lines += modes_lines(cells)
    verdicts = target_lines(stats)
    if verdicts:
        lines += [
            "",
            f"Targets (issue 14) at {setup['rounds']} rounds (mean over the seeds, compared with FedAvg's "
            "mean in the same run):",
            "",
            *verdicts,
        ]
    failures = [f"- {m} / {s}: {f}" for (m, s), e in stats.items() for f in e["failed"]]
    if failures:
        lines += ["", "Failures:", "", *failures]
    return "\n".join(lines) + "\n"


def render_chart(records: list[dict], path: Path) -> None:
    """Grouped bars: mean accuracy per scenario and method, error bars = spread over seeds."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    setup, cells = table_cells(records)
    if not cells:
        return
    stats = aggregate(cells)
    methods = list(dict.fromkeys(m for m, _ in stats))
    scenarios = [s for s in SCENARIOS if any(s == sc for _, sc in stats)]
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.8 * len(scenarios) + 3), 4.2))
    x = np.arange(len(scenarios))
    for i, m in enumerate(methods):
        values = [(stats.get((m, s)) or {}).get("accuracy") for s in scenarios]
        ax.bar(
            x + (i - (len(methods) - 1) / 2) * width,
            [100 * v[0] if v else 0 for v in values],
            width,
            yerr=[100 * v[1] if v else 0 for v in values],
            capsize=2,
            label=m,
        )
    ax.set_xticks(x, scenarios)
    ax.set_ylabel("test accuracy (%), mean ± sd over seeds")
    ax.set_ylim(0, 100)
    ax.set_title(
        f"digits {setup['size']}x{setup['size']}, {setup['clients']} clients, "
        f"{setup['rounds']} rounds x {setup['local_epochs']} epoch(s)"
    )
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_reports(records: list[dict], folder: Path, targets: bool = False) -> Path:
    """``reproduce.md`` and ``reproduce.png`` of ``records`` in ``folder`` (``--targets``: ``reproduce_targets.md``
    only); the table's path."""
    if targets:
        table = folder / f"{TARGETS_NAME}.md"
        table.write_text(render_targets_markdown(records))
        return table
    table = folder / f"{NAME}.md"
    table.write_text(render_markdown(records))
    render_chart(records, folder / f"{NAME}.png")
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 2 rounds x 1 epoch, 3 clients, seed 42, two scenarios, not recorded",
    )
    parser.add_argument("--methods", default="", help="comma-separated subset (default: every classification method)")
    parser.add_argument("--scenarios", default="", help=f"comma-separated subset of {', '.join(SCENARIOS)}")
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    parser.add_argument(
        "--targets",
        action="store_true",
        help=f"only the issue's done-when cells (each target's method and FedAvg on its scenario), "
        f"{TARGETS_ROUNDS} rounds unless --rounds; recorded in {TARGETS_NAME}.jsonl, "
        f"table {TARGETS_NAME}.md (the grid's table stays as it is)",
    )
    parser.add_argument("--rounds", type=int, help=f"default 10 ({TARGETS_ROUNDS} with --targets)")
    parser.add_argument("--local-epochs", type=int, default=2)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--size", type=int, default=8, help="image side (digits are natively 8x8)")
    parser.add_argument("--gradient-batches", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (one job each at a time)")
    parser.add_argument(
        "--out",
        type=Path,
        help="folder of the table and chart (default bench/results; --quick: a scratch folder, printed)",
    )
    args = parser.parse_args(argv)
    if args.rounds is None:
        args.rounds = TARGETS_ROUNDS if args.targets else 10
    if args.quick:
        args.rounds, args.local_epochs, args.clients, args.gradient_batches, args.seeds = 2, 1, 3, 1, "42"
    available = classification_methods()
    methods = parse_list(args.methods, available, "methods") if args.methods else available
    default_scenarios = list(QUICK_SCENARIOS if args.quick else SCENARIOS)
    scenarios = parse_list(args.scenarios, list(SCENARIOS), "scenarios") if args.scenarios else default_scenarios
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    setup = setup_of(args)
    work = tempfile.mkdtemp(prefix="bench_reproduce_")
    if args.targets:  # the target pairs, narrowed by --methods / --scenarios when given
        pairs = [
            (m, s)
            for m, s in target_pairs()
            if (not args.methods or m in methods) and (not args.scenarios or s in scenarios)
        ]
        cells = [
            (m, s, seed) for s in dict.fromkeys(s for _, s in pairs) for seed in seeds for m, ss in pairs if ss == s
        ]
    else:
        cells = [(m, s, seed) for s in scenarios for seed in seeds for m in methods]
    name = TARGETS_NAME if args.targets else NAME
    quick_records: list[dict] = []
    folder = args.out or (Path(work) if args.quick else RESULTS)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            futures = [pool.submit(run_cell, m, s, seed, setup, work) for m, s, seed in cells]
            for future in futures:
                record = emit(name, {"setup": setup, **future.result()}, quick=args.quick)
                quick_records.append(record)
                table = write_reports(quick_records if args.quick else load_cells(name), folder, args.targets)
        print(table.read_text() if args.quick else f"wrote {table}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
