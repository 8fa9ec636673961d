"""Whole jobs through the real ServerApp and ClientApp on the in-process grid."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedvq_app.client_app import app as client_app
from fedvq_app.errors import RunFailed
from fedvq_app.local_grid import full_run_config, run_local
from fedvq_app.server_app import app as server_app

SMALL = {"num-server-rounds": 2, "train.local-epochs": 1}


def _run(tmp_path, method, nodes=3):
    config = full_run_config(method=method, **{**SMALL, "log-dir": str(tmp_path), "experiment-name": method})
    grid = run_local(server_app, client_app, nodes, config)
    return grid, json.loads((tmp_path / method / "summary.json").read_text()), tmp_path / method


@pytest.mark.parametrize("method", ["fedavg", "fedprox", "scaffold"])
def test_baseline_learns_and_writes_the_experiment_folder(tmp_path, method):
    _, summary, folder = _run(tmp_path, method)
    assert summary["method"] == method and summary["dataset"] == "digits"
    assert summary["num_clients"] == 3 and summary["rounds"] == 2
    assert summary["final"]["accuracy"] > 0.3  # chance is 0.1
    assert len(summary["final"]["per_client_accuracy"]) == 3
    assert summary["best"]["round"] in (1, 2)
    for name in (
        "config.json",
        "rounds.jsonl",
        "label_distribution.png",
        "accuracy.png",
        "loss.png",
        "client_accuracy_table.png",
        "class_accuracy.png",
    ):
        assert (folder / name).is_file(), name
    rounds = [json.loads(line) for line in (folder / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2]
    assert set(rounds[-1]["evaluate"]["clients"]) == {"0", "1", "2"}
    assert json.loads((folder / "config.json").read_text())["method"] == method


def test_same_seed_same_result(tmp_path):
    _, first, _ = _run(tmp_path / "a", "fedavg")
    _, second, _ = _run(tmp_path / "b", "fedavg")
    assert first["final"]["per_client_accuracy"] == second["final"]["per_client_accuracy"]


def test_a_node_that_drops_out_is_recorded_and_the_run_goes_on(tmp_path):
    config = full_run_config(**{**SMALL, "log-dir": str(tmp_path), "experiment-name": "drop"})
    run_local(server_app, client_app, 4, config, fail_nodes={4})
    rounds = [json.loads(x) for x in (tmp_path / "drop" / "rounds.jsonl").read_text().splitlines()]
    assert all(r["dropped"] == [4] for r in rounds)
    summary = json.loads((tmp_path / "drop" / "summary.json").read_text())
    assert summary["num_clients"] == 3 and summary["dropped_total"] == 2


def test_a_malformed_reply_is_excluded_and_logged(tmp_path):
    def poison(node, msg):
        if node == 2 and "arrays" in msg.content.array_records:
            arrays = msg.content["arrays"]
            first = next(iter(arrays.keys()))
            bad = arrays[first].numpy().copy()
            bad.flat[0] = np.nan
            from flwr.app import Array

            arrays[first] = Array(bad)
        return msg

    config = full_run_config(**{**SMALL, "log-dir": str(tmp_path), "experiment-name": "poison"})
    run_local(server_app, client_app, 3, config, tamper=poison)
    rounds = [json.loads(x) for x in (tmp_path / "poison" / "rounds.jsonl").read_text().splitlines()]
    assert all(r["rejected"] and r["rejected"][0]["node"] == 2 for r in rounds)
    assert all("NaN" in r["rejected"][0]["reason"] for r in rounds)
    summary = json.loads((tmp_path / "poison" / "summary.json").read_text())
    assert summary["final"]["accuracy"] > 0.3


def test_bad_config_stops_the_server_with_one_line(tmp_path, caplog):
    config = full_run_config(**{"partition.alpha": -1.0, "log-dir": str(tmp_path)})
    with pytest.raises(RunFailed, match="'partition.alpha' has invalid value -1.0"):
        run_local(server_app, client_app, 2, config)
    assert "'partition.alpha' has invalid value -1.0" in caplog.text
