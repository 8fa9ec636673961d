"""Fashion-MNIST grid of issue 25: each method against FedAvg on the scenario it claims, with learning curves.

Rows (each method at its defaults, FedAvg in the same grid at the same budget):

* ``dirichlet-0.5``: fedavg, fedvq, fusedspace, and fedprox / scaffold beside FedAvg for NIID-Bench's row
  (10 clients, Dirichlet 0.5)
* ``rotation-3-domains``: fedavg, fedvq (9 clients, IID labels, images rotated 0 / -50 / 120 degrees; UEFL's setting)
* ``rotated-half``: fedavg, cfl (Dirichlet 1.0, the last half of the clients rotated 180 degrees)
* ``long-tail-0.01``: fedavg, fedloge (imbalance factor 0.01)
* ``dirichlet-0.05``, ``pathological-2``: fedavg, fusedspace

Each cell (method, scenario, seed) is one whole federated job in-process (the real ServerApp and
ClientApp on ``run_local``, the machinery of ``bench/reproduce.py``), evaluated every
``--eval-every`` rounds for the learning curve. A cell records its final figures (accuracy,
own-distribution accuracy, balanced accuracy, tail accuracy on the long-tailed row, CFL's cluster
purity, FedVQ's codebook usage and perplexity), its curve and its seconds in
``bench/results/fashion_mnist.jsonl`` (``--quick`` cells are printed, not recorded).
``fashion_mnist.md`` (table, FedAvg's convergence per row, each target met or MISSED) and one
learning-curve PNG per scenario (``fashion_mnist_<scenario>.png``) are rebuilt from the newest
cell of each (method, scenario, seed) at each budget measured (rounds x local epochs and training
pool): a row measured again at a larger budget, to meet the issue's budget rule, gets a block per
budget in the table, and its curve shows the largest budget at which all of the row's methods were measured.

Data: ``apt-get install -y dataset-fashion-mnist`` (or ``--data-dir`` with the four idx files).

    python bench/fashion_mnist.py                                  # the grid: 3 seeds, 12,000 training images
    python bench/fashion_mnist.py --quick                          # smoke run, not recorded
    python bench/fashion_mnist.py --scenarios dirichlet-0.5 --max-train-samples 0   # the full 60,000
    python bench/fashion_mnist.py --seeds 0 --scenarios rotated-half --rounds 20
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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS, emit, rounds_of  # noqa: E402
from bench.methods import SCENARIOS as DIGITS_SCENARIOS  # noqa: E402
from bench.methods import parse_list  # noqa: E402
from bench.reproduce import LONG_TAIL, mean_spread, tail_accuracy  # noqa: E402

NAME = "fashion_mnist"
SEEDS = (0, 1, 2)
#: FedAvg has converged on a row when its mean accuracy moves less than this over the last CONVERGED_ROUNDS rounds
CONVERGED_SPREAD = 0.005
CONVERGED_ROUNDS = 5


@dataclass(frozen=True)
class Row:
    """One scenario of the grid: its run-config overrides, the methods compared and the federation size."""

    scenario: str
    methods: tuple[str, ...]
    clients: int
    overrides: dict


ROWS = (
    Row(
        "dirichlet-0.5",
        ("fedavg", "fedvq", "fusedspace", "fedprox", "scaffold"),
        10,
        DIGITS_SCENARIOS["dirichlet-0.5"],
    ),
    Row("rotation-3-domains", ("fedavg", "fedvq"), 9, {"partition.kind": "iid", "shift.domains": "0,-50,120"}),
    Row("rotated-half", ("fedavg", "cfl"), 10, DIGITS_SCENARIOS["rotated-half"]),
    Row("long-tail-0.01", ("fedavg", "fedloge"), 10, DIGITS_SCENARIOS["long-tail-0.01"]),
    Row("dirichlet-0.05", ("fedavg", "fusedspace"), 10, DIGITS_SCENARIOS["dirichlet-0.05"]),
    Row("pathological-2", ("fedavg", "fusedspace"), 10, DIGITS_SCENARIOS["pathological-2"]),
)
ROW_OF = {row.scenario: row for row in ROWS}
QUICK_SCENARIOS = ("dirichlet-0.5", "rotation-3-domains")
QUICK_CLIENTS = 3

#: below this, two figures are the same number (rounding of float sums)
TIE = 1e-9

#: (record key, column title, scale to %)
FIGURES = (
    ("accuracy", "accuracy %", True),
    ("own_test_accuracy", "own-distribution acc. %", True),
    ("balanced_accuracy", "balanced acc. %", True),
    ("tail_accuracy", "tail acc. % (long-tail)", True),
    ("cluster_purity", "cluster purity (cfl)", False),
    ("codes_used", "codes used (fedvq)", False),
    ("perplexity", "codebook perplexity (fedvq)", False),
)

#: (method, scenario, figure, relation, FedAvg's figure is the reference (else: the number), offset, text)
TARGETS = (
    ("fedvq", "dirichlet-0.5", "accuracy", ">=", True, -0.005, "fedvq accuracy >= FedAvg's - 0.5 pt"),
    ("fedvq", "rotation-3-domains", "own_test_accuracy", ">", True, 0.0, "fedvq own-domain accuracy > FedAvg's"),
    ("cfl", "rotated-half", "cluster_purity", ">=", False, 1.0, "cfl cluster purity 1.0"),
    ("cfl", "rotated-half", "accuracy", ">=", True, 0.02, "cfl accuracy >= FedAvg's + 2 pts"),
    ("fusedspace", "dirichlet-0.05", "accuracy", ">=", True, 0.0, "fusedspace accuracy >= FedAvg's"),
    ("fusedspace", "pathological-2", "accuracy", ">=", True, 0.0, "fusedspace accuracy >= FedAvg's"),
    ("fedloge", "long-tail-0.01", "tail_accuracy", ">", True, 0.0, "fedloge tail accuracy > FedAvg's"),
    ("fedloge", "long-tail-0.01", "own_test_accuracy", ">=", True, 0.0, "fedloge own-data accuracy >= FedAvg's"),
)


def setup_of(args: argparse.Namespace) -> dict:
    """What must match for two cells to share a table."""
    return {
        "dataset": "fashion-mnist",
        "max_train_samples": args.max_train_samples,
        "max_test_samples": args.max_test_samples,
        "rounds": args.rounds,
        "local_epochs": args.local_epochs,
        "eval_every": args.eval_every,
        "quick": args.quick,
    }


def cell_config(method: str, scenario: str, seed: int, setup: dict, work: str, data_dir: str = "") -> dict:
    """The full run config of one cell (pyproject defaults + the row's scenario + the grid's budget)."""
    from fedvq_app.local_grid import full_run_config  # noqa: PLC0415

    return full_run_config(
        method=method,
        seed=seed,
        **{
            "num-server-rounds": setup["rounds"],
            "eval-every": setup["eval_every"],
            "train.local-epochs": setup["local_epochs"],
            "train.num-threads": 1,
            "dataset.name": "fashion-mnist",
            "dataset.size": 28,
            "dataset.max-train-samples": setup["max_train_samples"],
            "dataset.max-test-samples": setup["max_test_samples"],
            **({"dataset.data-dir": data_dir} if data_dir else {}),
            "log-dir": work,
            "experiment-name": f"{method}_{scenario}_s{seed}",
            **ROW_OF[scenario].overrides,
        },
    )


def curve_of(rounds: list[dict]) -> list[dict]:
    """Per evaluated round: mean over clients of the global-test and the own-distribution accuracy."""
    from fedvq_app.tracking.experiment import client_spread  # noqa: PLC0415

    curve = []
    for record in rounds:
        clients = record["evaluate"]["clients"]
        if not clients:
            continue
        own = client_spread(clients, "own-test-accuracy")
        curve.append(
            {
                "round": record["round"],
                "accuracy": record["evaluate"]["summary"].get("mean_accuracy"),
                "own_test_accuracy": own.get("mean_accuracy"),
            }
        )
    return curve


def last_rounds_move(curve: list[dict], rounds: int = CONVERGED_ROUNDS) -> float | None:
    """How much the mean accuracy moves (max - min) over the last ``rounds`` evaluated rounds; None: too few."""
    values = [p["accuracy"] for p in curve if p["accuracy"] is not None][-rounds:]
    return float(max(values) - min(values)) if len(values) == rounds else None


def mean_curve(curves: list[list[dict]]) -> list[dict]:
    """The seeds' mean accuracy per round, over the rounds every curve evaluated."""
    by_round = [{p["round"]: p["accuracy"] for p in c if p["accuracy"] is not None} for c in curves]
    common = sorted(set.intersection(*(set(r) for r in by_round))) if by_round else []
    return [{"round": r, "accuracy": float(np.mean([b[r] for b in by_round]))} for r in common]


