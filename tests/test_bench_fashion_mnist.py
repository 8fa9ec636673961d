"""bench/fashion_mnist.py: its cells are valid run configs, and how cells become the table, verdicts and curves.

One real cell runs on tiny idx files the test writes (the real Fashion-MNIST is never needed).
"""

from __future__ import annotations

import logging

import pytest

from bench import fashion_mnist as grid
from fedvq_app.registry import load_settings
from tests.test_fashion_mnist import write_fashion

SETUP = {
    "dataset": "fashion-mnist",
    "max_train_samples": 12000,
    "max_test_samples": 0,
    "rounds": 10,
    "local_epochs": 1,
    "eval_every": 1,
    "quick": False,
}


def test_every_cell_of_the_grid_is_a_valid_run_config(tmp_path):
    cells = grid.plan_cells(list(grid.ROW_OF), None, [0, 1, 2], quick=False)
    assert len(cells) == 3 * sum(len(row.methods) for row in grid.ROWS)
    for method, scenario, seed, _ in grid.plan_cells(list(grid.ROW_OF), None, [2], quick=False):
        settings = load_settings(grid.cell_config(method, scenario, seed, SETUP, str(tmp_path)))
        assert settings.dataset.name == "fashion-mnist" and settings.dataset.max_train_samples == 12000
        assert settings.method == method and settings.seed == seed and settings.train.num_threads == 1
    assert {c[3] for c in cells if c[1] == "rotation-3-domains"} == {9}  # 3 domains x 3 clients
    assert all(row.methods[0] == "fedavg" for row in grid.ROWS)  # every row has its baseline


def test_plan_narrows_to_the_methods_asked_and_quick_uses_few_clients():
    cells = grid.plan_cells(["dirichlet-0.5", "rotated-half"], ["cfl"], [0], quick=True)
    assert cells == [("cfl", "rotated-half", 0, grid.QUICK_CLIENTS)]


def _rounds(accuracies):
    return [
        {
            "round": i + 1,
            "evaluate": {
                "clients": {"0": {"test-accuracy": a, "own-test-accuracy": a / 2}} if a is not None else {},
                "summary": {"mean_accuracy": a} if a is not None else {},
            },
        }
        for i, a in enumerate(accuracies)
    ]


def test_the_curve_skips_unevaluated_rounds_and_the_last_five_rounds_give_the_movement():
    curve = grid.curve_of(_rounds([0.1, None, 0.5, 0.52, 0.51, 0.515, 0.518]))
    assert [p["round"] for p in curve] == [1, 3, 4, 5, 6, 7] and curve[1]["own_test_accuracy"] == 0.25
    assert abs(grid.last_rounds_move(curve) - 0.02) < 1e-12
    assert grid.last_rounds_move(curve[:4]) is None  # fewer than 5 evaluated rounds


def _cell(method, scenario, seed, accuracy, quick=False, rounds=10, step=0.01, **extra):
    curve = [
        {"round": r, "accuracy": accuracy - step * (rounds - r), "own_test_accuracy": accuracy}
        for r in range(1, rounds + 1)
    ]
    return {
        "date": "2026-12-07 15:00:00",
        "setup": {**SETUP, "quick": quick, "rounds": rounds},
        "method": method,
        "scenario": scenario,
        "seed": seed,
        "clients": 10,
        "accuracy": accuracy,
        "own_test_accuracy": accuracy,
        "curve": curve,
        "seconds": 300.0,
        **extra,
    }


def test_the_table_marks_each_target_and_fedavgs_convergence(tmp_path):
    records = [
        *(_cell("fedavg", "dirichlet-0.5", s, 0.84) for s in (0, 1)),
        *(_cell("fedvq", "dirichlet-0.5", s, 0.75, codes_used=40, perplexity=20.0) for s in (0, 1)),
        *(_cell("fedavg", "rotated-half", s, 0.78) for s in (0, 1)),
        *(_cell("cfl", "rotated-half", s, 0.81, cluster_purity=1.0) for s in (0, 1)),
        _cell("fedvq", "dirichlet-0.5", 2, 0.99, quick=True),  # a smoke run never enters the full table
    ]
    text = grid.render_markdown(records)
    assert "| dirichlet-0.5 | 10x1, 12k | 10 | fedvq | 2 | 75.00 ± 0.00 |" in text
    assert "fedvq accuracy >= FedAvg's - 0.5 pt: 75.00 ± 0.00 % vs FedAvg 84.00 ± 0.00 % (n = 2): **MISSED**" in text
    assert "| 2 | 99.00" not in text
    assert "cfl cluster purity 1.0: 1.00 ± 0.00 vs 1 (n = 2): met" in text
    assert "cfl accuracy >= FedAvg's + 2 pts: 81.00 ± 0.00 % vs FedAvg 78.00 ± 0.00 % (n = 2): met" in text
    moves = "FedAvg's accuracy moves 4.00 ± 0.00 pt over the last 5 evaluated rounds, per seed; "
    assert moves + "the seeds' mean curve moves 4.00 (**not converged**" in text
    written = grid.render_curves(records, tmp_path)
    assert sorted(p.name for p in written) == ["fashion_mnist_dirichlet-0.5.png", "fashion_mnist_rotated-half.png"]


def _lines_of(records, folder, monkeypatch):
    """The curves render_curves draws (savefig patched to keep each figure's lines)."""
    import matplotlib.pyplot as plt  # noqa: PLC0415

    drawn = []
    original = plt.Figure.savefig

    def keep(fig, *args, **kwargs):
        drawn.extend(fig.axes[0].get_lines())
        return original(fig, *args, **kwargs)

    monkeypatch.setattr(plt.Figure, "savefig", keep)
    grid.render_curves(records, folder)
    monkeypatch.undo()
    return drawn


