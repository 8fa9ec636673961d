"""CFLStrategy fed with fake replies: identity by partition id, splits, routing, state."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from fedvq_app.aggregation.clustering import SplitRule
from fedvq_app.records import to_numpy, to_record
from fedvq_app.strategies.cfl import CFLStrategy
from tests.conftest import reply

DIM = 30
RNG = np.random.default_rng(7)
UP, DOWN = RNG.normal(size=DIM), RNG.normal(size=DIM)
DOWN = -UP + 0.3 * DOWN  # the rotated clients pull the other way


class FakeGrid:
    def __init__(self, nodes):
        self.nodes = list(nodes)

    def get_node_ids(self):
        return self.nodes


def _strategy(warmup=1, eps1=1.0, eps2=2.0, **kwargs):
    return CFLStrategy(
        rule=SplitRule(eps1=eps1, eps2=eps2, min_cluster_size=2, warmup_rounds=warmup),
        min_available_nodes=1,
        min_train_nodes=1,
        min_evaluate_nodes=1,
        rotation_active=True,
        **kwargs,
    )


# node id -> partition id: deliberately neither equal nor in the same order
PARTITION = {11: 4, 12: 0, 13: 7, 14: 2, 15: 9, 16: 5, 17: 1, 18: 8, 19: 3, 20: 6}
ROTATED = {p: int(p >= 5) for p in range(10)}
START = {"w": np.zeros(DIM, np.float32)}


def _train(strategy, rnd, nodes, direction_of, scale=1.0, arrays=START):
    """One round: configure, every node in ``nodes`` replies sent + its direction."""
    sent = list(strategy.configure_train(rnd, to_record(arrays), ConfigRecord(), FakeGrid(nodes)))
    replies = []
    for msg in sent:
        node = msg.metadata.dst_node_id
        pid = PARTITION[node]
        start = to_numpy(msg.content["arrays"])["w"]
        noise = 0.05 * np.random.default_rng(rnd * 100 + pid).normal(size=DIM)
        new = (start + scale * (direction_of(pid) + noise)).astype(np.float32)
        metrics = {"num-examples": 10 + pid, "partition-id": pid, "rotated": ROTATED[pid], "train-loss": 0.5}
        replies.append(reply(msg, {"w": new}, metrics))
    result = strategy.aggregate_train(rnd, replies)
    return sent, result


def _rotation(pid):
    return DOWN if ROTATED[pid] else UP


def test_first_round_everyone_trains_the_root_model_and_no_split_before_warmup():
    strategy = _strategy(warmup=3)
    sent, (arrays, metrics) = _train(strategy, 1, PARTITION, _rotation)
    assert all(np.array_equal(to_numpy(m.content["arrays"])["w"], START["w"]) for m in sent)
    assert strategy.clusters() == {0: list(range(10))}
    report = strategy.round_report()
    assert not report["split"]
    assert "warm-up" in report["cluster_stats"][0]["reason"]
    assert metrics["train-loss"] == pytest.approx(0.5)
    # uniform mean of the ten updates (noise included) was added to the root model
    assert arrays is not None and np.linalg.norm(to_numpy(arrays)["w"]) < 0.5 * np.linalg.norm(UP)


def test_split_separates_directions_by_partition_id_and_routes_models():
    strategy = _strategy()
    _train(strategy, 1, PARTITION, _rotation)
    report = strategy.round_report()
    stats = report["cluster_stats"][0]
    assert report["split"] and stats["split"]
    assert stats["mean_norm"] < 1.0 < 2.0 < stats["max_norm"]
    assert stats["participants"] == list(range(10))
    sim = np.array(stats["similarity"])
    assert sim[0, 1] > 0.9 and sim[0, 9] < -0.5
    assert strategy.clusters() == {1: [0, 1, 2, 3, 4], 2: [5, 6, 7, 8, 9]}
    assert [h["round"] for h in strategy.history] == [1]
    assert strategy.purity() == 1.0
    # each child = pre-split model + mean update of its own half
    assert np.dot(strategy.models[1]["w"], UP) > 0 and np.dot(strategy.models[2]["w"], UP) < 0
    np.testing.assert_array_equal(strategy.pre_split_models[0]["w"], START["w"])
    # every node is now routed to its own half, in train and in evaluate
    routed = {n: strategy.cluster_of_node(n) for n in PARTITION}
    assert routed == {n: 2 if ROTATED[p] else 1 for n, p in PARTITION.items()}
    evaluated = list(strategy.configure_evaluate(2, to_record(START), ConfigRecord(), FakeGrid(PARTITION)))
    for msg in evaluated:
        cid = strategy.cluster_of_node(msg.metadata.dst_node_id)
        np.testing.assert_array_equal(to_numpy(msg.content["arrays"])["w"], strategy.models[cid]["w"])


def test_models_sent_after_split_differ_per_cluster():
    strategy = _strategy()
    _train(strategy, 1, PARTITION, _rotation)
    sent = list(strategy.configure_train(2, to_record(START), ConfigRecord(), FakeGrid(PARTITION)))
    by_node = {m.metadata.dst_node_id: to_numpy(m.content["arrays"])["w"] for m in sent}
    np.testing.assert_array_equal(by_node[12], strategy.models[1]["w"])  # partition 0, upright
    np.testing.assert_array_equal(by_node[15], strategy.models[2]["w"])  # partition 9, rotated
    assert not np.allclose(by_node[12], by_node[15])


def test_no_split_when_members_agree():
    strategy = _strategy()
    _train(strategy, 1, PARTITION, lambda pid: 0.1 * UP / np.linalg.norm(UP))
    report = strategy.round_report()
    assert not report["split"]
    assert "not converged" in report["cluster_stats"][0]["reason"] or "agree" in report["cluster_stats"][0]["reason"]
    assert strategy.clusters() == {0: list(range(10))}


def test_nested_split_keeps_partition_ids():
    """Second split inside a child must pick that child's clients (FL-bench issue #20)."""
    third = np.random.default_rng(3).normal(size=DIM)
    up_a, up_b = UP + 1.2 * third, UP - 1.2 * third  # upright clients split again into odd/even ids

    def direction(pid):
        if ROTATED[pid]:
            return 0.01 * DOWN  # the rotated cluster has converged: it must not split
        return up_a if pid % 2 else up_b

    strategy = _strategy()
    _train(strategy, 1, PARTITION, _rotation)
    assert strategy.clusters() == {1: [0, 1, 2, 3, 4], 2: [5, 6, 7, 8, 9]}
    # cluster 1's mean (UP) is large relative to eps1 with these updates; a wide eps1 lets it split
    strategy.rule = SplitRule(eps1=100.0, eps2=2.0, min_cluster_size=2, warmup_rounds=1)
    _train(strategy, 2, PARTITION, direction, scale=1.0)
    clusters = strategy.clusters()
    assert [0, 2, 4] in clusters.values() and [1, 3] in clusters.values()
    assert strategy.history[-1]["parent"] == 1
    assert sorted(p for g in strategy.history[-1]["members"] for p in g) == [0, 1, 2, 3, 4]


