"""Every registered method builds its model and trains one round from the declared environment.

CI installs the project into a new virtual environment (``.ci/run``), so a module that only a
hand-installed package provides (``vector_quantize_pytorch`` was one) fails here, in CI, and not
on a user's machine. One round, two clients, one local epoch on the embedded digits: a few
seconds per method. The parametrization reads the registry, so a new method is covered as soon
as it is registered.
"""

from __future__ import annotations

import json
import math

import pytest

from fedvq_app.client_app import app as client_app
from fedvq_app.local_grid import full_run_config, run_local
from fedvq_app.registry import get_method, method_names
from fedvq_app.server_app import app as server_app

NEURAL = [name for name in method_names() if get_method(name).build_model is not None]
OTHER = [name for name in method_names() if name not in NEURAL]


def _one_round(tmp_path, method: str) -> tuple[dict, list[dict]]:
    config = full_run_config(
        method=method,
        **{"num-server-rounds": 1, "train.local-epochs": 1, "log-dir": str(tmp_path), "experiment-name": method},
    )
    run_local(server_app, client_app, 2, config)
    folder = tmp_path / method
    summary = json.loads((folder / "summary.json").read_text())
    rounds = [json.loads(line) for line in (folder / "rounds.jsonl").read_text().splitlines()]
    return summary, rounds


def test_the_registry_is_split_into_neural_and_other_methods():
    assert set(NEURAL) | set(OTHER) == set(method_names()) and "fedvq" in NEURAL and "kmeans" in OTHER


@pytest.mark.parametrize("method", NEURAL)
def test_a_neural_method_trains_one_round_from_a_clean_install(tmp_path, method):
    summary, rounds = _one_round(tmp_path, method)
    assert summary["method"] == method and summary["rounds"] == 1 and summary["num_clients"] == 2
    clients = rounds[0]["train"]["clients"]
    assert set(clients) == {"0", "1"}
    for figures in clients.values():
        assert figures["train-steps"] >= 1 and math.isfinite(figures["train-loss"])
    # one round of local training on 10 balanced-ish classes already beats chance (0.10)
    assert summary["final"]["accuracy"] > 0.15


@pytest.mark.parametrize("method", OTHER)
def test_a_statistics_method_runs_from_a_clean_install(tmp_path, method):
    summary, rounds = _one_round(tmp_path, method)
    assert summary["method"] == method and rounds
    figures = summary[method]
    assert math.isfinite(figures["inertia"]) and figures["ari"] > 0.5
