"""CFL's pure server math: norms, similarities, bipartition by id, split rule, purity."""

from __future__ import annotations

import numpy as np
import pytest

from fedvq_app.aggregation.clustering import (
    SplitRule,
    apply_update,
    bipartition,
    cluster_purity,
    flatten,
    mean_update,
    similarity_matrix,
    update_norms,
    weight_update,
)


def test_update_norms_are_norm_of_mean_and_largest_norm():
    updates = np.array([[3.0, 4.0], [-3.0, -4.0], [1.0, 0.0]])
    mean_norm, max_norm = update_norms(updates)
    assert mean_norm == pytest.approx(1.0 / 3.0)
    assert max_norm == pytest.approx(5.0)


def test_opposite_updates_have_small_mean_and_large_max():
    """The CFL signal: a jointly converged cluster whose members pull in opposite directions."""
    rng = np.random.default_rng(0)
    direction = rng.normal(size=50)
    updates = np.stack([direction, -direction, direction * 1.1, -direction * 0.9])
    mean_norm, max_norm = update_norms(updates)
    assert mean_norm < 0.1 * max_norm


def test_similarity_matrix_is_cosine():
    s = similarity_matrix(np.array([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]]))
    np.testing.assert_allclose(s, [[1, 0, -1], [0, 1, 0], [-1, 0, 1]], atol=1e-12)


def _two_directions(ids_a, ids_b, dim=40, seed=0):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=dim), rng.normal(size=dim)
    rows = {i: a + 0.2 * rng.normal(size=dim) for i in ids_a} | {i: b + 0.2 * rng.normal(size=dim) for i in ids_b}
    return rows


def test_bipartition_returns_ids_not_positions():
    rows = _two_directions([3, 8, 11], [5, 20])
    ids = [3, 5, 8, 11, 20]
    halves = bipartition(similarity_matrix(np.stack([rows[i] for i in ids])), ids)
    assert halves == ([3, 8, 11], [5, 20])


def test_nested_bipartition_keeps_ids():
    """FL-bench issue #20: a second split inside a child must name the child's clients."""
    rng = np.random.default_rng(1)
    base = {g: rng.normal(size=60) for g in "abc"}
    groups = {0: "a", 1: "b", 2: "a", 3: "c", 4: "b", 5: "c", 6: "a", 7: "c"}
    # a and b are near-opposite to c, a and b differ from each other less
    base["b"] = base["a"] + 0.6 * rng.normal(size=60)
    base["c"] = -base["a"] + 0.2 * rng.normal(size=60)
    rows = {i: base[g] + 0.05 * rng.normal(size=60) for i, g in groups.items()}
    ids = sorted(rows)
    first = bipartition(similarity_matrix(np.stack([rows[i] for i in ids])), ids)
    assert first == ([0, 1, 2, 4, 6], [3, 5, 7])
    child = first[0]
    second = bipartition(similarity_matrix(np.stack([rows[i] for i in child])), child)
    assert second == ([0, 2, 6], [1, 4])


def test_bipartition_needs_two_clients():
    with pytest.raises(ValueError):
        bipartition(np.ones((1, 1)), [4])


def test_update_mean_and_apply_keep_dtypes():
    old = {"w": np.zeros(3, np.float32), "steps": np.array([10], np.int64)}
    new_a = {"w": np.array([1.0, 2.0, 3.0], np.float32), "steps": np.array([14], np.int64)}
    new_b = {"w": np.array([3.0, 2.0, 1.0], np.float32), "steps": np.array([12], np.int64)}
    deltas = [weight_update(new_a, old), weight_update(new_b, old)]
    np.testing.assert_allclose(mean_update(deltas)["w"], [2.0, 2.0, 2.0])
    np.testing.assert_allclose(mean_update(deltas, weights=[3, 1])["w"], [1.5, 2.0, 2.5])
    moved = apply_update(old, mean_update(deltas))
    assert moved["w"].dtype == np.float32 and moved["steps"].dtype == np.int64
    assert moved["steps"][0] == 13
    assert flatten(deltas[0], ["steps", "w"]).tolist() == [4.0, 1.0, 2.0, 3.0]


RULE = SplitRule(eps1=0.4, eps2=1.6, min_cluster_size=2, warmup_rounds=5)


