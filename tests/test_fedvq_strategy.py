"""FedVQ's strategy fed with fake replies (no Grid): codebook aggregation, screening, reports, state."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import ConfigRecord

from fedvq_app.aggregation.codebook import AGGREGATORS, CodebookParams, aggregate_codebook
from fedvq_app.models.vq import CODEBOOK_KEY
from fedvq_app.records import to_numpy, to_record
from fedvq_app.strategies.fedvq import USAGE_RECORD, FedVQStrategy
from tests.conftest import reply

K, D = 6, 4
RNG = np.random.default_rng(0)
GLOBAL = {
    CODEBOOK_KEY: RNG.normal(size=(K, D)).astype(np.float32),
    "vq.proj.weight": np.zeros((K, D, 1, 1), np.float32),
    "classifier.weight": np.zeros((3, D), np.float32),
}


class FakeGrid:
    def __init__(self, nodes):
        self.nodes = list(nodes)

    def get_node_ids(self):
        return self.nodes


def _strategy(aggregation="usage-kmeans", align="hungarian", **kwargs) -> FedVQStrategy:
    return FedVQStrategy(
        aggregation=aggregation, align=align, codebook_shape=(K, D), seed=7, min_available_nodes=1, **kwargs
    )


def _sent(strategy, nodes=(1, 2, 3)):
    config = ConfigRecord()
    return list(strategy.configure_train(1, to_record(GLOBAL), config, FakeGrid(nodes)))


def _client_arrays(shift: float, codebook=None) -> dict[str, np.ndarray]:
    book = GLOBAL[CODEBOOK_KEY] + shift if codebook is None else codebook
    return {
        CODEBOOK_KEY: np.asarray(book, dtype=np.float32),
        "vq.proj.weight": np.full((K, D, 1, 1), shift, np.float32),
        "classifier.weight": np.full((3, D), shift, np.float32),
    }


def _usage(counts) -> dict:
    counts = np.asarray(counts)
    return {USAGE_RECORD: to_record({"counts": counts.astype(np.int64), "used": (counts > 0).astype(np.uint8)})}


def _reply(msg, shift, n, counts=None, codebook=None, pid=None):
    counts = np.arange(1, K + 1) if counts is None else counts
    metrics = {"num-examples": n, "partition-id": msg.metadata.dst_node_id - 1 if pid is None else pid}
    return reply(msg, _client_arrays(shift, codebook), metrics, **_usage(counts))


def _codebook(arrays) -> np.ndarray:
    return to_numpy(arrays)[CODEBOOK_KEY]


@pytest.mark.parametrize("aggregation", sorted(AGGREGATORS))
def test_the_codebook_goes_through_the_aggregator_and_the_rest_is_averaged(aggregation):
    strategy = _strategy(aggregation)
    sent = _sent(strategy)
    shifts, sizes = [0.1, -0.2, 0.3], [10, 30, 60]
    counts = [np.array([5, 0, 3, 9, 0, 1]), np.array([0, 4, 4, 4, 0, 8]), np.array([2, 2, 2, 2, 2, 2])]
    replies = [_reply(m, s, n, c) for m, s, n, c in zip(sent, shifts, sizes, counts, strict=True)]
    arrays, metrics = strategy.aggregate_train(1, replies)
    out = to_numpy(arrays)
    expected = aggregate_codebook(
        aggregation,
        [_client_arrays(s)[CODEBOOK_KEY] for s in shifts],
        sizes,
        counts,
        GLOBAL[CODEBOOK_KEY].astype(np.float64),
        np.random.default_rng([7, 1]),
        "hungarian",
        CodebookParams(),
    )
    np.testing.assert_allclose(out[CODEBOOK_KEY], expected.codebook.astype(np.float32), rtol=1e-6)
    assert out[CODEBOOK_KEY].dtype == np.float32
    weighted = sum(s * n for s, n in zip(shifts, sizes, strict=True)) / sum(sizes)
    np.testing.assert_allclose(out["classifier.weight"], weighted, rtol=1e-5)
    np.testing.assert_allclose(out["vq.proj.weight"], weighted, rtol=1e-5)
    report = strategy.round_report()
    assert report["aggregation"] == aggregation and report["aggregation_s"] >= 0
    assert report["inertia"] == pytest.approx(expected.inertia)
    assert report["usage_ratio"] == pytest.approx(1.0)  # every code is used by some client
    assert report["clients"][str(sent[0].metadata.dst_node_id - 1)] == {
        "share": pytest.approx(0.1),
        "used": 4,
        "codebook_size": K,
        "perplexity": pytest.approx(float(np.exp(-sum(p * np.log(p) for p in np.array([5, 3, 9, 1]) / 18)))),
    }
    assert "partition-id" not in metrics


def test_unused_codes_keep_their_index_with_usage_kmeans():
    strategy = _strategy("usage-kmeans")
    sent = _sent(strategy, nodes=(1, 2))
    only_code_0 = np.array([10, 0, 0, 0, 0, 0])
    replies = [_reply(sent[0], 0.5, 10, only_code_0), _reply(sent[1], -0.5, 10, only_code_0)]
    arrays, _ = strategy.aggregate_train(1, replies)
    book = _codebook(arrays)
    np.testing.assert_allclose(book[0], GLOBAL[CODEBOOK_KEY][0], atol=1e-6)  # mean of the two users of code 0
    np.testing.assert_allclose(book[1:], GLOBAL[CODEBOOK_KEY][1:], atol=1e-6)  # unused: index-wise mean


def _bad_replies(msg):
    nan_book = GLOBAL[CODEBOOK_KEY].copy()
    nan_book[0, 0] = np.nan
    return {
        "wrong-size-codebook": _reply(msg, 0.0, 5, codebook=np.zeros((K + 1, D))),
        "nan-codebook": _reply(msg, 0.0, 5, codebook=nan_book),
        "short-usage": _reply(msg, 0.0, 5, counts=np.ones(K - 1)),
        "negative-usage": _reply(msg, 0.0, 5, counts=-np.ones(K)),
        "no-usage": reply(msg, _client_arrays(0.0), {"num-examples": 5, "partition-id": 9}),
    }


@pytest.mark.parametrize("kind", ["wrong-size-codebook", "nan-codebook", "short-usage", "negative-usage", "no-usage"])
def test_a_bad_reply_is_rejected_without_touching_the_state(kind):
    strategy = _strategy("kmeans")
    sent = _sent(strategy)
    good = [_reply(sent[0], 0.1, 10), _reply(sent[1], 0.2, 10)]
    reference = _strategy("kmeans")
    ref_sent = _sent(reference)
    expected, _ = reference.aggregate_train(1, [_reply(ref_sent[0], 0.1, 10), _reply(ref_sent[1], 0.2, 10)])
    arrays, _ = strategy.aggregate_train(1, [*good, _bad_replies(sent[2])[kind]])
    assert [node for node, _ in strategy.rejections] == [sent[2].metadata.dst_node_id]
    np.testing.assert_allclose(_codebook(arrays), _codebook(expected))
    assert sorted(strategy.round_report()["clients"]) == sorted(str(m.metadata.dst_node_id - 1) for m in sent[:2])
    assert len(strategy.history) == 1


def test_method_problem_names_the_wrong_codebook_size():
    strategy = _strategy()
    sent = _sent(strategy)
    problem = strategy.method_problem(_reply(sent[0], 0.0, 5, codebook=np.zeros((K + 2, D))))
    assert problem == f"codebook has shape ({K + 2}, {D}), expected ({K}, {D})"
    assert "counts" in strategy.method_problem(_reply(sent[0], 0.0, 5, counts=np.ones(K + 1)))


def test_only_bad_replies_leave_everything_unchanged():
    strategy = _strategy()
    sent = _sent(strategy)
    assert strategy.aggregate_train(1, [_bad_replies(sent[0])["nan-codebook"]]) == (None, None)
    assert strategy.history == [] and strategy.round_report()["skipped"] is True


def test_the_experiment_name_reaches_the_clients():
    strategy = _strategy(experiment="exp-1")
    assert all(m.content["config"]["experiment"] == "exp-1" for m in _sent(strategy))


def _eval_reply(msg, acc):
    return reply(msg, None, {"num-examples": 5, "partition-id": msg.metadata.dst_node_id - 1, "test-accuracy": acc})


def test_best_round_per_client_final_report_and_state_round_trip():
    strategy = _strategy()
    for rnd, accs in ((1, {1: 0.5, 2: 0.2}), (2, {1: 0.4, 2: 0.6})):  # node -> test accuracy
        sent = _sent(strategy, nodes=(1, 2))
        strategy.aggregate_train(rnd, [_reply(sent[0], 0.1, 10), _reply(sent[1], 0.2, 30)])
        evals = list(strategy.configure_evaluate(rnd, to_record(GLOBAL), ConfigRecord(), FakeGrid((1, 2))))
        strategy.aggregate_evaluate(rnd, [_eval_reply(m, accs[m.metadata.dst_node_id]) for m in evals])
    report = strategy.final_report()
    assert report["best_round_per_client"] == {"0": {"round": 1, "accuracy": 0.5}, "1": {"round": 2, "accuracy": 0.6}}
    assert [h["round"] for h in strategy.history] == [1, 2]
    assert report["aggregation_s_total"] == pytest.approx(sum(h["aggregation_s"] for h in strategy.history))
    assert sorted(report["usage"]) == ["0", "1"] and len(report["usage"]["0"]) == K
    assert len(report["pca"]["global"]) == K and len(report["pca"]["clients"]["1"]) == K
    json.dumps(report)

    state = strategy.state_dict()
    plain = {k: v for k, v in state.items() if not isinstance(v, np.ndarray)}
    restored = _strategy()
    restored.load_state_dict({**json.loads(json.dumps(plain)), "last_global": state["last_global"]})
    assert restored.history == strategy.history
    assert restored.best_rounds == strategy.best_rounds
    np.testing.assert_array_equal(restored.last_global, strategy.last_global)