def test_a_row_measured_at_a_larger_budget_gets_its_own_block_verdicts_and_curve(tmp_path, monkeypatch):
    records = [
        *(_cell("fedavg", "rotated-half", s, 0.78) for s in (0, 1)),
        *(_cell("cfl", "rotated-half", s, 0.79, cluster_purity=1.0) for s in (0, 1)),
        # 30 rounds: FedAvg moves 4 x 0.001 over its last 5 rounds (converged), cfl now 2 points ahead
        *(_cell("fedavg", "rotated-half", s, 0.80, rounds=30, step=0.001) for s in (0, 1)),
        *(_cell("cfl", "rotated-half", s, 0.82, rounds=30, step=0.001, cluster_purity=1.0) for s in (0, 1)),
    ]
    text = grid.render_markdown(records)
    rows = [line for line in text.splitlines() if line.startswith("| rotated-half |")]
    assert [r.split(" | ")[1] for r in rows] == ["10x1, 12k", "10x1, 12k", "30x1, 12k", "30x1, 12k"]
    assert "- at 10x1, 12k: rotated-half: cfl accuracy >= FedAvg's + 2 pts: 79.00" in text
    assert "+ 2 pts: 79.00 ± 0.00 % vs FedAvg 78.00 ± 0.00 % (n = 2): **MISSED**" in text
    assert "+ 2 pts: 82.00 ± 0.00 % vs FedAvg 80.00 ± 0.00 % (n = 2): met" in text  # exactly on the threshold
    assert "rotated-half at 30x1, 12k: FedAvg's accuracy moves 0.40 ± 0.00 pt" in text and "(converged;" in text
    assert "per seed; the seeds' mean curve moves 0.40 (converged" in text
    assert "rotated-half at 10x1, 12k: FedAvg's accuracy moves 4.00" in text
    (path,) = grid.render_curves(records, tmp_path)
    assert path.name == "fashion_mnist_rotated-half.png"
    assert [line.get_xdata()[-1] for line in _lines_of(records, tmp_path, monkeypatch)] == [30, 30]
    # 30 rounds without FedAvg's cells: the curve stays at the largest budget with both methods
    assert [line.get_xdata()[-1] for line in _lines_of(records[:4] + records[6:], tmp_path, monkeypatch)] == [10, 10]
    assert [s["rounds"] for s, _ in grid.budget_groups(records)] == [10, 30]


def test_budgets_that_differ_only_in_the_test_subset_get_distinct_labels():
    records = [_cell("fedavg", "rotated-half", 0, 0.78), _cell("cfl", "rotated-half", 0, 0.80)]
    records[1]["setup"] = {**records[1]["setup"], "max_test_samples": 2000}
    text = grid.render_markdown(records)
    assert "| rotated-half | 10x1, 12k, test 10000, eval every 1 | 10 | fedavg | 1 |" in text
    assert "| rotated-half | 10x1, 12k, test 2000, eval every 1 | 10 | cfl | 1 |" in text
    assert "cfl accuracy >= FedAvg's + 2 pts" not in text  # no FedAvg at cfl's budget: no verdict
    assert grid.budget_label({**SETUP, "max_train_samples": 300, "rounds": 2}) == "2x1, 300"
    assert grid.budget_label({**SETUP, "max_train_samples": 0}) == "10x1, 60k"


def test_the_seeds_mean_curve_averages_the_rounds_every_seed_evaluated():
    a = [{"round": r, "accuracy": v} for r, v in zip(range(1, 7), [0.1, 0.5, 0.6, 0.6, 0.7, 0.8], strict=True)]
    b = [{"round": r, "accuracy": v} for r, v in zip(range(1, 7), [0.3, 0.7, None, 0.8, 0.7, 0.6], strict=True)]
    curve = grid.mean_curve([a, b])
    assert [p["round"] for p in curve] == [1, 2, 4, 5, 6]  # round 3: seed b has no figure
    assert [round(p["accuracy"], 6) for p in curve] == [0.2, 0.6, 0.7, 0.7, 0.7]
    assert grid.last_rounds_move(curve) == pytest.approx(0.5)
    assert grid.mean_curve([]) == []


def test_method_figures_read_cfl_purity_and_fedvq_usage_from_the_summary():
    summary = {
        "cfl": {"cluster_purity": 0.5, "clusters": [[0, 1], [2]]},
        "fedvq": {"final_codes_used": 30, "codebook_shape": [64, 8], "final_perplexity": 12.5},
    }
    figures = grid.method_figures(summary)
    assert figures["cluster_purity"] == 0.5 and figures["codes_used"] == 30 and figures["codebook_size"] == 64
    assert grid.method_figures({})["perplexity"] is None


@pytest.fixture
def flwr_log_level():
    """run_cell quiets Flower's logger for its worker process; here it runs in the test process."""
    logger = logging.getLogger("flwr")
    level = logger.level
    yield
    logger.setLevel(level)  # setLevel, not the attribute: it also clears the loggers' isEnabledFor cache


def test_one_real_cell_runs_on_tiny_idx_files(tmp_path, flwr_log_level):
    write_fashion(tmp_path / "data", n_train=60, n_test=20)
    setup = {**SETUP, "max_train_samples": 40, "max_test_samples": 10, "rounds": 2, "quick": True}
    cell = grid.run_cell("fedavg", "dirichlet-0.5", 0, setup, str(tmp_path / "work"), 2, str(tmp_path / "data"))
    assert "error" not in cell, cell.get("error")
    assert [p["round"] for p in cell["curve"]] == [1, 2] and 0.0 <= cell["accuracy"] <= 1.0
    assert cell["rejected_total"] == 0 and cell["clients"] == 2