@pytest.mark.parametrize(
    ("rnd", "mean", "max_", "size", "expected"),
    [
        (5, 0.3, 2.0, 4, True),
        (4, 0.3, 2.0, 4, False),  # warm-up
        (5, 0.4, 2.0, 4, False),  # mean not below eps1
        (5, 0.3, 1.6, 4, False),  # max not above eps2
        (5, 0.3, 2.0, 3, False),  # fewer than 2 x min-cluster-size
    ],
)
def test_split_rule(rnd, mean, max_, size, expected):
    decision, reason = RULE.decide(rnd, mean, max_, size)
    assert decision is expected
    assert reason


def test_children_must_keep_min_cluster_size():
    assert RULE.children_ok([[1, 2], [3, 4, 5]])
    assert not RULE.children_ok([[1], [2, 3, 4]])


def test_cluster_purity():
    rotated = {p: int(p >= 5) for p in range(10)}
    assert cluster_purity([[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]], rotated) == 1.0
    assert cluster_purity([list(range(10))], rotated) == 0.5
    assert cluster_purity([[0, 1, 2, 5], [3, 4, 6, 7, 8, 9]], rotated) == pytest.approx((3 + 4) / 10)
    assert cluster_purity([[0, 1]], {}) is None


RELATIVE = SplitRule(eps1=0.5, eps2=2.0, min_cluster_size=2, warmup_rounds=5, scale="relative")


@pytest.mark.parametrize(
    ("mean", "max_", "expected"),
    [
        (0.999, 4.001, True),  # just inside both thresholds (reference 2: eps1 -> 1.0, eps2 -> 4.0)
        (1.0, 4.001, False),  # mean exactly at eps1 x reference: not below
        (0.999, 4.0, False),  # max exactly at eps2 x reference: not above
        (1.001, 10.0, False),
    ],
)
def test_relative_split_rule_at_the_boundary(mean, max_, expected):
    decision, reason = RELATIVE.decide(5, mean, max_, 4, reference=2.0)
    assert decision is expected
    assert ("x reference 2.000" in reason) is not expected


@pytest.mark.parametrize("scale", [1e-3, 1.0, 37.0, 1e4])
def test_relative_split_rule_is_invariant_to_the_scale_of_the_updates(scale):
    """The same run with every update scaled (more local steps, another lr or dataset) decides the same;
    the absolute rule does not."""
    cases = [(0.8, 5.0), (1.2, 5.0), (0.8, 3.0)]
    expected = [True, False, False]
    assert [RELATIVE.decide(6, scale * a, scale * b, 10, reference=scale * 2.0)[0] for a, b in cases] == expected
    absolute = SplitRule(eps1=1.0, eps2=4.0, min_cluster_size=2, warmup_rounds=5)
    assert [absolute.decide(6, a, b, 10)[0] for a, b in cases] == expected
    if scale >= 37.0:  # digits-tuned constants never see a converged cluster at a larger update scale
        assert not any(absolute.decide(6, scale * a, scale * b, 10)[0] for a, b in cases)


@pytest.mark.parametrize("reference", [None, 0.0, float("nan")])
def test_relative_split_rule_without_a_reference_never_splits(reference):
    decision, reason = RELATIVE.decide(9, 0.0, 1e9, 10, reference=reference)
    assert not decision and "not converged" in reason


def test_threshold_scales_match_the_option_choices():
    from fedvq_app.aggregation.clustering import THRESHOLD_SCALES
    from fedvq_app.options import THRESHOLD_SCALES as OPTION_CHOICES

    assert THRESHOLD_SCALES == OPTION_CHOICES
    with pytest.raises(ValueError, match="scale must be one of"):
        SplitRule(eps1=0.4, eps2=1.4, min_cluster_size=2, warmup_rounds=5, scale="percent")


def test_cross_similarity_is_the_mean_between_halves_by_id():
    from fedvq_app.aggregation.clustering import cross_similarity

    ids = [7, 3, 5]
    sim = np.array([[1.0, 0.2, -0.4], [0.2, 1.0, -0.6], [-0.4, -0.6, 1.0]])
    assert cross_similarity(sim, ids, ([3, 7], [5])) == pytest.approx((-0.4 - 0.6) / 2)
    assert cross_similarity(sim, ids, ([5], [7])) == pytest.approx(-0.4)


@pytest.mark.parametrize(("cross", "bound", "apart"), [(-0.001, 0.0, True), (0.0, 0.0, False), (0.3, None, True)])
def test_halves_must_pull_apart_at_the_boundary(cross, bound, apart):
    rule = SplitRule(eps1=0.25, eps2=0.55, min_cluster_size=2, warmup_rounds=5, max_cross_similarity=bound)
    assert rule.halves_apart(cross) is apart
