"""FedLoGe's pure math: sparse simplex ETF, GLA-FR, head/medium/tail groups, personal test sets."""

from __future__ import annotations

import numpy as np
import pytest

from fedvq_app.aggregation.etf import (
    HEAD,
    MEDIUM,
    TAIL,
    class_hits,
    cosine_matrix,
    etf_statistics,
    frame_on_support,
    group_accuracy,
    mode_summary,
    personal_test_rows,
    proportional_counts,
    random_support,
    realign_global,
    realign_local,
    reference_sse_c,
    shot_groups,
    simplex_etf,
    sparse_etf,
    sparsify_rows,
)


def test_simplex_etf_has_unit_rows_and_equal_cosines():
    etf = simplex_etf(32, 10, np.random.default_rng(0))
    assert etf.shape == (10, 32)
    np.testing.assert_allclose(np.linalg.norm(etf, axis=1), 1.0, atol=1e-12)
    cos = etf @ etf.T
    off = cos[~np.eye(10, dtype=bool)]
    np.testing.assert_allclose(off, -1 / 9, atol=1e-12)
    np.testing.assert_allclose(etf.sum(axis=0), 0.0, atol=1e-12)  # the class vectors are centred


def test_simplex_etf_needs_enough_feature_dimensions():
    with pytest.raises(ValueError, match="feature dimension >= 10"):
        simplex_etf(8, 10, np.random.default_rng(0))


def test_sparsify_keeps_the_largest_entries_of_every_row_and_its_norm():
    matrix = np.array([[4.0, -1.0, 3.0, 0.5, -2.0], [0.1, 0.2, -0.3, 0.4, 5.0]])
    sparse = sparsify_rows(matrix, 0.6)  # keep round(0.4 * 5) = 2 entries per row
    assert (sparse != 0).sum(axis=1).tolist() == [2, 2]
    assert np.flatnonzero(sparse[0]).tolist() == [0, 2] and np.flatnonzero(sparse[1]).tolist() == [3, 4]
    np.testing.assert_allclose(np.linalg.norm(sparse, axis=1), np.linalg.norm(matrix, axis=1))
    np.testing.assert_allclose(sparse[0, [0, 2]], np.array([4.0, 3.0]) * np.linalg.norm(matrix[0]) / 5.0)


def test_sparse_etf_is_reproducible_sparse_and_still_separates_classes():
    a, b = sparse_etf(128, 10, 0.6, seed=42), sparse_etf(128, 10, 0.6, seed=42)
    assert a.dtype == np.float32 and np.array_equal(a, b)
    assert not np.array_equal(a, sparse_etf(128, 10, 0.6, seed=43))
    stats = etf_statistics(a)
    assert stats["zero_share"] == pytest.approx(0.6, abs=0.01)
    assert stats["row_norm_min"] == pytest.approx(1.0, abs=1e-5) and stats["row_norm_max"] == pytest.approx(1.0, 1e-5)
    assert stats["max_cosine"] < 0.2  # sparsified, yet no two classes point the same way
    assert stats["ideal_cosine"] == pytest.approx(-1 / 9)


def test_global_realignment_sets_every_row_norm_to_tau_and_keeps_directions():
    weight = np.array([[3.0, 4.0], [0.0, 0.5], [0.0, 0.0]], dtype=np.float32)
    realigned = realign_global(weight, 1.7)
    np.testing.assert_allclose(realigned, [[1.02, 1.36], [0.0, 1.7], [0.0, 0.0]], rtol=1e-6)
    assert realigned.dtype == np.float32


def test_local_realignment_takes_global_rows_times_local_norms():
    global_w = np.array([[1.0, 2.0], [3.0, -1.0]])
    local_w = np.array([[0.0, 2.0], [3.0, 4.0]])  # row norms 2 and 5
    np.testing.assert_allclose(realign_local(global_w, local_w), [[2.0, 4.0], [15.0, -5.0]])
    with pytest.raises(ValueError, match="shapes differ"):
        realign_local(global_w, local_w[:1])


