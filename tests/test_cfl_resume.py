"""CFL's cluster state survives a server crash: resumed after the split = uninterrupted."""

from __future__ import annotations

import json

import pytest
from flwr.app import Context, RecordDict

from fedvq_app.client_app import app as client_app
from fedvq_app.errors import RunFailed
from fedvq_app.local_grid import LocalGrid, full_run_config, run_local
from fedvq_app.server.checkpoint import load_checkpoint
from fedvq_app.server_app import app as server_app

CONFIG = {
    "num-server-rounds": 4,
    "train.local-epochs": 1,
    "dataset.size": 12,
    "partition.kind": "iid",
    "shift.rotate-fraction": 0.5,
    # split as soon as the warm-up allows (round 2): the crash comes after it
    "cfl.eps1": 1e6,
    "cfl.eps2": 0.0,
    "cfl.max-cross-similarity": 1.0,  # no check of the halves' directions either
    "cfl.warmup-rounds": 2,
    "cfl.min-cluster-size": 1,
}


class Crash(RuntimeError):
    """The simulated server crash (distinct from any error the app itself could raise)."""


class CrashInRound4(LocalGrid):
    """Dies sending round 4's train messages: round 3's evaluation rode on them (evaluate-with-train), so the
    last checkpoint is round 2's, the round of the split."""

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        if any(m.metadata.message_type == "train" and m.content["config"]["server-round"] == 4 for m in messages):
            raise Crash("server killed in round 4")
        return super().send_and_receive(messages, timeout=timeout)


def _config(tmp_path, name):
    return full_run_config(method="cfl", **{**CONFIG, "log-dir": str(tmp_path), "experiment-name": name})


def test_resume_after_the_split_continues_every_cluster(tmp_path):
    run_local(server_app, client_app, 2, _config(tmp_path, "straight"))
    straight = json.loads((tmp_path / "straight" / "summary.json").read_text())

    config = _config(tmp_path, "resumed")
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=dict(config))
    with pytest.raises(RunFailed, match="internal error Crash"):  # a crash ends the run as failed
        server_app(grid=CrashInRound4(client_app, 2, config), context=context)
    folder = tmp_path / "resumed"
    saved = load_checkpoint(folder)
    assert saved.server_round == 2
    assert saved.strategy_state["meta"]["history"][0]["round"] == 2
    assert sum(k.startswith("model/") for k in saved.strategy_state) == 2 * len(saved.arrays)  # two cluster models
    run_local(server_app, client_app, 2, {**config, "resume-from": str(folder)})
    resumed = json.loads((folder / "summary.json").read_text())

    assert straight["cfl"]["split_rounds"][0] == 2
    for key in ("clusters", "split_rounds", "cluster_purity"):
        assert resumed["cfl"][key] == straight["cfl"][key]
    assert resumed["final"]["per_client_accuracy"] == straight["final"]["per_client_accuracy"]
    assert resumed["cfl"]["results_table"] == straight["cfl"]["results_table"]