def test_absent_members_keep_membership_and_follow_the_larger_half():
    strategy = _strategy(warmup=2, eps1=3.0)  # 5 vs 3 opposite updates leave a mean of ~UP / 4
    _train(strategy, 1, PARTITION, _rotation)  # warm-up: everybody joins the root cluster
    present = [n for n in PARTITION if PARTITION[n] not in (3, 8)]
    _, (arrays, _) = _train(strategy, 2, present, lambda pid: DOWN if pid in (5, 6, 7) else UP)
    halves = strategy.history[0]["members"]
    assert strategy.history[0]["absent"] == [3, 8]
    # participants: upright {0,1,2,4,9} (5) vs rotated {5,6,7} (3): absent 3 and 8 follow the five
    assert halves == [[0, 1, 2, 3, 4, 8, 9], [5, 6, 7]]
    # a node that misses a later round keeps its cluster
    before = dict(strategy.membership)
    _train(strategy, 3, [n for n in PARTITION if PARTITION[n] != 0], lambda pid: 0.01 * UP)
    assert strategy.membership == before


def test_unknown_node_gets_the_largest_cluster_and_joins_it():
    strategy = _strategy(eps1=3.0)
    nodes = [n for n in PARTITION if PARTITION[n] not in (8,)]
    _train(strategy, 1, nodes, lambda pid: DOWN if pid in (5, 6, 7) else UP)
    assert strategy.clusters() == {1: [0, 1, 2, 3, 4, 9], 2: [5, 6, 7]}
    sent = list(strategy.configure_train(2, to_record(START), ConfigRecord(), FakeGrid(PARTITION)))
    newcomer = next(m for m in sent if m.metadata.dst_node_id == 18)
    np.testing.assert_array_equal(to_numpy(newcomer.content["arrays"])["w"], strategy.models[1]["w"])
    _train(strategy, 2, PARTITION, lambda pid: 0.01 * UP)
    assert strategy.membership[8] == 1