def test_shot_groups_follow_the_75_95_rule_of_the_reference():
    counts = [115, 72, 47, 26, 16, 11, 6, 3, 2, 1]  # cumulative: .38 .63 .78 | .87 .92 .96 | ...
    groups = shot_groups(counts)
    assert groups.tolist() == [HEAD] * 3 + [MEDIUM] * 3 + [TAIL] * 4
    shuffled = [3, 47, 115, 1, 26, 6, 72, 16, 2, 11]  # order of the classes does not matter
    assert shot_groups(shuffled).tolist() == [TAIL, HEAD, HEAD, TAIL, MEDIUM, TAIL, HEAD, MEDIUM, TAIL, MEDIUM]


def test_shot_groups_edges():
    assert shot_groups([3, 1]).tolist() == [HEAD, MEDIUM]  # 3/4 reaches exactly 75 %: class 0 closes the head
    assert shot_groups([5, 0, 5]).tolist() == [HEAD, TAIL, HEAD]  # unseen classes are tail
    assert shot_groups([1, 1, 1, 1], 0.5, 0.5).tolist() == [HEAD, HEAD, TAIL, TAIL]
    with pytest.raises(ValueError):
        shot_groups([0, 0])
    with pytest.raises(ValueError):
        shot_groups([1, 2], 0.9, 0.8)


def test_class_hits_and_group_accuracy_match_hand_counts():
    labels = np.array([0, 0, 1, 1, 1, 2])
    preds = np.array([0, 1, 1, 1, 0, 0])
    correct, total = class_hits(preds, labels, 4)
    assert correct.tolist() == [1, 2, 0, 0] and total.tolist() == [2, 3, 1, 0]
    acc = group_accuracy(correct, total, np.array([HEAD, HEAD, TAIL, TAIL]))
    assert acc == {"overall": 0.5, "head": 0.6, "medium": None, "tail": 0.0}


def test_mode_summary_averages_clients_and_skips_those_without_a_group():
    groups = np.array([HEAD, MEDIUM, TAIL])
    correct = [np.array([4, 1, 0]), np.array([2, 0, 1])]
    total = [np.array([4, 2, 0]), np.array([4, 0, 3])]
    summary = mode_summary(correct, total, groups)
    assert summary["overall"] == pytest.approx((5 / 6 + 3 / 7) / 2)
    assert summary["head"] == pytest.approx((1.0 + 0.5) / 2)
    assert summary["medium"] == pytest.approx(0.5)  # only client 0 has medium samples
    assert summary["tail"] == pytest.approx(1 / 3)  # only client 1 has tail samples
    assert summary["class_accuracy"] == pytest.approx([0.75, 0.5, 1 / 3]) and summary["class_total"] == [8, 2, 3]


def test_proportional_counts_follow_the_training_mix_and_use_all_of_the_scarcest_class():
    counts = proportional_counts([6, 3, 1, 0], [10, 10, 10, 10])  # size 10 / 0.6 = 16.7
    assert counts.tolist() == [10, 5, 2, 0]
    assert proportional_counts([1, 1], [3, 100]).tolist() == [3, 3]
    assert proportional_counts([0, 0], [3, 3]).tolist() == [0, 0]
    assert proportional_counts([5, 5], [40, 40]).tolist() == [40, 40]  # never more than the whole test set


def test_personal_test_rows_are_fixed_and_follow_the_training_mix():
    labels = np.repeat(np.arange(4), 20)
    rows = personal_test_rows(labels, [8, 4, 0, 2], seed=1, partition_id=3)
    assert np.bincount(labels[rows], minlength=4).tolist() == [20, 10, 0, 5]
    assert len(set(rows.tolist())) == len(rows)
    assert np.array_equal(rows, personal_test_rows(labels, [8, 4, 0, 2], seed=1, partition_id=3))
    assert not np.array_equal(rows, personal_test_rows(labels, [8, 4, 0, 2], seed=1, partition_id=4))


# ----------------------------------------------------------------------------
# SSE-C as the reference builds it
# ----------------------------------------------------------------------------
def _reference_loss_and_grad(w: np.ndarray, target_norm: float = 0.1):
    """The reference's SSE-C objective (rows = classes): sum (|w_c| - 0.1)^2 - mean_c acos(max_j cos_cj)."""
    norms = np.linalg.norm(w, axis=1)
    unit = w / norms[:, None]
    cos = unit @ unit.T
    np.fill_diagonal(cos, -1.0)
    nearest = cos.argmax(axis=1)
    x = np.clip(cos[np.arange(len(w)), nearest], -0.99999, 0.99999)
    loss = float(((norms - target_norm) ** 2).sum() - np.arccos(x).mean())
    grad = 2.0 * (norms - target_norm)[:, None] * unit
    slope = 1.0 / (len(w) * np.sqrt(1.0 - x**2))  # d(-mean acos x_c)/dx_c
    for c, m in enumerate(nearest):
        grad[c] += slope[c] * (unit[m] - x[c] * unit[c]) / norms[c]
        grad[m] += slope[c] * (unit[c] - x[c] * unit[m]) / norms[m]
    return loss, grad


