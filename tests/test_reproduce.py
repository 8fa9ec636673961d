"""bench/reproduce.py: the table's mean and spread over seeds, and a --quick smoke cell."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench import reproduce
from bench.methods import SCENARIOS

SETUP = {
    "dataset": "digits",
    "size": 8,
    "clients": 10,
    "rounds": 10,
    "local_epochs": 2,
    "gradient_batches": 4,
    "quick": False,
}


def _cell(method, scenario, seed, accuracy, **extra):
    return {
        "setup": SETUP,
        "date": "2026-12-01 12:00:00",
        "method": method,
        "scenario": scenario,
        "seed": seed,
        "accuracy": accuracy,
        "macro_f1": accuracy,
        "balanced_accuracy": accuracy,
        "own_test_accuracy": None,
        "tail_accuracy": None,
        "gamma": 2.0,
        "seconds": 10.0,
        **extra,
    }


def test_the_table_gives_mean_and_sample_spread_over_seeds_per_method_and_scenario():
    records = [_cell("fedavg", "dirichlet-0.05", s, a) for s, a in ((42, 0.90), (43, 0.94), (44, 0.98))]
    records += [_cell("fedloge", "long-tail-0.01", 42, 0.5, tail_accuracy=0.25)]
    records += [{**_cell("fedloge", "long-tail-0.01", 43, None), "error": "ValueError: boom"}]
    records += [{**_cell("fedavg", "dirichlet-0.05", 42, 0.1), "setup": {**SETUP, "quick": True}}]  # ignored
    table = reproduce.render_markdown(records)
    assert "| dirichlet-0.05 | fedavg | 3 | 94.00 ± 4.00 | 94.00 ± 4.00 | 94.00 ± 4.00 | - | - | 2.00 ± 0.00 |" in table
    assert "| long-tail-0.01 | fedloge | 1 | 50.00 ± 0.00 |" in table and "25.00 ± 0.00" in table
    assert "fedloge / long-tail-0.01: seed 43: ValueError: boom" in table
    assert "- fedavg: dirichlet-0.5, pathological-2, rotated-half, long-tail-0.01" in table  # cells not run are named
    assert "- cfl: dirichlet-0.5, dirichlet-0.05, pathological-2, rotated-half, long-tail-0.01" in table


def test_the_table_says_which_targets_are_met_and_which_missed():
    records = [_cell("fedavg", "dirichlet-0.05", s, a) for s, a in ((42, 0.80), (43, 0.90))]
    records += [_cell("fusedspace", "dirichlet-0.05", s, a) for s, a in ((42, 0.84), (43, 0.88))]  # mean 86 >= 85
    records += [_cell("fedavg", "pathological-2", 42, 0.60), _cell("fusedspace", "pathological-2", 42, 0.59)]
    records += [
        _cell("fedavg", "long-tail-0.01", 42, 0.3, tail_accuracy=0.0, own_test_accuracy=0.5),
        _cell("fedloge", "long-tail-0.01", 42, 0.3, tail_accuracy=0.0, own_test_accuracy=0.6),
    ]
    table = reproduce.render_markdown(records)
    assert "Dirichlet 0.05: 86.00 ± 2.83 vs 85.00 ± 7.07 (n = 2 / 2): met" in table
    assert "pathological-2: 59.00 ± 0.00 vs 60.00 ± 0.00 (n = 1 / 1): **MISSED**" in table
    assert "long-tail IF 0.01: 0.00 ± 0.00 vs 0.00 ± 0.00 (n = 1 / 1): **MISSED**" in table  # equal is not above
    assert "(own-distribution): 60.00 ± 0.00 vs 50.00 ± 0.00 (n = 1 / 1): met" in table
    only_fedavg = reproduce.render_markdown([_cell("fedavg", "dirichlet-0.05", 42, 0.8)])
    assert "Targets" not in only_fedavg


def test_quick_runs_a_real_cell_and_reports_tail_and_own_distribution_accuracy(tmp_path, capsys):
    reproduce.main(
        ["--quick", "--methods", "fedavg", "--scenarios", "long-tail-0.01", "--jobs", "1", "--out", str(tmp_path)]
    )
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    cell = json.loads(line)
    assert "error" not in cell, cell.get("error")
    assert cell["setup"]["quick"] and cell["seed"] == 42 and cell["setup"]["rounds"] == 2
    for key in (
        "accuracy",
        "macro_f1",
        "balanced_accuracy",
        "own_test_accuracy",
        "tail_accuracy",
        "val_accuracy",
        "pooled_val_accuracy",
        "seen_class_accuracy",
        "unseen_class_accuracy",
    ):
        assert 0.0 <= cell[key] <= 1.0, key
    assert cell["accuracy"] > 0.1  # above chance after two rounds
    assert (tmp_path / "reproduce.md").is_file() and (tmp_path / "reproduce.png").is_file()
    assert "| long-tail-0.01 | fedavg | 1 |" in (tmp_path / "reproduce.md").read_text()


def test_targets_quick_runs_the_target_pair_and_records_fedloges_modes(tmp_path, capsys):
    reproduce.main(["--targets", "--quick", "--methods", "fedloge", "--jobs", "1", "--out", str(tmp_path)])
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert [(c["method"], c["scenario"]) for c in lines] == [("fedloge", "long-tail-0.01")]
    modes = lines[0]["modes"]
    assert {"personal", "personal-raw-local", "personal-realigned-local", "local-only", "global-only"} <= set(modes)
    assert modes["personal"] == modes["personal-raw-heads"]  # the default formula
    assert all(0.0 <= f[k] <= 1.0 for f in modes.values() for k in ("val", "own_test"))
    assert modes["personal"]["own_test"] == pytest.approx(lines[0]["own_test_accuracy"])
    assert "| personal |" in (tmp_path / "reproduce_targets.md").read_text()
    assert not (tmp_path / "reproduce.md").exists()


def test_pooled_validation_is_every_clients_validation_split_and_clients_score_on_it():
    from flwr.app import Context, RecordDict

    from fedvq_app.clients.base import NeuralClient
    from fedvq_app.data.client_data import load_client_data, pooled_validation
    from fedvq_app.local_grid import full_run_config
    from fedvq_app.registry import load_settings

    settings = load_settings(
        full_run_config(
            method="fedavg", **{**SCENARIOS["pathological-2"], "dataset.size": 8, "metrics.pooled-validation": True}
        )
    )
    parts = [load_client_data(settings, pid, 3) for pid in range(3)]
    x, y = pooled_validation(settings, 3)
    assert len(y) == len(x) == sum(len(p.val_y) for p in parts)
    assert len(np.unique(y)) > max(len(np.unique(p.val_y)) for p in parts)  # classes no single client holds
    context = Context(
        run_id=1,
        node_id=1,
        node_config={"partition-id": 0, "num-partitions": 3},
        state=RecordDict(),
        run_config=settings.raw,
    )
    client = NeuralClient(settings, context)
    splits = client.evaluate_splits(client.build_model())
    assert set(splits) >= {"val", "pooled-val", "test"}
    assert 0.0 <= splits["pooled-val"].as_metrics("pooled-val")["pooled-val-accuracy"] <= 1.0
    off = load_settings(full_run_config(method="fedavg", **{**SCENARIOS["pathological-2"], "dataset.size": 8}))
    assert "pooled-val" not in NeuralClient(off, context).evaluate_splits(client.build_model())


def test_the_grid_covers_the_seeds_scenarios():
    assert set(reproduce.QUICK_SCENARIOS) <= set(SCENARIOS)
    assert {"dirichlet-0.05", "pathological-2", "dirichlet-0.5", "long-tail-0.01", "rotated-half"} == set(SCENARIOS)
    with pytest.raises(SystemExit):
        reproduce.main(["--quick", "--methods", "nope"])


def test_seen_and_unseen_class_accuracy_split_each_clients_classes_by_its_training_counts(monkeypatch):
    clients = {
        0: {"test-class-accuracy": [1.0, 0.5, 0.0, -1.0]},  # class 3 absent from the test split
        1: {"test-class-accuracy": [0.2, 0.4, 0.6, 0.8]},
    }
    counts = [np.array([5, 1, 0, 0]), np.array([0, 0, 3, 0])]
    monkeypatch.setattr(reproduce, "_final_clients", lambda folder: (clients, counts))
    seen, unseen = reproduce.seen_unseen_accuracy(None)
    assert seen == pytest.approx(((1.0 + 0.5) / 2 + 0.6) / 2)  # client 0: classes 0, 1; client 1: class 2
    assert unseen == pytest.approx((0.0 + (0.2 + 0.4 + 0.8) / 3) / 2)  # -1 (no test image) is left out
    clients[0]["val-personal-accuracy"], clients[1]["val-personal-accuracy"] = 0.5, 0.7
    clients[0]["personal-accuracy"], clients[1]["personal-accuracy"] = 0.4, 0.8
    clients[0]["val-balanced-accuracy"] = 0.3  # a val-* figure that is no mode (no own-test twin): left out
    assert reproduce.mode_figures(None) == {"personal": {"val": pytest.approx(0.6), "own_test": pytest.approx(0.6)}}


def test_the_targets_table_gives_every_figure_the_target_per_seed_and_the_verdicts():
    setup = {**SETUP, "rounds": 30}
    modes = {"personal": {"val": 0.7, "own_test": 0.8}, "generic": {"val": 0.9, "own_test": 0.85}}
    records = [_cell("fusedspace", "pathological-2", 44, 0.99)]  # an older setup (10 rounds): not in this table
    records += [
        {**_cell("fedavg", "pathological-2", s, a, seen_class_accuracy=0.9, unseen_class_accuracy=0.5), "setup": setup}
        for s, a in ((42, 0.90), (43, 0.94))
    ]
    records += [
        {**_cell("fusedspace", "pathological-2", s, a, reconstruction_loss=0.01), "setup": setup}
        for s, a in ((42, 0.80), (43, 0.82))
    ]
    records += [
        {
            **_cell("fedloge", "long-tail-0.01", 42, 0.5, tail_accuracy=0.1, own_test_accuracy=0.8, modes=modes),
            "setup": setup,
        },
        {**_cell("fedavg", "long-tail-0.01", 42, 0.5, tail_accuracy=0.0, own_test_accuracy=0.85), "setup": setup},
    ]
    table = reproduce.render_targets_markdown(records)
    assert "30 rounds x 2 local epoch(s)" in table
    assert "| pathological-2 | fusedspace | 2 | 81.00 ± 1.41 |" in table and "accuracy: 80.00 / 82.00" in table
    assert "| pathological-2 | fedavg | 2 | 92.00 ± 2.83 |" in table and "90.00 ± 0.00 | 50.00 ± 0.00 |" in table
    assert "| 0.0100 ± 0.0000 |" in table  # the reconstruction MSE, not scaled to %
    assert "pathological-2: 81.00 ± 1.41 vs 92.00 ± 2.83 (n = 2 / 2): **MISSED**" in table
    assert "long-tail IF 0.01: 10.00 ± 0.00 vs 0.00 ± 0.00 (n = 1 / 1): met" in table
    assert "(own-distribution): 80.00 ± 0.00 vs 85.00 ± 0.00 (n = 1 / 1): **MISSED**" in table
    assert "| generic | 90.00 ± 0.00 (90.0) | 85.00 ± 0.00 (85.0) |" in table
    assert ("fusedspace", "dirichlet-0.05") in reproduce.target_pairs()
    assert ("fedavg", "long-tail-0.01") in reproduce.target_pairs() and len(reproduce.target_pairs()) == 6