def method_figures(summary: dict) -> dict:
    """CFL's cluster purity and clusters, FedVQ's final codebook usage (None where the method has none)."""
    cfl = summary.get("cfl") if isinstance(summary.get("cfl"), dict) else {}
    fedvq = summary.get("fedvq") if isinstance(summary.get("fedvq"), dict) else {}
    shape = fedvq.get("codebook_shape") or []
    return {
        "cluster_purity": cfl.get("cluster_purity"),
        "clusters": cfl.get("clusters"),
        "split_rounds": cfl.get("split_rounds"),
        "codes_used": fedvq.get("final_codes_used"),
        "codebook_size": shape[0] if shape else None,
        "perplexity": fedvq.get("final_perplexity"),
        "usage_ratio": fedvq.get("final_usage_ratio"),
    }


def run_cell(method: str, scenario: str, seed: int, setup: dict, work: str, clients: int, data_dir: str = "") -> dict:
    """One federated job (in a worker process); its final figures and curve, or the error that stopped it."""
    logging.getLogger("flwr").setLevel(logging.WARNING)
    from fedvq_app.client_app import app as client_app  # noqa: PLC0415
    from fedvq_app.local_grid import run_local  # noqa: PLC0415
    from fedvq_app.server_app import app as server_app  # noqa: PLC0415

    config = cell_config(method, scenario, seed, setup, work, data_dir)
    folder = Path(work) / config["experiment-name"]
    row = {"method": method, "scenario": scenario, "seed": seed, "clients": clients}
    started = time.time()
    try:
        run_local(server_app, client_app, clients, config)
        summary = json.loads((folder / "summary.json").read_text())
    except Exception as err:  # noqa: BLE001 - one failing cell must not stop the grid
        return {**row, "error": f"{type(err).__name__}: {err}"[:300], "seconds": time.time() - started}
    final = summary.get("final") or {}
    long_tail = ROW_OF[scenario].overrides.get("partition.kind") == LONG_TAIL
    return {
        **row,
        "accuracy": final.get("accuracy"),
        "own_test_accuracy": final.get("own_test_accuracy"),
        "balanced_accuracy": final.get("balanced_accuracy"),
        "macro_f1": final.get("macro_f1"),
        "tail_accuracy": tail_accuracy(folder) if long_tail else None,
        **method_figures(summary),
        "rejected_total": summary.get("rejected_total"),
        "curve": curve_of(rounds_of(folder)),
        "seconds": time.time() - started,
    }


