"""Checkpoint and resume: a run interrupted after round 2 and resumed ends where an uninterrupted one does."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from fedvq_app.client_app import app as client_app
from fedvq_app.config import ConfigError
from fedvq_app.errors import RunFailed
from fedvq_app.local_grid import LocalGrid, full_run_config, run_local
from fedvq_app.registry import load_settings
from fedvq_app.server.checkpoint import (
    CHECKPOINT_FILE,
    Checkpoint,
    capture_rng,
    check_compatible,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from fedvq_app.server_app import app as server_app

ROUNDS = 3
SMALL = {"num-server-rounds": ROUNDS, "train.local-epochs": 1, "partition.kind": "iid"}


class Interrupted(RuntimeError):
    """Stands for the ServerApp process dying."""


class CrashingGrid(LocalGrid):
    """Dies when the server sends the train messages of ``crash_round``."""

    crash_round = 3

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        for msg in messages:
            if msg.metadata.message_type == "train" and msg.content["config"]["server-round"] == self.crash_round:
                raise Interrupted(f"server killed in round {self.crash_round}")
        return super().send_and_receive(messages, timeout=timeout)


def _config(tmp_path, name, method="fedavg", **extra):
    return full_run_config(method=method, **{**SMALL, "log-dir": str(tmp_path), "experiment-name": name, **extra})


def _rounds(folder):
    return [json.loads(line) for line in (folder / "rounds.jsonl").read_text().splitlines()]


def _interrupted_then_resumed(tmp_path, method="fedavg", nodes=3, one_message=False):
    config = _config(tmp_path, "resumed", method, **{"evaluate-with-train": one_message})
    grid = CrashingGrid(client_app, nodes, config)
    # the crash ends the run as failed, with one line and the traceback kept in the folder
    with pytest.raises(RunFailed, match="internal error Interrupted: server killed in round 3") as failed:
        server_app(grid=grid, context=_server_context(config))
    assert isinstance(failed.value.__cause__, Interrupted)
    folder = tmp_path / "resumed"
    # one message per round: round 2's evaluation was to ride on round 3's (lost) train messages,
    # so round 2 is neither recorded nor checkpointed and the resumed run trains it again
    done = [1] if one_message else [1, 2]
    assert [r["round"] for r in _rounds(folder)] == done
    assert load_checkpoint(folder).server_round == done[-1]
    assert json.loads((folder / "summary.json").read_text())["status"] == "failed"
    assert "Interrupted" in (folder / "traceback.txt").read_text()
    # a fresh federation: new ServerApp, clients with empty context.state (as after a restart)
    run_local(server_app, client_app, nodes, {**config, "resume-from": str(folder)})
    return folder


def _server_context(config):
    from flwr.app import Context, RecordDict

    return Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=dict(config))


@pytest.mark.parametrize("one_message", [False, True], ids=["two-messages", "one-message"])
def test_fedavg_resumed_after_a_crash_reaches_the_uninterrupted_final_metrics(tmp_path, one_message):
    run_local(server_app, client_app, 3, _config(tmp_path, "straight", **{"evaluate-with-train": one_message}))
    straight = json.loads((tmp_path / "straight" / "summary.json").read_text())
    folder = _interrupted_then_resumed(tmp_path, one_message=one_message)
    resumed = json.loads((folder / "summary.json").read_text())

    print(
        f"final accuracy: uninterrupted {straight['final']['accuracy']:.4f} | "
        f"resumed {resumed['final']['accuracy']:.4f}"
    )
    assert resumed["rounds"] == straight["rounds"] == ROUNDS
    assert resumed["final"]["accuracy"] == straight["final"]["accuracy"]
    assert resumed["final"]["per_client_accuracy"] == straight["final"]["per_client_accuracy"]
    assert resumed["final"]["test_loss"] == pytest.approx(straight["final"]["test_loss"], abs=1e-9)
    assert straight["final"]["accuracy"] > 0.5  # it learned: chance is 0.1
    # every round, not only the last, matches
    for a, b in zip(_rounds(tmp_path / "straight"), _rounds(folder), strict=True):
        assert a["round"] == b["round"]
        assert a["train"]["aggregated"]["train-loss"] == pytest.approx(b["train"]["aggregated"]["train-loss"])
        assert a["evaluate"]["summary"] == b["evaluate"]["summary"]
    assert load_checkpoint(folder).server_round == ROUNDS
    assert resumed["num_clients"] == 3


def test_scaffold_resume_restores_the_server_control_variate(tmp_path):
    """SCAFFOLD's c survives (server state); the clients' c_i cannot (see docs/deployment.md)."""
    config = _config(tmp_path, "scaffold", "scaffold", **{"num-server-rounds": 1})
    run_local(server_app, client_app, 2, config)
    folder = tmp_path / "scaffold"
    saved = load_checkpoint(folder)
    control = {k: v for k, v in saved.strategy_state.items() if k.startswith("control/")}
    assert control and any(np.abs(v).sum() > 0 for v in control.values())
    assert set(control) == {f"control/{k}" for k in saved.arrays}

    # one more round: the loop starts at round 2 from the saved model and c
    run_local(server_app, client_app, 2, {**config, "num-server-rounds": 2, "resume-from": str(folder)})
    assert [r["round"] for r in _rounds(folder)] == [1, 2]
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["rounds"] == 2 and summary["final"]["accuracy"] > 0.3
    assert load_checkpoint(folder).server_round == 2


def test_checkpoint_round_trip_keeps_arrays_state_and_rng(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    rng = capture_rng()
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    arrays = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(3, dtype=np.float64)}
    state = {"codebook": np.eye(3, dtype=np.float32), "clusters": [[0, 2], [1]], "split_round": 7}
    save_checkpoint(tmp_path, Checkpoint(5, arrays, state, rng, {"label_counts": {"0": [1, 2]}}, {"seed": 1}))
    loaded = load_checkpoint(tmp_path)

    assert loaded.server_round == 5
    assert list(loaded.arrays) == ["w", "b"]
    assert all(np.array_equal(loaded.arrays[k], v) and loaded.arrays[k].dtype == v.dtype for k, v in arrays.items())
    assert np.array_equal(loaded.strategy_state["codebook"], state["codebook"])
    assert loaded.strategy_state["clusters"] == [[0, 2], [1]] and loaded.strategy_state["split_round"] == 7
    assert loaded.tracker_state == {"label_counts": {"0": [1, 2]}} and loaded.run_config == {"seed": 1}
    random.random(), np.random.rand(), torch.rand(1)  # move every generator on
    restore_rng(loaded.rng)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected
    assert not list(tmp_path.glob("*.partial"))


def test_state_that_is_not_json_or_array_is_refused(tmp_path):
    with pytest.raises(TypeError, match="'model'"):
        save_checkpoint(tmp_path, Checkpoint(1, {}, {"model": object()}))
    assert not (tmp_path / CHECKPOINT_FILE).exists()


def test_resume_refuses_a_different_experiment_and_a_folder_without_checkpoint(tmp_path):
    config = _config(tmp_path, "x")
    checkpoint = Checkpoint(2, {}, run_config=dict(config))
    changed = load_settings({**config, "partition.alpha": 5.0, "resume-from": str(tmp_path)})
    with pytest.raises(ConfigError, match=r"partition\.alpha: 0\.5 -> 5\.0"):
        check_compatible(changed, checkpoint)
    # operational keys may change: more rounds, another timeout or device
    check_compatible(
        load_settings({**config, "num-server-rounds": 9, "round-timeout": 5.0, "device": "cpu"}), checkpoint
    )
    with pytest.raises(ConfigError, match="no checkpoint.npz"):
        load_checkpoint(tmp_path / "empty")


def test_resume_from_an_empty_folder_stops_with_one_line(tmp_path, caplog):
    (tmp_path / "old").mkdir()
    config = _config(tmp_path, "old", **{"resume-from": str(tmp_path / "old")})
    with pytest.raises(RunFailed, match="no checkpoint.npz"):
        run_local(server_app, client_app, 2, config)
    assert "no checkpoint.npz" in caplog.text
    assert list((tmp_path / "old").iterdir()) == []  # a refused resume touches nothing
