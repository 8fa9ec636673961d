"""Strategies fed with fake replies, no Grid: aggregation numbers and the reply guard."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict

from fedvq_app.records import to_numpy, to_record
from fedvq_app.strategies.fedavg import FedAvgStrategy
from fedvq_app.strategies.fedprox import FedProxStrategy
from fedvq_app.strategies.metrics import aggregate_scalar_metrics
from fedvq_app.strategies.scaffold import CONTROL, CONTROL_DELTA, ScaffoldStrategy
from tests.conftest import instruction, reply

W = {"w": np.zeros((2, 2), np.float32), "b": np.zeros(2, np.float32)}


class FakeGrid:
    """Just enough Grid for ``configure_train``: a fixed set of connected nodes."""

    def __init__(self, nodes):
        self.nodes = list(nodes)

    def get_node_ids(self):
        return self.nodes


def _configured(strategy, nodes=(1, 2, 3), arrays=W):
    return list(strategy.configure_train(1, to_record(arrays), ConfigRecord(), FakeGrid(nodes)))


def _metrics(n, pid, **extra):
    return {"num-examples": n, "partition-id": pid, "train-loss": 1.0 / max(n, 1), **extra}


def test_fedavg_weights_by_examples():
    strategy = FedAvgStrategy(min_available_nodes=1)
    sent = _configured(strategy)
    replies = [
        reply(sent[0], {"w": np.full((2, 2), 1.0, np.float32), "b": np.ones(2, np.float32)}, _metrics(10, 0)),
        reply(sent[1], {"w": np.full((2, 2), 4.0, np.float32), "b": np.ones(2, np.float32)}, _metrics(30, 1)),
    ]
    arrays, metrics = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(to_numpy(arrays)["w"], np.full((2, 2), 3.25))
    assert to_numpy(arrays)["w"].dtype == np.float32
    assert metrics["train-loss"] == pytest.approx((10 * 0.1 + 30 / 30) / 40)
    assert "partition-id" not in metrics


BAD_REPLIES = {
    "nan": lambda m: reply(m, {"w": np.full((2, 2), np.nan, np.float32), "b": np.ones(2, np.float32)}, _metrics(5, 2)),
    "shape": lambda m: reply(m, {"w": np.ones((3, 2), np.float32), "b": np.ones(2, np.float32)}, _metrics(5, 2)),
    "dtype": lambda m: reply(m, {"w": np.ones((2, 2), np.float64), "b": np.ones(2, np.float32)}, _metrics(5, 2)),
    "missing-key": lambda m: reply(m, {"w": np.ones((2, 2), np.float32)}, _metrics(5, 2)),
    "extra-key": lambda m: reply(m, {**W, "enc": np.ones(1, np.float32)}, _metrics(5, 2)),
    "no-arrays": lambda m: reply(m, None, _metrics(5, 2)),
    "zero-examples": lambda m: reply(m, W, _metrics(0, 2)),
    "inf-metric": lambda m: reply(m, W, {**_metrics(5, 2), "train-loss": float("inf")}),
    "error": lambda m: Message(Error(code=1, reason="client crashed"), reply_to=m),
}


@pytest.mark.parametrize("kind", sorted(BAD_REPLIES))
@pytest.mark.parametrize("strategy_cls", [FedAvgStrategy, FedProxStrategy, ScaffoldStrategy])
def test_malformed_reply_is_rejected_and_the_rest_aggregated(strategy_cls, kind):
    strategy = strategy_cls(min_available_nodes=1)
    sent = _configured(strategy)
    good = {"w": np.full((2, 2), 2.0, np.float32), "b": np.ones(2, np.float32)}
    extras = (
        {CONTROL_DELTA: to_record({k: np.zeros_like(v) for k, v in W.items()})}
        if strategy_cls is ScaffoldStrategy
        else {}
    )
    replies = [reply(sent[0], good, _metrics(10, 0), **extras), BAD_REPLIES[kind](sent[2])]
    arrays, _ = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(to_numpy(arrays)["w"], good["w"])
    assert [node for node, _ in strategy.rejections] == [sent[2].metadata.dst_node_id]


def test_only_bad_replies_leave_the_model_unchanged():
    strategy = FedAvgStrategy(min_available_nodes=1)
    sent = _configured(strategy)
    assert strategy.aggregate_train(1, [BAD_REPLIES["nan"](sent[0])]) == (None, None)


def test_reply_from_a_node_that_was_not_asked_is_rejected():
    strategy = FedAvgStrategy(min_available_nodes=1, min_train_nodes=1)
    _configured(strategy, nodes=(1,))
    stranger = instruction(9, W)
    arrays, _ = strategy.aggregate_train(1, [reply(stranger, W, _metrics(5, 8))])
    assert arrays is None and "not sent" in strategy.rejections[0][1]


def test_fedprox_sends_mu_to_clients():
    strategy = FedProxStrategy(proximal_mu=0.3, min_available_nodes=1)
    sent = _configured(strategy)
    assert sent[0].content["config"]["proximal-mu"] == 0.3


def test_scaffold_updates_model_and_control_variate():
    strategy = ScaffoldStrategy(server_lr=0.5, min_available_nodes=1)
    sent = _configured(strategy, nodes=(1, 2, 3, 4))
    assert np.all(to_numpy(sent[0].content[CONTROL])["w"] == 0)
    ones = {k: np.ones_like(v) for k, v in W.items()}
    dc = {CONTROL_DELTA: to_record({k: np.full_like(v, 2.0) for k, v in W.items()})}
    replies = [reply(sent[0], ones, _metrics(10, 0), **dc), reply(sent[1], ones, _metrics(10, 1), **dc)]
    arrays, _ = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(to_numpy(arrays)["w"], 0.5)  # x + 0.5 * (1 - x)
    np.testing.assert_allclose(strategy.control["w"], 2.0 * 2 / 4)  # |S|/N * mean dc
    restored = ScaffoldStrategy()
    restored.load_state_dict(strategy.state_dict())
    np.testing.assert_allclose(restored.control["b"], strategy.control["b"])


def test_scaffold_rejects_a_reply_without_control_delta():
    strategy = ScaffoldStrategy(min_available_nodes=1)
    sent = _configured(strategy)
    arrays, _ = strategy.aggregate_train(1, [reply(sent[0], W, _metrics(3, 0))])
    assert arrays is None and "scaffold-dc" in strategy.rejections[0][1]


def test_evaluate_metrics_average_scalars_and_skip_per_client_values():
    records = [
        RecordDict({"m": MetricRecord({"num-examples": 1, "partition-id": 0, "acc": 0.5, "cls": [1.0, 0.0]})}),
        RecordDict({"m": MetricRecord({"num-examples": 3, "partition-id": 1, "acc": 0.9, "cls": [0.0, 1.0]})}),
    ]
    merged = aggregate_scalar_metrics(records, "num-examples")
    assert dict(merged) == {"acc": pytest.approx(0.8)}


def test_empty_array_record_is_a_valid_record():
    assert len(ArrayRecord()) == 0