# ----------------------------------------------------------------------------
# Table, verdicts and curves
# ----------------------------------------------------------------------------
def load_cells() -> list[dict]:
    path = RESULTS / f"{NAME}.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []


def budget_label(setup: dict, detailed: bool = False) -> str:
    """``rounds x local epochs`` and the training pool, the budget column of the table; ``detailed`` adds the test
    subset and the evaluation cadence (for setups that differ only there)."""
    size = setup["max_train_samples"] or 60000
    pool = f"{size // 1000}k" if size % 1000 == 0 else f"{size:,}"
    label = f"{setup['rounds']}x{setup['local_epochs']}, {pool}"
    if detailed:
        label += f", test {setup['max_test_samples'] or 10000}, eval every {setup['eval_every']}"
    return label


def budget_labels(setups: list[dict]) -> list[str]:
    """One distinct label per setup: the short one unless two setups would share it."""
    short = [budget_label(s) for s in setups]
    return short if len(set(short)) == len(short) else [budget_label(s, detailed=True) for s in setups]


def budget_groups(records: list[dict]) -> list[tuple[dict, dict[tuple[str, str, int], dict]]]:
    """Each measured budget (setup) with the newest cell of each (method, scenario, seed) at it, smallest first.

    Full cells only (quick ones when there is no full cell). A row may be measured at several budgets (10 rounds
    for the whole grid, more where FedAvg had not converged): each is its own block of the table."""
    full = [r for r in records if not r["setup"]["quick"]]
    pool = full or records
    setups: list[dict] = []
    for record in pool:
        if record["setup"] not in setups:
            setups.append(record["setup"])
    setups.sort(key=lambda s: (s["rounds"] * s["local_epochs"], s["max_train_samples"] or 60000, s["rounds"]))
    return [
        (setup, {(r["method"], r["scenario"], r["seed"]): r for r in pool if r["setup"] == setup}) for setup in setups
    ]