def test_reply_without_partition_id_is_rejected_without_state_change():
    strategy = _strategy()
    sent = list(strategy.configure_train(1, to_record(START), ConfigRecord(), FakeGrid([11, 12])))
    bad = reply(sent[0], {"w": np.ones(DIM, np.float32)}, {"num-examples": 5, "train-loss": 0.1})
    assert strategy.aggregate_train(1, [bad]) == (None, None)
    assert strategy.rejections and "partition-id" in strategy.rejections[0][1]
    assert strategy.membership == {}
    np.testing.assert_array_equal(strategy.models[0]["w"], START["w"])


def test_weighted_mean_uses_num_examples():
    strategy = _strategy(warmup=99, weighting="num-examples")
    sent = list(strategy.configure_train(1, to_record(START), ConfigRecord(), FakeGrid([11, 12])))
    replies = [
        reply(sent[0], {"w": np.full(DIM, 4.0, np.float32)}, {"num-examples": 30, "partition-id": 4}),
        reply(sent[1], {"w": np.full(DIM, 0.0, np.float32)}, {"num-examples": 10, "partition-id": 0}),
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(to_numpy(arrays)["w"], np.full(DIM, 3.0))


def test_state_dict_round_trip_resumes_identically():
    strategy = _strategy()
    _train(strategy, 1, PARTITION, _rotation)
    _train(strategy, 2, PARTITION, _rotation)
    state = strategy.state_dict()
    json.dumps(state["meta"])  # the metadata part is plain JSON
    restored = _strategy()
    restored.load_state_dict(state)
    assert restored.clusters() == strategy.clusters()
    assert restored.history == strategy.history
    assert restored.next_cluster_id == strategy.next_cluster_id
    for cid in strategy.models:
        np.testing.assert_array_equal(restored.models[cid]["w"], strategy.models[cid]["w"])
    np.testing.assert_array_equal(restored.pre_split_models[0]["w"], strategy.pre_split_models[0]["w"])
    _, (a, _) = _train(strategy, 3, PARTITION, _rotation)
    _, (b, _) = _train(restored, 3, PARTITION, _rotation)
    np.testing.assert_array_equal(to_numpy(a)["w"], to_numpy(b)["w"])
    assert restored.clusters() == strategy.clusters()


def test_reports_for_the_tracker():
    strategy = _strategy()
    _train(strategy, 1, PARTITION, _rotation)
    evaluate_reply = Message(
        content=RecordDict({"metrics": MetricRecord({"num-examples": 3, "partition-id": 2, "val-accuracy": 0.5})}),
        reply_to=next(iter(strategy.configure_evaluate(1, to_record(START), ConfigRecord(), FakeGrid([14])))),
    )
    strategy.aggregate_evaluate(1, [evaluate_reply])
    final = strategy.final_report()
    assert final["clusters"] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert final["split_rounds"] == [1]
    assert final["cluster_purity"] == 1.0
    labels = [label for label, _, _ in strategy.evaluation_models()]
    assert labels == ["FL model (before split)", "cluster 1", "cluster 2"]
    report = strategy.round_report()
    assert set(report["cluster_stats"][0]) >= {"mean_norm", "max_norm", "similarity", "split", "reason"}
    assert report["clusters"] == {1: [0, 1, 2, 3, 4], 2: [5, 6, 7, 8, 9]}


def test_evaluate_replies_without_a_usable_partition_id_are_rejected_and_ignored_for_routing():
    strategy = _strategy()
    sent = list(strategy.configure_evaluate(1, to_record(START), ConfigRecord(), FakeGrid([11, 12, 13, 14])))
    to = {m.metadata.dst_node_id: m for m in sent}  # the strategy samples nodes in random order
    metrics = {"num-examples": 3, "val-accuracy": 0.5, "rotated": 1}
    replies = [
        reply(to[11], None, {**metrics, "partition-id": [1, 2]}),  # a list, not an id
        reply(to[12], None, {**metrics, "partition-id": 2.5}),
        reply(to[13], None, {**metrics, "partition-id": 7}),
        reply(to[14], None, metrics),  # no partition-id at all
    ]
    aggregated = strategy.aggregate_evaluate(1, replies)
    assert strategy.node_partition == {13: 7}
    assert strategy.groups == {7: 1}
    assert strategy.accepted_nodes == [13]
    reasons = dict(strategy.rejections)
    assert sorted(reasons) == [11, 12, 14] and all("partition-id" in r for r in reasons.values())
    assert aggregated is not None and aggregated["val-accuracy"] == pytest.approx(0.5)
    # the rejected nodes are still unknown: they are sent the largest cluster's model
    assert strategy.cluster_of_node(11) == strategy.default_cluster()


@pytest.mark.parametrize("scale", [0.01, 1.0, 100.0])
def test_relative_rule_splits_the_same_whatever_the_update_scale(scale):
    """The reference is the largest mean client update norm seen (here round 1's); a later round with a
    converged mean and a member pulling away splits at any scale of the updates; it survives a resume."""
    strategy = CFLStrategy(
        rule=SplitRule(eps1=0.5, eps2=0.4, min_cluster_size=2, warmup_rounds=2, scale="relative"),
        min_available_nodes=1,
        min_train_nodes=1,
        min_evaluate_nodes=1,
        rotation_active=True,
    )
    _train(strategy, 1, PARTITION, lambda pid: UP, scale=scale)  # everyone agrees: the run's unit
    expected = float(
        np.mean(
            [np.linalg.norm(scale * (UP + 0.05 * np.random.default_rng(100 + p).normal(size=DIM))) for p in range(10)]
        )
    )
    assert strategy.reference == pytest.approx(expected, rel=1e-4)
    assert strategy.round_report()["reference_norm"] == strategy.reference
    restored = CFLStrategy(rule=strategy.rule, min_available_nodes=1, min_train_nodes=1, min_evaluate_nodes=1)
    restored.load_state_dict(strategy.state_dict())
    assert restored.reference == strategy.reference
    _train(strategy, 2, PARTITION, lambda pid: 0.5 * _rotation(pid), scale=scale)  # mean small, members 0.5 |UP|
    report = strategy.round_report()
    assert strategy.reference == pytest.approx(expected, rel=1e-4)  # round 2's smaller updates keep the peak
    assert report["split"] and strategy.purity() == 1.0
    assert report["eps1"] == pytest.approx(0.5 * strategy.reference)
    assert report["threshold_scale"] == "relative" and report["eps1_option"] == 0.5


def test_no_split_when_the_halves_do_not_pull_apart():
    """Label skew without a covariate shift: the mean update is small next to the members' (norm rule passes)
    but the updates share a direction, so the halves complete linkage cuts do not point apart (positive
    mean cross similarity): no split. Opposed groups (the rotation) split under the same rule."""
    rule = SplitRule(eps1=1.0, eps2=1.0, min_cluster_size=2, warmup_rounds=1, max_cross_similarity=0.0)
    rng = np.random.default_rng(3)
    own = {p: v / np.linalg.norm(v) for p, v in ((p, rng.normal(size=DIM)) for p in range(10))}
    common = 0.45 * UP / np.linalg.norm(UP)
    skewed = _strategy()
    skewed.rule = rule
    _train(skewed, 1, PARTITION, lambda pid: common + own[pid])
    stats = skewed.round_report()["cluster_stats"][0]
    assert stats["mean_norm"] < 1.0 < stats["max_norm"]  # the norm test alone would split
    assert not stats["split"] and stats["cross_similarity"] > 0 and "pull apart" in stats["reason"]
    assert skewed.clusters() == {0: list(range(10))}
    rotated = _strategy()
    rotated.rule = rule
    _train(rotated, 1, PARTITION, lambda pid: 0.3 * _rotation(pid))
    stats = rotated.round_report()["cluster_stats"][0]
    assert stats["split"] and stats["cross_similarity"] < 0 and rotated.purity() == 1.0
