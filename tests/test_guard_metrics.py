"""The reply guard with evaluation metrics that legitimately differ between clients (issue 25).

A client may report a metric the others lack (fusedspace's ``test-reconstruction-unseen``
exists only on clients missing some class): its evaluate reply is accepted and each
metric is averaged over the clients that report it. Replies that are rejected are
counted in summary.json (``rejected_total``, ``rejected_evaluate_total``) and its warnings.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import ConfigRecord, MetricRecord, RecordDict

from fedvq_app.client_app import app as client_app
from fedvq_app.local_grid import full_run_config, run_local
from fedvq_app.records import to_record
from fedvq_app.server_app import app as server_app
from fedvq_app.strategies.fedavg import FedAvgStrategy
from fedvq_app.strategies.fedprox import FedProxStrategy
from fedvq_app.strategies.fusedspace import FusedSpaceStrategy
from fedvq_app.strategies.metrics import aggregate_scalar_metrics
from fedvq_app.strategies.scaffold import ScaffoldStrategy
from fedvq_app.tracking.experiment import rejection_totals, rejection_warning
from tests.conftest import reply

W = {"w": np.zeros((2, 2), np.float32)}


class FakeGrid:
    def __init__(self, nodes):
        self.nodes = list(nodes)

    def get_node_ids(self):
        return self.nodes


def _strategy(cls):
    kwargs = {"is_shared": lambda name: True} if cls is FusedSpaceStrategy else {}
    return cls(min_available_nodes=1, min_evaluate_nodes=1, **kwargs)


def _evaluate(strategy, metrics_by_node: dict[int, dict]):
    sent = strategy.configure_evaluate(1, to_record(W), ConfigRecord(), FakeGrid(metrics_by_node))
    replies = [reply(m, None, metrics_by_node[m.metadata.dst_node_id]) for m in sent]
    return strategy.aggregate_evaluate(1, replies)


@pytest.mark.parametrize("cls", [FedAvgStrategy, FedProxStrategy, ScaffoldStrategy, FusedSpaceStrategy])
def test_a_client_with_an_extra_evaluate_metric_is_accepted(cls):
    strategy = _strategy(cls)
    metrics = _evaluate(
        strategy,
        {
            1: {"num-examples": 10, "partition-id": 0, "test-accuracy": 0.2},
            2: {"num-examples": 30, "partition-id": 1, "test-accuracy": 0.6, "test-reconstruction-unseen": 0.9},
        },
    )
    assert strategy.rejections == [] and sorted(strategy.accepted_nodes) == [1, 2]
    assert metrics["test-accuracy"] == pytest.approx((10 * 0.2 + 30 * 0.6) / 40)  # both clients
    assert metrics["test-reconstruction-unseen"] == pytest.approx(0.9)  # the one client that reports it


def test_a_malformed_evaluate_reply_is_still_rejected_beside_a_differing_one():
    strategy = _strategy(FedAvgStrategy)
    metrics = _evaluate(
        strategy,
        {
            1: {"num-examples": 10, "partition-id": 0, "test-accuracy": 0.2},
            2: {"num-examples": 10, "partition-id": 1, "test-accuracy": 0.4, "test-reconstruction-unseen": 0.5},
            3: {"num-examples": 10, "partition-id": 2, "test-accuracy": float("nan")},
        },
    )
    assert [node for node, _ in strategy.rejections] == [3] and "NaN" in strategy.rejections[0][1]
    assert sorted(strategy.accepted_nodes) == [1, 2]
    assert metrics["test-accuracy"] == pytest.approx(0.3)


def test_train_replies_with_differing_metric_names_are_still_held_to_the_majority():
    """Flower's FedAvg aggregates train replies only when all name the same metrics: the odd one is rejected."""
    strategy = _strategy(FedAvgStrategy)
    sent = strategy.configure_train(1, to_record(W), ConfigRecord(), FakeGrid([1, 2, 3]))
    replies = [
        reply(m, W, {"num-examples": 5, "train-loss": 1.0, **({"odd": 1.0} if m.metadata.dst_node_id == 3 else {})})
        for m in sent
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None and [node for node, _ in strategy.rejections] == [3]


def test_each_metric_is_weighted_over_the_records_that_carry_it():
    records = [
        RecordDict({"metrics": MetricRecord({"num-examples": 1, "a": 1.0, "b": 5.0})}),
        RecordDict({"metrics": MetricRecord({"num-examples": 3, "a": 3.0})}),
        RecordDict({"metrics": MetricRecord({"num-examples": 2, "partition-id": 7, "counts": [1, 2]})}),
    ]
    out = aggregate_scalar_metrics(records, "num-examples")
    assert dict(out) == pytest.approx({"a": 2.5, "b": 5.0})


def test_rejections_of_both_phases_are_counted_and_warned():
    rounds = [
        {"rejected": [{"node": 3, "reason": "client error: x"}], "evaluate_rejected": []},
        {"rejected": [], "evaluate_rejected": [{"node": 3, "reason": "metric 'a' is NaN"}] * 2},
    ]
    assert rejection_totals(rounds) == {"rejected_total": 3, "rejected_evaluate_total": 2}
    warning = rejection_warning(rounds)
    assert warning["name"] == "rejected-replies"
    assert "3 replies rejected (1 train, 2 evaluate)" in warning["message"] and "NaN" in warning["message"]
    assert rejection_warning([{"rejected": [], "evaluate_rejected": []}]) is None


def test_a_run_counts_its_rejected_evaluate_replies_in_the_summary(tmp_path):
    """One node's evaluate reply carries a NaN metric, another an extra metric: 1 rejection, counted."""

    def tamper(node, msg):
        if "arrays" in msg.content.array_records or "metrics" not in msg.content.metric_records:
            return msg
        if node == 2:
            msg.content["metrics"]["test-accuracy"] = float("nan")
        if node == 3:
            msg.content["metrics"]["test-reconstruction-unseen"] = 0.25
        return msg

    config = full_run_config(
        **{
            "num-server-rounds": 1,
            "train.local-epochs": 1,
            "partition.kind": "iid",
            "dataset.size": 8,
            "log-dir": str(tmp_path),
            "experiment-name": "e",
        }
    )
    run_local(server_app, client_app, 3, config, tamper=tamper)
    (record,) = [json.loads(x) for x in (tmp_path / "e" / "rounds.jsonl").read_text().splitlines()]
    assert [r["node"] for r in record["evaluate_rejected"]] == [2]
    assert sorted(record["evaluate"]["clients"]) == ["0", "2"]  # nodes 1 and 3 (partitions 0 and 2)
    assert record["evaluate"]["aggregated"]["test-reconstruction-unseen"] == pytest.approx(0.25)
    summary = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert summary["rejected_total"] == 1 and summary["rejected_evaluate_total"] == 1
    assert [w["name"] for w in summary["warnings"]] == ["rejected-replies"]