def aggregate(cells: dict) -> dict[tuple[str, str], dict]:
    """(method, scenario) -> {figure: (mean, sd, n)}, the seeds, failures, mean seconds and the FedAvg movement."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for (method, scenario, _), cell in cells.items():
        groups.setdefault((method, scenario), []).append(cell)
    out = {}
    for key, group in groups.items():
        ok = [c for c in group if "error" not in c]
        entry = {fig: mean_spread([c.get(fig) for c in ok]) for fig, _, _ in FIGURES}
        entry["seeds"] = sorted(c["seed"] for c in ok)
        entry["failed"] = [f"seed {c['seed']}: {c['error']}" for c in group if "error" in c]
        entry["seconds"] = float(np.mean([c["seconds"] for c in group]))
        entry["move"] = mean_spread([last_rounds_move(c.get("curve", [])) for c in ok])
        entry["mean_move"] = last_rounds_move(mean_curve([c.get("curve", []) for c in ok]))
        out[key] = entry
    return out


def target_lines(stats: dict[tuple[str, str], dict]) -> list[str]:
    """One line per target whose cells were measured: the figures, the seeds, met or MISSED."""
    lines = []
    for method, scenario, figure, relation, versus_fedavg, offset, text in TARGETS:
        ours = (stats.get((method, scenario)) or {}).get(figure)
        base = (stats.get(("fedavg", scenario)) or {}).get(figure) if versus_fedavg else (offset, 0.0, 0)
        if ours is None or base is None:
            continue
        reference = base[0] + offset if versus_fedavg else offset
        # float sums: a figure equal to its threshold up to rounding is equal (0.80 + 0.02 != 0.82)
        met = ours[0] >= reference - TIE if relation == ">=" else ours[0] > reference + TIE
        scale, unit = (100, " %") if figure != "cluster_purity" else (1, "")
        against = f"FedAvg {scale * base[0]:.2f} ± {scale * base[1]:.2f}{unit}" if versus_fedavg else f"{offset:g}"
        lines.append(
            f"- {scenario}: {text}: {scale * ours[0]:.2f} ± {scale * ours[1]:.2f}{unit} vs {against} "
            f"(n = {ours[2]}): {'met' if met else '**MISSED**'}"
        )
    return lines


def _text(stat, percent: bool) -> str:
    if stat is None:
        return "-"
    mean, spread, _ = stat
    return f"{100 * mean:.2f} ± {100 * spread:.2f}" if percent else f"{mean:.2f} ± {spread:.2f}"


def render_markdown(records: list[dict]) -> str:
    groups = budget_groups(records)
    if not groups:
        return "No cells measured yet.\n"
    labels = budget_labels([setup for setup, _ in groups])
    stats = {label: aggregate(cells) for label, (_, cells) in zip(labels, groups, strict=True)}
    dates = sorted(c["date"] for _, cells in groups for c in cells.values())
    tests = sorted({s["max_test_samples"] for s, _ in groups})
    test = " / ".join(f"a stratified {n:,}-image test subset" if n else "all 10,000 test images" for n in tests)
    quick = all(s["quick"] for s, _ in groups)
    lines = [
        f"Fashion-MNIST 28x28, {test}; budget = rounds x local epochs and the stratified training "
        f"pool (60k: all of it); every method at its defaults and FedAvg at the same budget; final round, mean "
        f"over clients, then mean ± sample standard deviation over the seeds (n). Own-distribution: each "
        f"client's model on test rows drawn to its own label mix, in its own rotation domain. Measured "
        f"{dates[0]} .. {dates[-1]}{' (quick smoke-test size)' if quick else ''}.",
        "",
        "| scenario | budget | clients | method | n | " + " | ".join(t for _, t, _ in FIGURES) + " | s per job |",
        "|---|---|---|---|---|" + "---|" * (len(FIGURES) + 1),
    ]
    for row in ROWS:
        for budget, (_, cells) in zip(labels, groups, strict=True):
            for method in row.methods:
                entry = stats[budget].get((method, row.scenario))
                if entry is None:
                    continue
                clients = next(c["clients"] for (m, s, _), c in cells.items() if (m, s) == (method, row.scenario))
                lines.append(
                    f"| {row.scenario} | {budget} | {clients} | {method} | {len(entry['seeds'])} | "
                    + " | ".join(_text(entry[f], pct) for f, _, pct in FIGURES)
                    + f" | {entry['seconds']:.0f} |"
                )
    moves = []
    for row in ROWS:
        for budget, by_key in stats.items():
            fedavg = by_key.get(("fedavg", row.scenario)) or {}
            move = fedavg.get("move")
            if move is not None:
                # the verdict reads each seed's curve (the stricter reading); the seeds' mean curve is shown beside
                verdict = "converged" if move[0] < CONVERGED_SPREAD else "**not converged**: raise --rounds"
                mean_move = fedavg.get("mean_move")
                beside = f"; the seeds' mean curve moves {100 * mean_move:.2f}" if mean_move is not None else ""
                moves.append(
                    f"- {row.scenario} at {budget}: FedAvg's accuracy moves {100 * move[0]:.2f} ± "
                    f"{100 * move[1]:.2f} pt over the last {CONVERGED_ROUNDS} evaluated rounds, per seed{beside} "
                    f"({verdict}; the budget rule: < {100 * CONVERGED_SPREAD:g})"
                )
    if moves:
        lines += ["", "Budget check (FedAvg):", "", *moves]
    verdicts = [f"- at {budget}: {line[2:]}" for budget, by_key in stats.items() for line in target_lines(by_key)]
    if verdicts:
        lines += ["", "Targets (issue 25), at each budget measured:", "", *verdicts]
    failures = [
        f"- {m} / {s} at {budget}: {f}"
        for budget, by_key in stats.items()
        for (m, s), e in by_key.items()
        for f in e["failed"]
    ]
    if failures:
        lines += ["", "Failures:", "", *failures]
    return "\n".join(lines) + "\n"


def render_curves(records: list[dict], folder: Path) -> list[Path]:
    """One PNG per scenario: each method's mean accuracy per round over the seeds, min..max band."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    groups = budget_groups(records)
    written = []
    for row in ROWS:
        measured = [(setup, cells) for setup, cells in groups if any(s == row.scenario for _, s, _ in cells)]
        if not measured:
            continue
        complete = [(st, cs) for st, cs in measured if {m for m, sc, _ in cs if sc == row.scenario} >= set(row.methods)]
        setup, cells = (complete or measured)[-1]  # the largest budget with every method of the row measured
        series = {}
        for method in row.methods:
            curves = [
                c["curve"] for (m, s, _), c in cells.items() if (m, s) == (method, row.scenario) and c.get("curve")
            ]
            if curves:
                series[method] = curves
        if not series:
            continue
        key = "own_test_accuracy" if row.scenario == "rotation-3-domains" else "accuracy"
        fig, ax = plt.subplots(figsize=(6.0, 3.8))
        for method, curves in series.items():
            rounds = sorted({p["round"] for curve in curves for p in curve})
            values = np.array(
                [[next((p[key] for p in curve if p["round"] == r), np.nan) for r in rounds] for curve in curves],
                dtype=float,
            )
            mean = np.nanmean(values, axis=0)
            ax.plot(rounds, 100 * mean, marker="o", markersize=3, label=f"{method} (n = {len(curves)})")
            ax.fill_between(rounds, 100 * np.nanmin(values, axis=0), 100 * np.nanmax(values, axis=0), alpha=0.2)
        ax.set_xlabel("round")
        ax.set_ylabel(("own-domain " if key == "own_test_accuracy" else "") + "test accuracy (%)")
        ax.set_title(f"Fashion-MNIST, {row.scenario}, budget {budget_label(setup)}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = folder / f"{NAME}_{row.scenario}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def write_reports(records: list[dict], folder: Path) -> Path:
    table = folder / f"{NAME}.md"
    table.write_text(render_markdown(records))
    render_curves(records, folder)
    return table


def plan_cells(scenarios: list[str], methods: list[str] | None, seeds: list[int], quick: bool) -> list[tuple]:
    """(method, scenario, seed, clients) of every job, scenario by scenario, FedAvg first in each."""
    cells = []
    for scenario in scenarios:
        row = ROW_OF[scenario]
        clients = QUICK_CLIENTS if quick else row.clients
        chosen = [m for m in row.methods if methods is None or m in methods]
        cells += [(m, scenario, seed, clients) for seed in seeds for m in chosen]
    return cells


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: 2 rounds x 1 epoch, {QUICK_CLIENTS} clients, 300 training and 200 test images, seed 0, "
        f"scenarios {', '.join(QUICK_SCENARIOS)}; not recorded",
    )
    parser.add_argument("--scenarios", default="", help=f"comma-separated subset of {', '.join(ROW_OF)}")
    parser.add_argument("--methods", default="", help="comma-separated subset of each row's methods")
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--eval-every", type=int, default=1, help="evaluate every k rounds (the learning curve)")
    parser.add_argument("--max-train-samples", type=int, default=12000, help="0 = the full 60,000")
    parser.add_argument("--max-test-samples", type=int, default=0, help="0 = the full 10,000")
    parser.add_argument("--data-dir", default="", help="folder of the idx files (default: the app's default)")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (one job each at a time)")
    parser.add_argument("--out", type=Path, help="folder of the table and curves (default bench/results)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.local_epochs, args.eval_every, args.seeds = 2, 1, 1, "0"
        args.max_train_samples, args.max_test_samples = 300, 200
    every = [m for row in ROWS for m in row.methods]
    methods = parse_list(args.methods, sorted(set(every)), "methods") if args.methods else None
    default = list(QUICK_SCENARIOS if args.quick else ROW_OF)
    scenarios = parse_list(args.scenarios, list(ROW_OF), "scenarios") if args.scenarios else default
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    setup = setup_of(args)
    work = tempfile.mkdtemp(prefix="bench_fashion_mnist_")
    folder = args.out or (Path(work) if args.quick else RESULTS)
    folder.mkdir(parents=True, exist_ok=True)
    quick_records: list[dict] = []
    try:
        with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            futures = [
                pool.submit(run_cell, m, s, seed, setup, work, clients, args.data_dir)
                for m, s, seed, clients in plan_cells(scenarios, methods, seeds, args.quick)
            ]
            for future in futures:
                record = emit(NAME, {"setup": setup, **future.result()}, quick=args.quick)
                quick_records.append(record)
                table = write_reports(quick_records if args.quick else load_cells(), folder)
        print(table.read_text() if args.quick else f"wrote {table}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
