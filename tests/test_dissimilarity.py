"""Gradient dissimilarity Gamma: the pure math, the guard's per-round figure, the client's gradient."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flwr.app import ConfigRecord, Context, Message, RecordDict

from fedvq_app.aggregation.dissimilarity import (
    gradient_dissimilarity,
    gradient_variance,
    grouped_dissimilarity,
    model_fingerprint,
)
from fedvq_app.clients.base import NeuralClient
from fedvq_app.data.client_data import normalize_batch
from fedvq_app.models.state import shared_arrays
from fedvq_app.records import to_numpy, to_record
from fedvq_app.registry import load_settings
from fedvq_app.strategies.fedavg import FedAvgStrategy
from fedvq_app.strategies.fedprox import FedProxStrategy
from fedvq_app.strategies.guard import GRADIENT_AT_RECORD, GRADIENT_RECORD
from fedvq_app.strategies.scaffold import ScaffoldStrategy
from tests.conftest import reply

# ----------------------------------------------------------------------------- pure math


def test_orthogonal_unit_gradients_give_gamma_two():
    grads = [{"w": np.array([1.0, 0.0])}, {"w": np.array([0.0, 1.0])}]
    assert gradient_dissimilarity(grads, [1, 1]) == pytest.approx(2.0)
    assert gradient_variance(grads, [1, 1]) == pytest.approx(0.5)  # each is 0.5*(1,-1) from the mean


def test_identical_gradients_give_gamma_one_and_no_variance():
    grads = [{"w": np.array([3.0, -1.0]), "b": np.array([2.0])}] * 3
    assert gradient_dissimilarity(grads, [5, 1, 7]) == pytest.approx(1.0)
    assert gradient_variance(grads, [5, 1, 7]) == pytest.approx(0.0)


def test_data_shares_weight_the_clients():
    grads = [{"w": np.array([2.0])}, {"w": np.array([0.0])}]
    # p = (1/4, 3/4): sum p||g||^2 = 1, ||sum p g||^2 = 0.25
    assert gradient_dissimilarity(grads, [10, 30]) == pytest.approx(4.0)
    assert gradient_variance(grads, [10, 30]) == pytest.approx(0.25 * 1.5**2 + 0.75 * 0.5**2)


def test_opposite_gradients_have_infinite_gamma():
    grads = [{"w": np.array([1.0, 2.0])}, {"w": np.array([-1.0, -2.0])}]
    assert math.isinf(gradient_dissimilarity(grads, [1, 1]))


def test_dict_gradients_equal_the_flattened_vectors():
    rng = np.random.default_rng(0)
    grads = [{"a": rng.normal(size=(3, 4)), "b": rng.normal(size=5)} for _ in range(4)]
    weights = np.array([1.0, 2.0, 3.0, 4.0])
    flat = np.stack([np.concatenate([g["a"].ravel(), g["b"]]) for g in grads])
    p = weights / weights.sum()
    mean = p @ flat
    expected = (p * (flat**2).sum(1)).sum() / (mean**2).sum()
    assert gradient_dissimilarity(grads, weights) == pytest.approx(expected)
    assert gradient_variance(grads, weights) == pytest.approx((p * ((flat - mean) ** 2).sum(1)).sum())
    assert gradient_dissimilarity(grads, weights) >= 1.0


def test_gradients_of_different_layouts_are_refused():
    with pytest.raises(ValueError, match="same names and shapes"):
        gradient_dissimilarity([{"w": np.zeros(2)}, {"v": np.zeros(2)}], [1, 1])
    with pytest.raises(ValueError, match="same names and shapes"):
        gradient_dissimilarity([{"w": np.zeros(2)}, {"w": np.zeros(3)}], [1, 1])


def test_groups_follow_models_and_layouts_and_average_by_share():
    grads = {
        1: {"w": np.array([1.0, 0.0])},
        2: {"w": np.array([0.0, 1.0])},  # with node 1: Gamma 2
        3: {"w": np.array([5.0, 5.0])},
        4: {"w": np.array([5.0, 5.0])},  # with node 3: Gamma 1
        5: {"other": np.array([1.0])},  # a different layout: its own group (Gamma 1)
    }
    weights = {1: 1.0, 2: 1.0, 3: 1.0, 4: 1.0, 5: 2.0}
    models = {1: "a", 2: "a", 3: "b", 4: "b", 5: "a"}
    result = grouped_dissimilarity(grads, weights, models)
    assert sorted(g.nodes for g in result.groups) == [(1, 2), (3, 4), (5,)]
    assert result.gamma == pytest.approx((2 * 2.0 + 2 * 1.0 + 2 * 1.0) / 6)
    # without model information the first four share one group: all gradients are comparable
    assert len(grouped_dissimilarity(grads, weights).groups) == 2


def test_model_fingerprint_sees_values_not_dict_order():
    a = {"w": np.ones((2, 2), np.float32), "b": np.zeros(2, np.float32)}
    assert model_fingerprint(a) == model_fingerprint({"b": a["b"], "w": a["w"]})
    changed = {**a, "b": np.array([0.0, 1e-6], np.float32)}
    assert model_fingerprint(a) != model_fingerprint(changed)
    assert model_fingerprint(a) != model_fingerprint({**a, "w": a["w"].astype(np.float64)})


# ----------------------------------------------------------------------------- server side (ReplyGuard)
W = {"w": np.zeros((2, 2), np.float32), "b": np.zeros(2, np.float32)}


class FakeGrid:
    def __init__(self, nodes):
        self.nodes = list(nodes)

    def get_node_ids(self):
        return self.nodes


def _eval_metrics(n, pid):
    return {"num-examples": n, "partition-id": pid, "test-accuracy": 0.5}


def _gradient(values):
    return to_record({"w": np.asarray(values, np.float32)})


def _evaluate_round(strategy, gradients, examples, nodes=(1, 2, 3), models=None):
    """One evaluate round; ``models[i]`` is the digest node i reports (None = reports none)."""
    sent = strategy.configure_evaluate(1, to_record(W), ConfigRecord(), FakeGrid(nodes))
    sent = sorted(sent, key=lambda m: m.metadata.dst_node_id)  # Flower samples in random order
    models = models or [None] * len(sent)
    replies = []
    for msg, grad, n, model in zip(sent, gradients, examples, models, strict=True):
        extras = {GRADIENT_RECORD: grad} if grad is not None else {}
        if model is not None:
            extras[GRADIENT_AT_RECORD] = ConfigRecord({"model": model})
        replies.append(reply(msg, None, _eval_metrics(n, msg.metadata.dst_node_id), **extras))
    return strategy.aggregate_evaluate(1, replies)


@pytest.mark.parametrize("strategy_cls", [FedAvgStrategy, FedProxStrategy, ScaffoldStrategy])
def test_every_guarded_strategy_reports_gamma_of_the_evaluate_replies(strategy_cls):
    strategy = strategy_cls(min_available_nodes=1, min_evaluate_nodes=1)
    metrics = _evaluate_round(strategy, [_gradient([2.0]), _gradient([0.0]), _gradient([0.0])], [10, 15, 15])
    assert metrics["gradient-dissimilarity"] == pytest.approx(4.0)  # p = (1/4, 3/4 at zero)
    assert metrics["gradient-groups"] == 1
    assert metrics["test-accuracy"] == pytest.approx(0.5)
    report = strategy.final_report()["top_level"]["gradient_dissimilarity"]
    assert report["final"] == pytest.approx(4.0) and report["round"] == 1


def test_bad_gradients_and_rejected_replies_are_left_out():
    strategy = FedAvgStrategy(min_available_nodes=1, min_evaluate_nodes=1)
    nan = _gradient([np.nan])
    # node 2's gradient is NaN (ignored, its metrics still count); node 3 is rejected (0 examples)
    metrics = _evaluate_round(strategy, [_gradient([1.0]), nan, _gradient([-9.0])], [10, 10, 0])
    assert metrics["gradient-dissimilarity"] == pytest.approx(1.0)  # only node 1 remains
    assert [n for n, _ in strategy.rejections] == [3]


def test_no_gradients_leave_the_metrics_as_before():
    strategy = FedAvgStrategy(min_available_nodes=1, min_evaluate_nodes=1)
    metrics = _evaluate_round(strategy, [None, None], [10, 10], nodes=(1, 2))
    assert "gradient-dissimilarity" not in metrics
    assert strategy.final_report() == {}


def test_nodes_evaluated_at_different_models_are_compared_only_within_their_group():
    """Clustered FL: odd and even nodes report different model digests."""
    strategy = FedAvgStrategy(min_available_nodes=1, min_evaluate_nodes=1)
    grads = [_gradient([1.0, 0.0]), _gradient([7.0, 7.0]), _gradient([0.0, 1.0]), _gradient([1.0, 1.0])]
    digests = ["odd", "even", "odd", "even"]
    metrics = _evaluate_round(strategy, grads, [1, 1, 1, 1], nodes=(1, 2, 3, 4), models=digests)
    assert metrics["gradient-groups"] == 2
    # group {1, 3}: Gamma 2; group {2, 4}: two different but parallel gradients
    parallel = (0.5 * 98 + 0.5 * 2) / (4**2 * 2)
    assert metrics["gradient-dissimilarity"] == pytest.approx(0.5 * 2.0 + 0.5 * parallel)
    # the same replies without digests form one group
    metrics = _evaluate_round(strategy, grads, [1, 1, 1, 1], nodes=(1, 2, 3, 4))
    assert metrics["gradient-groups"] == 1


def test_gradients_with_different_names_do_not_crash_the_round():
    strategy = FedAvgStrategy(min_available_nodes=1, min_evaluate_nodes=1)
    mixed = [_gradient([2.0]), to_record({"v": np.ones(3, np.float32)}), _gradient([2.0])]
    metrics = _evaluate_round(strategy, mixed, [1, 1, 1])
    assert metrics["gradient-groups"] == 2
    assert metrics["gradient-dissimilarity"] == pytest.approx(1.0)


# ----------------------------------------------------------------------------- client side (NeuralClient)
def test_client_sends_the_mean_local_loss_gradient_at_the_global_parameters(run_config):
    config = run_config(**{"metrics.gradient-dissimilarity": True, "metrics.gradient-batches": 1000})
    settings = load_settings(config)
    context = Context(
        run_id=1,
        node_id=1,
        node_config={"partition-id": 0, "num-partitions": 3},
        state=RecordDict(),
        run_config=config,
    )
    client = NeuralClient(settings, context)
    torch.manual_seed(7)
    model = client.spec.build_model(settings, client.info)  # not the seed-42 initial model
    msg = Message(
        content=RecordDict(
            {"arrays": shared_arrays(model, client.spec.is_shared), "config": ConfigRecord({"server-round": 3})}
        ),
        dst_node_id=1,
        message_type="evaluate",
    )
    answer = client.evaluate(msg).content
    sent = to_numpy(answer[GRADIENT_RECORD])
    assert answer[GRADIENT_AT_RECORD]["model"] == model_fingerprint(to_numpy(msg.content["arrays"]))
    model.zero_grad()
    F.cross_entropy(model(normalize_batch(client.data.train_x)), client.data.train_y).backward()
    expected = {n: p.grad.numpy() for n, p in model.named_parameters()}
    assert set(sent) == set(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(sent[name], value, rtol=1e-4, atol=1e-6)
    # off by default: the reply is unchanged
    plain = NeuralClient(load_settings(run_config()), context).evaluate(msg)
    assert GRADIENT_RECORD not in plain.content
