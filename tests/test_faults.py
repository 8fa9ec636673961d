"""Dropouts in the round loop: nodes that die mid-run, and too few nodes to go on.

In-process (LocalGrid); the same behaviour against real SuperNode processes is in
tests/test_deployment.py (a supernode killed mid-round).
"""

from __future__ import annotations

import json
import time

import pytest
from flwr.app import Context, RecordDict
from flwr.server.superlink.linkstate.utils import create_message_error_unavailable_res_message

from fedvq_app.client_app import app as client_app
from fedvq_app.local_grid import LocalGrid, full_run_config
from fedvq_app.server.loop import NodesUnavailable, PatientGrid, required_nodes
from fedvq_app.server_app import app as server_app
from fedvq_app.strategies.fedavg import FedAvgStrategy

SMALL = {"train.local-epochs": 1, "partition.kind": "iid", "num-server-rounds": 3, "eval-every": 3}


def _rounds(folder):
    return [json.loads(line) for line in (folder / "rounds.jsonl").read_text().splitlines()]


class FlakyGrid(LocalGrid):
    """Nodes that die in a given round: no reply from then on, gone from the node list after it.

    Nodes in ``superlink_errors`` are answered for by the SuperLink's own "node
    unavailable" error (what Flower sends once a dead node's heartbeat lapses); the
    others just stay silent until the round's timeout.
    """

    die_in_round: dict[int, int]
    superlink_errors: set[int]
    current_round = 0
    finished_round = False

    def _dead(self, node: int) -> bool:
        return node in self.die_in_round and self.current_round >= self.die_in_round[node]

    def get_node_ids(self):
        # a node is dropped from the SuperLink's list once its round is over
        return [n for n in super().get_node_ids() if not (self._dead(n) and self.finished_round)]

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        rounds = [int(m.content["config"]["server-round"]) for m in messages if "config" in m.content]
        if rounds and max(rounds) != self.current_round:
            self.current_round, self.finished_round = max(rounds), False
        for msg in messages:  # message ids as the SuperLink assigns them
            msg.metadata.__dict__["_message_id"] = msg.object_id
        replies = list(super().send_and_receive([m for m in messages if not self._dead(m.metadata.dst_node_id)]))
        replies += [
            create_message_error_unavailable_res_message(m.metadata, "node_unavail")
            for m in messages
            if self._dead(m.metadata.dst_node_id) and m.metadata.dst_node_id in self.superlink_errors
        ]
        self.finished_round = True
        return replies


def _flaky_run(tmp_path, name, nodes, die_in_round, superlink_errors=(), **extra):
    config = full_run_config(
        **{**SMALL, "log-dir": str(tmp_path), "experiment-name": name, "round-timeout": 1.0, **extra}
    )
    grid = FlakyGrid(client_app, nodes, config)
    grid.die_in_round, grid.superlink_errors = dict(die_in_round), set(superlink_errors)
    started = time.time()
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=dict(config))
    server_app(grid=grid, context=context)
    return tmp_path / name, time.time() - started


def test_nodes_dying_mid_run_are_recorded_and_later_rounds_go_on_without_them(tmp_path):
    # node 3 goes silent in round 2; node 4 dies too and the SuperLink reports it unavailable
    folder, _ = _flaky_run(tmp_path, "die", 4, {3: 2, 4: 2}, superlink_errors={4})
    rounds = _rounds(folder)
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert rounds[0]["dropped"] == [] and rounds[0]["sampled_train"] == "1-4" and rounds[0]["num_sampled_train"] == 4
    # round 2: both were sampled and never answered; their partitions are named
    assert rounds[1]["dropped"] == [3, 4] and rounds[1]["dropped_partitions"] == [2, 3]
    assert set(rounds[1]["train"]["clients"]) == {"0", "1"}
    # the SuperLink's error for node 4 is a dropout, not a rejected reply (of "node 1", its sender)
    assert rounds[1]["rejected"] == []
    # round 3: only the nodes present are sampled (2 >= min-available-nodes)
    assert rounds[2]["sampled_train"] == "1-2" and rounds[2]["dropped"] == []
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["rounds"] == 3 and summary["dropped_total"] == 2 and "stopped_early" not in summary
    assert summary["final"]["partition_ids"] == [0, 1] and summary["final"]["accuracy"] > 0.3


def test_too_few_nodes_stop_the_run_after_a_bounded_wait_instead_of_hanging(tmp_path):
    # min-available-nodes=3 and one of 3 nodes dies in round 2: round 3 cannot respect the minimum
    folder, elapsed = _flaky_run(tmp_path, "few", 3, {3: 2}, **{"min-available-nodes": 3, "eval-every": 1})
    rounds = _rounds(folder)
    assert [r["round"] for r in rounds] == [1, 2] and rounds[1]["dropped"] == [3]
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["rounds"] == 2
    assert summary["stopped_early"]["before_round"] == 2 + 1
    assert "2 nodes connected, the strategy needs at least 3" in summary["stopped_early"]["reason"]
    assert summary["final"]["round"] == 1  # round 2 could not be evaluated either
    assert elapsed < 120


class _Nodes:
    """A grid stand-in whose node list grows as ``counts`` says, one entry per call."""

    def __init__(self, counts):
        self.counts, self.calls = list(counts), 0

    def get_node_ids(self):
        self.calls += 1
        return list(range(self.counts[min(self.calls, len(self.counts)) - 1]))


def test_patient_grid_waits_for_late_nodes_and_gives_up_at_its_deadline():
    late = _Nodes([1, 1, 3])
    assert PatientGrid(late, required=3, wait_s=5.0, poll_s=0.01).get_node_ids() == [0, 1, 2]
    assert late.calls == 3
    started = time.time()
    with pytest.raises(NodesUnavailable, match="1 nodes connected, the strategy needs at least 2"):
        PatientGrid(_Nodes([1]), required=2, wait_s=0.2, poll_s=0.01).get_node_ids()
    assert time.time() - started < 2


def test_required_nodes_mirror_flower_sampling():
    strategy = FedAvgStrategy(min_available_nodes=2, min_train_nodes=4, min_evaluate_nodes=0)
    assert required_nodes(strategy, "train") == 4 and required_nodes(strategy, "evaluate") == 2