def _reference_masked_adam(w: np.ndarray, lr: float = 1e-4, steps: int = 10_000) -> np.ndarray:
    """The reference's procedure: Adam (torch defaults) on that loss, gradients masked to the non-zeros."""
    mask = w != 0
    m, v = np.zeros_like(w), np.zeros_like(w)
    for t in range(1, steps + 1):
        g = _reference_loss_and_grad(w)[1] * mask
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        w = w - lr * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
    return w


def test_the_numpy_reference_objective_matches_autograd():
    import torch  # noqa: PLC0415

    w = np.random.default_rng(0).standard_normal((5, 12)) * 0.3
    t = torch.tensor(w, requires_grad=True)
    norms = t.norm(dim=1)
    cos = (t / norms[:, None]) @ (t / norms[:, None]).T
    cos = cos - torch.diag(torch.diagonal(cos)) - torch.eye(5)
    loss = ((norms - 0.1) ** 2).sum() - torch.acos(cos.max(dim=1)[0].clamp(-0.99999, 0.99999)).mean()
    loss.backward()
    ours, grad = _reference_loss_and_grad(w)
    assert ours == pytest.approx(float(loss))
    np.testing.assert_allclose(grad, t.grad.numpy(), rtol=1e-6, atol=1e-9)


def test_reference_sse_c_zeroes_random_positions_pulls_norms_to_0_1_and_keeps_the_etf_angles():
    d, c = 128, 10
    weights, bias = reference_sse_c(d, c, 0.6, seed=42)
    again, bias_again = reference_sse_c(d, c, 0.6, seed=42)
    assert np.array_equal(weights, again) and np.array_equal(bias, bias_again)  # every node builds the same
    assert not np.array_equal(weights, reference_sse_c(d, c, 0.6, seed=43)[0])
    assert (weights == 0).sum() == int(0.6 * d * c)  # over the whole matrix, as the reference
    assert len(set((weights == 0).sum(axis=1).tolist())) > 1  # random positions: rows differ in zeros
    np.testing.assert_allclose(np.linalg.norm(weights, axis=1), 0.1, rtol=1e-5)
    cos = cosine_matrix(weights)
    np.testing.assert_allclose(cos[~np.eye(c, dtype=bool)], -1 / (c - 1), atol=1e-4)
    assert np.abs(bias).max() <= 1 / np.sqrt(d) and np.abs(bias).min() > 0


def test_the_solved_frame_is_the_one_the_reference_adam_steps_reach():
    """Same start (ETF, same random zeros), the reference's 10,000 masked Adam steps vs frame_on_support."""
    d, c = 128, 10
    rng = np.random.default_rng(5)
    frame = simplex_etf(d, c, rng)
    support = random_support(frame.shape, 0.6, rng)
    adam = _reference_masked_adam(frame * support)
    ours = frame_on_support(frame, support, 0.1)
    assert np.array_equal(adam != 0, support) and np.array_equal(ours != 0, support)
    np.testing.assert_allclose(np.linalg.norm(adam, axis=1), 0.1, atol=2e-3)
    off = ~np.eye(c, dtype=bool)
    cos_adam, cos_ours = cosine_matrix(adam)[off], cosine_matrix(ours)[off]
    # the reference's own target: every class's nearest neighbour as far as the ETF allows
    assert cosine_matrix(adam)[off].max() == pytest.approx(-1 / (c - 1), abs=5e-3)
    np.testing.assert_allclose(cos_adam, cos_ours, atol=1e-2)
    # the top-magnitude frame (the project's first SSE-C) is not that frame
    top = sparse_etf(d, c, 0.6, seed=5)
    assert cosine_matrix(top)[off].max() > -1 / (c - 1) + 0.05
