"""bench/methods.py: which methods take part, and how cells become the table (no training)."""

from __future__ import annotations

from bench.methods import SCENARIOS, classification_methods, render_markdown, table_cells
from fedvq_app.local_grid import full_run_config
from fedvq_app.registry import get_method, load_settings, method_names


def test_every_registered_method_with_a_model_takes_part_and_kmeans_does_not():
    chosen = classification_methods()
    assert "kmeans" not in chosen
    assert {"fedavg", "fedprox", "scaffold", "fusedspace"} <= set(chosen)
    assert set(chosen) == {m for m in method_names() if get_method(m).build_model is not None}


def test_every_scenario_is_a_valid_run_config():
    for overrides in SCENARIOS.values():
        load_settings(full_run_config(method="fedavg", **overrides))


def _cell(method, scenario, date, accuracy=0.5, quick=False, rounds=10, **extra):
    setup = {
        "dataset": "digits",
        "size": 8,
        "clients": 10,
        "rounds": rounds,
        "local_epochs": 2,
        "seed": 42,
        "gradient_batches": 4,
        "quick": quick,
    }
    return {
        "date": date,
        "setup": setup,
        "method": method,
        "scenario": scenario,
        "accuracy": accuracy,
        "macro_f1": accuracy,
        "balanced_accuracy": accuracy,
        "gamma": 3.0,
        "seconds": 12.0,
        **extra,
    }


def test_the_table_keeps_the_newest_cell_of_the_newest_full_setup():
    records = [
        _cell("fedavg", "dirichlet-0.5", "2026-01-01 10:00:00", 0.1, rounds=5),  # older setup: dropped
        _cell("fedavg", "dirichlet-0.5", "2026-01-01 11:00:00", 0.2),
        _cell("fedavg", "dirichlet-0.5", "2026-01-01 12:00:00", 0.3),  # newest of the same cell wins
        _cell("fusedspace", "pathological-2", "2026-01-01 12:30:00", error="RuntimeError: boom", seconds=4.0),
        _cell("fedavg", "dirichlet-0.5", "2026-01-01 13:00:00", 0.9, quick=True),  # quick never replaces full
    ]
    setup, cells = table_cells(records)
    assert setup["rounds"] == 10 and not setup["quick"]
    assert cells[("fedavg", "dirichlet-0.5")]["accuracy"] == 0.3
    text = render_markdown(records)
    assert "**30.00**" in text and "**90.00**" not in text and "**10.00**" not in text
    assert "| fedavg | **30.00** (30.00 / 30.00) | not run |" in text
    assert "| fusedspace | not run | failed |" in text
    assert "fusedspace / pathological-2: RuntimeError: boom" in text


def test_bytes_per_round_get_their_own_table_when_measured():
    old = [_cell("fedavg", "dirichlet-0.5", "2026-01-01 10:00:00")]  # recorded before communication was counted
    assert "Bytes per round" not in render_markdown(old)
    records = [
        _cell("fedavg", "dirichlet-0.5", "2026-01-01 11:00:00", bytes_per_round=6_404_000.0),
        _cell("fedvq", "dirichlet-0.5", "2026-01-01 11:05:00", bytes_per_round=10_090_000.0),
    ]
    text = render_markdown(records)
    assert "| fedavg | 6.40 MB |" in text and "| fedvq | 10.09 MB |" in text
