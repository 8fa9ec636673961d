"""FedVQ's codebook aggregators and index alignment on synthetic codebooks (no Flower)."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from fedvq_app.aggregation.codebook import (
    AGGREGATORS,
    CodebookParams,
    aggregate_codebook,
    aggregate_kmeans,
    aggregate_mean,
    aggregate_usage_kmeans,
    aggregate_wasserstein,
    aggregate_weighted_kmeans,
    perplexity,
    quantization_error,
    used_codes,
)
from fedvq_app.aggregation.codebook_align import align_codebook, alignment_permutation, place_in_slots

K, D = 8, 5


def _true_centers(seed: int = 0, k: int = K, d: int = D, spread: float = 10.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(scale=spread, size=(k, d))


def _clients(true: np.ndarray, n: int = 5, noise: float = 0.05, seed: int = 1) -> list[np.ndarray]:
    """Each client holds every true center (same index) plus a little noise."""
    rng = np.random.default_rng(seed)
    return [true + noise * rng.normal(size=true.shape) for _ in range(n)]


def _index_error(codebook: np.ndarray, true: np.ndarray) -> float:
    return float(np.linalg.norm(codebook - true, axis=1).max())


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# ---------------------------------------------------------------------------- common contract
@pytest.mark.parametrize("name", sorted(AGGREGATORS))
@pytest.mark.parametrize("warm", [True, False])
def test_every_aggregator_takes_the_common_signature_and_returns_k_rows(name, warm):
    assert list(inspect.signature(AGGREGATORS[name]).parameters) == [
        "codebooks",
        "data_weights",
        "usage_counts",
        "previous",
        "rng",
        "params",
    ]
    true = _true_centers()
    books = _clients(true)
    usage = [np.arange(1, K + 1) for _ in books]
    result = AGGREGATORS[name](books, [10, 20, 30, 40, 50], usage, true if warm else None, _rng())
    assert result.codebook.shape == (K, D)
    assert np.isfinite(result.codebook).all()
    assert result.inertia == pytest.approx(quantization_error(np.vstack(books), result.codebook))
    assert result.stats["clients"] == 5 and result.stats["dropped_clients"] == 0


def test_usage_counts_may_be_absent():
    books = _clients(_true_centers())
    for name, aggregate in AGGREGATORS.items():
        assert aggregate(books, [1] * 5, None, None, _rng()).codebook.shape == (K, D), name


# ---------------------------------------------------------------------------- k-means
def test_kmeans_recovers_the_true_centers_cold_and_warm():
    true = _true_centers()
    rng = np.random.default_rng(3)
    # every client lists the centers in its own order: k-means must not care
    books = [b[rng.permutation(K)] for b in _clients(true, n=6)]
    cold = aggregate_kmeans(books, [1] * 6, None, None, _rng())
    aligned, _ = align_codebook(cold.codebook, true)
    assert _index_error(aligned, true) < 0.1
    warm = aggregate_kmeans(books, [1] * 6, None, true + 0.5, _rng())
    assert _index_error(warm.codebook, true) < 0.1  # warm start: center j stays at index j


def test_warm_start_reaches_the_inertia_of_ten_cold_restarts():
    true = _true_centers(k=32, d=16, spread=3.0)
    books = _clients(true, n=10, noise=0.3)
    cold = aggregate_kmeans(books, [1] * 10, None, None, _rng(), CodebookParams(n_init=10))
    warm = aggregate_kmeans(books, [1] * 10, None, true, _rng())
    assert warm.inertia <= cold.inertia * (1 + 1e-9)


def test_data_weights_pull_weighted_kmeans_towards_the_bigger_client():
    true = _true_centers()
    heavy, light = true + 0.5, true - 0.5
    towards_heavy = aggregate_weighted_kmeans([heavy, light], [9, 1], None, true, _rng()).codebook
    towards_light = aggregate_weighted_kmeans([heavy, light], [1, 9], None, true, _rng()).codebook
    np.testing.assert_allclose(towards_heavy, true + 0.4, atol=1e-9)
    np.testing.assert_allclose(towards_light, true - 0.4, atol=1e-9)
    # plain k-means ignores the data sizes
    plain = [aggregate_kmeans([heavy, light], w, None, true, _rng()).codebook for w in ([9, 1], [1, 9])]
    np.testing.assert_allclose(plain[0], plain[1])
    np.testing.assert_allclose(plain[0], true, atol=1e-9)


def test_mean_is_the_example_weighted_index_wise_average():
    a, b = np.zeros((K, D)), np.ones((K, D))
    result = aggregate_mean([a, b], [1, 3], None, None, _rng())
    np.testing.assert_allclose(result.codebook, np.full((K, D), 0.75))


def test_usage_counts_pull_usage_kmeans_towards_the_client_that_uses_a_code():
    true = _true_centers()
    a, b = true + 1.0, true - 1.0
    counts_a = np.full(K, 10)
    counts_b = np.full(K, 10)
    counts_a[0], counts_b[0] = 90, 10  # code 0: client a uses it 9x more often (per unit of data)
    result = aggregate_usage_kmeans([a, b], [1, 1], [counts_a, counts_b], true, _rng(), CodebookParams(0.0))
    freq_a, freq_b = counts_a[0] / counts_a.sum(), counts_b[0] / counts_b.sum()
    expected = (freq_a * a[0] + freq_b * b[0]) / (freq_a + freq_b)
    np.testing.assert_allclose(result.codebook[0], expected, atol=1e-9)
    assert np.linalg.norm(result.codebook[0] - a[0]) < np.linalg.norm(result.codebook[0] - b[0])


def test_usage_kmeans_clusters_only_used_codes_and_fills_free_slots_with_the_index_mean():
    true = _true_centers()
    a, b = true + 0.2, true - 0.2
    counts_a = np.zeros(K)
    counts_b = np.zeros(K)
    counts_a[[0, 1]] = [50, 50]
    counts_b[[1, 2]] = [30, 70]
    result = aggregate_usage_kmeans([a, b], [1, 1], [counts_a, counts_b], true, _rng())
    np.testing.assert_allclose(result.codebook[0], a[0])  # only a used code 0
    np.testing.assert_allclose(result.codebook[2], b[2])  # only b used code 2
    np.testing.assert_allclose(result.codebook[3:], true[3:], atol=1e-9)  # nobody: mean of a and b
    assert result.stats["usage_ratio"] == pytest.approx(3 / K)
    assert result.stats["used_points"] == 4


# ---------------------------------------------------------------------------- wasserstein
def test_barycenter_of_identical_clients_is_their_codebook():
    true = _true_centers()
    usage = [np.full(K, 5)] * 3
    result = aggregate_wasserstein([true] * 3, [1, 2, 3], usage, true + 0.3, _rng())
    np.testing.assert_allclose(result.codebook, true, atol=1e-6)


def test_barycenter_weights_follow_the_data_shares():
    true = _true_centers()
    a, b = true + 1.0, true - 1.0
    usage = [np.full(K, 5)] * 2
    result = aggregate_wasserstein([a, b], [3, 1], usage, true, _rng())
    np.testing.assert_allclose(result.codebook, true + 0.5, atol=1e-6)


# ---------------------------------------------------------------------------- alignment
def test_alignment_maps_a_permuted_codebook_back_to_the_identity_order():
    reference = _true_centers()
    perm = np.random.default_rng(5).permutation(K)
    shuffled = reference[perm] + 0.01
    inverse = alignment_permutation(shuffled, reference)
    np.testing.assert_array_equal(perm[inverse], np.arange(K))
    aligned, moved = align_codebook(shuffled, reference)
    np.testing.assert_allclose(aligned, reference + 0.01)
    assert moved == int((perm != np.arange(K)).sum())


def test_place_in_slots_puts_each_center_at_its_nearest_free_index():
    reference = _true_centers()
    fill = np.zeros((K, D))
    placed = place_in_slots(reference[[6, 2]] + 0.1, reference, fill)
    np.testing.assert_allclose(placed[[6, 2]], reference[[6, 2]] + 0.1)
    assert not placed[[0, 1, 3, 4, 5, 7]].any()


def test_cold_clustering_scrambles_indices_and_alignment_restores_them():
    true = _true_centers()
    books = _clients(true)
    cold = aggregate_codebook("kmeans", books, [1] * 5, None, true, _rng(), align="none")
    matched = aggregate_codebook("kmeans", books, [1] * 5, None, true, _rng(), align="hungarian")
    assert _index_error(cold.codebook, true) > 1.0
    assert _index_error(matched.codebook, true) < 0.1
    assert matched.stats["drift"] < 0.1 < cold.stats["drift"]


def test_hungarian_mode_undoes_a_permutation_the_aggregator_introduced(monkeypatch):
    import fedvq_app.aggregation.codebook as codebook_module

    true = _true_centers()
    perm = np.array([1, 0, 2, 3, 4, 5, 7, 6])

    def shuffling(codebooks, data_weights, usage_counts, previous, rng, params=None):
        return codebook_module.CodebookResult(np.asarray(codebooks[0])[perm], 0.0, {})

    monkeypatch.setattr(codebook_module, "AGGREGATORS", {"shuffling": shuffling})
    books = _clients(true)
    matched = aggregate_codebook("shuffling", books, [1] * 5, None, true, _rng(), align="hungarian")
    assert matched.stats["realigned_codes"] == 4
    np.testing.assert_allclose(matched.codebook, books[0])
    unmatched = aggregate_codebook("shuffling", books, [1] * 5, None, true, _rng(), align="warm-start")
    assert unmatched.stats["realigned_codes"] == 0
    np.testing.assert_allclose(unmatched.codebook, books[0][perm])


# ---------------------------------------------------------------------------- degenerate inputs
@pytest.mark.parametrize("name", sorted(AGGREGATORS))
@pytest.mark.parametrize("warm", [True, False])
def test_fewer_distinct_vectors_than_codes(name, warm):
    true = _true_centers()
    distinct = true[:3]
    books = [distinct[np.arange(K) % 3] for _ in range(4)]  # every client: 3 distinct rows, repeated
    result = AGGREGATORS[name](books, [1, 2, 3, 4], [np.ones(K)] * 4, true if warm else None, _rng())
    assert result.codebook.shape == (K, D) and np.isfinite(result.codebook).all()
    assert result.inertia == pytest.approx(0.0, abs=1e-6) or name == "wasserstein"
    if warm and name != "wasserstein":
        # each distinct vector sits in a slot of its own: its nearest previous code
        for row in distinct:
            assert np.isclose(result.codebook, row).all(axis=1).any()


def test_a_client_with_zero_used_codes_falls_back_to_all_its_codes():
    true = _true_centers()
    books = _clients(true, n=3)
    usage = [np.full(K, 10), np.zeros(K), np.full(K, 10)]
    result = aggregate_usage_kmeans(books, [1, 1, 1], usage, true, _rng())
    assert result.stats["fallback_clients"] == 1
    assert result.stats["used_points"] == 3 * K
    assert _index_error(result.codebook, true) < 0.1
    below = [np.full(K, 10), np.full(K, 10), np.full(K, 10)]
    strict = aggregate_usage_kmeans(books, [1, 1, 1], below, true, _rng(), CodebookParams(usage_threshold=0.5))
    assert strict.stats["fallback_clients"] == 3


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_a_client_with_nan_is_dropped_and_the_rest_aggregated(name):
    true = _true_centers()
    books = _clients(true, n=3)
    usage = [np.full(K, 10)] * 3
    poisoned = books[1].copy()
    poisoned[2, 1] = np.nan
    with_nan = AGGREGATORS[name]([books[0], poisoned, books[2]], [1, 5, 2], usage, true, _rng())
    without = AGGREGATORS[name]([books[0], books[2]], [1, 2], usage[:2], true, _rng())
    assert with_nan.stats["dropped_clients"] == 1
    np.testing.assert_allclose(with_nan.codebook, without.codebook)
    nan_usage = [usage[0], np.full(K, np.nan), usage[2]]
    assert AGGREGATORS[name](books, [1, 5, 2], nan_usage, true, _rng()).stats["dropped_clients"] == 1


def test_unusable_input_raises_a_clear_error():
    true = _true_centers()
    with pytest.raises(ValueError, match="finite"):
        aggregate_kmeans([np.full((K, D), np.nan)], [1], None, None, _rng())
    with pytest.raises(ValueError, match="same"):
        aggregate_mean([true, true[:4]], [1, 1], None, None, _rng())
    with pytest.raises(ValueError, match="no codebooks"):
        aggregate_mean([], [], None, None, _rng())


# ---------------------------------------------------------------------------- usage statistics
def test_usage_statistics():
    counts = np.array([50, 30, 19, 1, 0])
    np.testing.assert_array_equal(used_codes(counts, 0.02), [True, True, True, False, False])
    assert not used_codes(np.zeros(4), 0.01).any()
    assert perplexity(np.array([5, 5, 5, 5, 0])) == pytest.approx(4.0)
    assert perplexity(np.array([7, 0, 0])) == pytest.approx(1.0)


def test_distinct_rows_are_grouped_in_first_seen_order_with_summed_weights():
    from fedvq_app.aggregation.codebook import _distinct, _row_ids, count_distinct

    points = np.array([[3.0, 4.0], [1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [1.0, 2.0]])
    assert _row_ids(points).tolist() == [0, 1, 0, 2, 1]
    assert count_distinct(points) == 3 and count_distinct(np.zeros((0, 2))) == 0
    uniq, weights = _distinct(points, np.array([1.0, 2.0, 3.0, 4.0, 5.0]))
    np.testing.assert_array_equal(uniq, [[3.0, 4.0], [1.0, 2.0], [5.0, 6.0]])
    np.testing.assert_array_equal(weights, [4.0, 7.0, 4.0])


def test_matching_distances_equal_scipy_cdist():
    from scipy.spatial.distance import cdist

    from fedvq_app.aggregation.codebook_align import squared_distances

    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(7, 5)), rng.normal(size=(9, 5))
    np.testing.assert_allclose(squared_distances(a, b), cdist(a, b, "sqeuclidean"), atol=1e-10)
    assert (squared_distances(a, a) >= 0).all()


def test_rows_sharing_their_first_values_are_told_apart_by_the_rest():
    from fedvq_app.aggregation.codebook import _row_ids

    head = [1.0, 2.0, 3.0, 4.0]
    points = np.array([head + [5.0], head + [6.0], head + [5.0], [0.0, 2.0, 3.0, 4.0, 5.0]])
    assert _row_ids(points).tolist() == [0, 1, 0, 2]


def test_a_center_whose_nearest_slots_collide_is_matched_by_the_hungarian_algorithm():
    from fedvq_app.aggregation.codebook_align import match_slots

    reference = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    # both first centers are nearest to slot 0: greedy fails, the optimum sends one to slot 2
    centers = np.array([[0.0, 1.0], [0.0, 4.0], [10.0, 1.0]])
    assert match_slots(centers, reference).tolist() == [0, 2, 1]
    # distinct nearest slots: taken as they are
    assert match_slots(reference[[2, 0, 1]] + 0.1, reference).tolist() == [2, 0, 1]


# ---------------------------------------------------------------------------- lloyd (usage statistics)
def _client_stats(x, book, threshold=1):
    from fedvq_app.aggregation.codebook_lloyd import local_statistics

    labels = ((x[:, None, :] - book[None]) ** 2).sum(-1).argmin(1)
    k = len(book)
    counts = np.bincount(labels, minlength=k)
    sums = np.zeros_like(book)
    np.add.at(sums, labels, x)
    squares = np.bincount(labels, weights=(x**2).sum(1), minlength=k)
    return local_statistics(counts, sums, squares, threshold), labels


def test_lloyd_is_the_exact_pooled_mean_of_the_assigned_vectors():
    from fedvq_app.aggregation.codebook_lloyd import lloyd_codebook

    rng = np.random.default_rng(0)
    book = rng.normal(size=(6, 3)) * 3
    xs = [
        book[rng.integers(0, 4, 200)] + rng.normal(size=(200, 3)) * 0.3,  # client 0: codes 0-3
        book[rng.integers(2, 5, 50)] + rng.normal(size=(50, 3)) * 0.3,
    ]  # client 1: codes 2-4
    stats = [_client_stats(x, book)[0] for x in xs]
    result = lloyd_codebook([s[0] for s in stats], [s[1] for s in stats], [s[2] for s in stats], book, rng)
    pooled = np.vstack(xs)
    labels = ((pooled[:, None, :] - book[None]) ** 2).sum(-1).argmin(1)
    means = {j: pooled[labels == j].mean(0) for j in np.unique(labels)}
    moved = [j for j in means if not np.allclose(result.codebook[j], means[j], rtol=1e-10)]
    # code 5 chose no vector anywhere: revived by splitting one used code c into c - delta and c + delta
    assert 5 not in labels and result.stats["revived_codes"] == 1 and np.isfinite(result.codebook).all()
    assert len(moved) == 1
    (c,) = moved
    np.testing.assert_allclose((result.codebook[c] + result.codebook[5]) / 2, means[c], rtol=1e-10)
    # the split code is the one with the largest squared error around its mean (known without raw vectors)
    sse = {j: ((pooled[labels == j] - means[j]) ** 2).sum() for j in means}
    assert c == max(sse, key=sse.get)
    # inertia from the statistics = the SSE of the pooled vectors to their code's new position (before the split)
    assert result.inertia > 0


def test_lloyd_privacy_threshold_withholds_small_codes():
    rng = np.random.default_rng(1)
    book = np.eye(3) * 5
    x = np.vstack([book[0] + rng.normal(size=(20, 3)) * 0.1, book[1] + rng.normal(size=(3, 3)) * 0.1])
    (counts, sums, squares, withheld), _ = _client_stats(x, book, threshold=5)
    assert counts.tolist() == [20, 0, 0] and withheld == 1
    assert not sums[1].any() and squares[1] == 0.0


def test_lloyd_initialises_from_local_code_means_when_no_global_codebook_exists():
    from fedvq_app.aggregation.codebook_lloyd import lloyd_codebook

    rng = np.random.default_rng(2)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    # two clients whose local k-means found the same three clusters in different index orders
    stats = []
    for order in ([0, 1, 2], [2, 0, 1]):
        local = centres[order] + rng.normal(size=(3, 2)) * 0.01
        x = np.vstack([c + rng.normal(size=(30, 2)) * 0.1 for c in local])
        stats.append(_client_stats(x, local)[0])
    result = lloyd_codebook([s[0] for s in stats], [s[1] for s in stats], [s[2] for s in stats], None, rng)
    assert result.stats["initialised"]
    found = sorted(map(tuple, np.round(result.codebook, 0)))
    assert found == sorted(map(tuple, centres))


@pytest.mark.parametrize("spread", [0.001, 0.3, 10.0])
def test_quantization_error_with_a_hint_equals_the_exhaustive_search(spread):
    """Elkan's bound accepts a guessed nearest code only when no other can be nearer: same sum."""
    rng = np.random.default_rng(int(spread * 1000))
    for _ in range(30):
        k, d, n = int(rng.integers(2, 15)), int(rng.integers(1, 6)), int(rng.integers(1, 50))
        codes = rng.standard_normal((k, d)) * rng.choice([0.01, 1.0, 100.0])
        codes[1] = codes[0]  # a duplicated code: its half-gap is 0
        points = codes[rng.integers(0, k, n)] + spread * rng.standard_normal((n, d))
        hint = rng.integers(0, k, n)  # many guesses wrong
        brute = float(((points[:, None, :] - codes[None]) ** 2).sum(2).min(1).sum())
        assert quantization_error(points, codes, hint) == pytest.approx(brute, rel=1e-9, abs=1e-12)
        assert quantization_error(points, codes) == pytest.approx(brute, rel=1e-9, abs=1e-12)
