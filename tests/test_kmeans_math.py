"""The arithmetic of federated k-means against its pooled (centralized) counterpart."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score
from sklearn.preprocessing import StandardScaler

from fedvq_app.aggregation import kmeans as km


@pytest.fixture
def client_rows():
    """Three clients of different sizes, means and spreads (non-IID)."""
    rng = np.random.default_rng(0)
    return [
        rng.normal(loc=0.0, scale=1.0, size=(40, 5)),
        rng.normal(loc=3.0, scale=0.5, size=(7, 5)) @ rng.normal(size=(5, 5)),
        rng.normal(loc=-2.0, scale=2.0, size=(120, 5)),
    ]


def test_merged_moments_give_the_pooled_mean_and_std(client_rows):
    mean, std, count = km.merge_moments(km.local_moments(x) for x in client_rows)
    scaler = StandardScaler().fit(np.vstack(client_rows))
    assert count == 167
    np.testing.assert_allclose(mean, scaler.mean_, rtol=1e-12)
    np.testing.assert_allclose(std, scaler.scale_, rtol=1e-9)


def test_constant_feature_is_centred_not_divided_by_zero():
    parts = [km.local_moments(np.array([[1.0, 2.0], [1.0, 4.0]])), km.local_moments(np.array([[1.0, 6.0]]))]
    mean, std, _ = km.merge_moments(parts)
    assert std[0] == 1.0 and mean[0] == 1.0
    assert std[1] == pytest.approx(np.std([2.0, 4.0, 6.0]))


def test_merged_moments_stay_exact_far_from_zero():
    """Offset 1e7, spread 1: the one-pass sumsq/n - mean^2 reported 1.414; the (count, mean, M2) merge is exact."""
    rng = np.random.default_rng(3)
    clients = [1e7 + rng.normal(scale=1.0, size=(n, 2)) for n in (50, 13, 200, 1)]
    pooled = np.vstack(clients)
    mean, std, count = km.merge_moments(km.local_moments(x) for x in clients)
    assert count == 264
    np.testing.assert_allclose(mean, pooled.mean(axis=0), rtol=1e-15)
    np.testing.assert_allclose(std, pooled.std(axis=0), rtol=1e-9)
    # the naive one-pass formula on the same data is visibly wrong: the test can tell the two apart
    naive = np.sqrt(np.maximum(np.square(pooled).sum(axis=0) / count - np.square(pooled.sum(axis=0) / count), 0))
    assert np.abs(naive - pooled.std(axis=0)).max() > 1e-3


def test_merged_covariance_equals_pooled_covariance(client_rows):
    count, mean, scatter = km.merge_scatter(km.local_scatter(x) for x in client_rows)
    pooled = np.vstack(client_rows)
    assert count == len(pooled)
    np.testing.assert_allclose(mean, pooled.mean(axis=0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(km.covariance(count, scatter), np.cov(pooled, rowvar=False), rtol=1e-10, atol=1e-12)


def test_principal_components_match_pca_of_the_pooled_rows(client_rows):
    pooled = np.vstack(client_rows)
    count, _, scatter = km.merge_scatter(km.local_scatter(x) for x in client_rows)
    components, variance = km.principal_components(km.covariance(count, scatter), 2)
    reference = PCA(n_components=2).fit(pooled)
    np.testing.assert_allclose(variance, reference.explained_variance_, rtol=1e-8)
    for ours, theirs in zip(components.T, reference.components_, strict=True):
        assert abs(float(ours @ theirs)) == pytest.approx(1.0, abs=1e-8)  # same axis, sign may differ


def test_transform_round_trips_centroids_to_the_original_scale():
    mean, std = np.array([10.0, -3.0, 0.5]), np.array([2.0, 0.5, 4.0])
    rows = np.array([[12.0, -3.5, 4.5], [8.0, -2.0, 0.5]])
    plain = km.FeatureTransform(mean, std)
    np.testing.assert_allclose(plain.to_original(plain.cluster_space(rows)), rows)
    rotation = np.linalg.qr(np.random.default_rng(1).normal(size=(3, 3)))[0]
    full_pca = km.FeatureTransform(mean, std, rotation, cluster_on_pca=True)  # all components: exact inverse
    np.testing.assert_allclose(full_pca.to_original(full_pca.cluster_space(rows)), rows)
    assert full_pca.view_of_rows(rows).shape == (2, 2)
    np.testing.assert_allclose(full_pca.view_of_centroids(full_pca.cluster_space(rows)), full_pca.view_of_rows(rows))


def test_privacy_filter_zeroes_small_clusters_only():
    sums = np.array([[10.0, 10.0], [3.0, 3.0], [0.0, 0.0]])
    counts = np.array([10, 3, 0])
    shared_sums, shared_counts, withheld = km.privacy_filter(sums, counts, threshold=5)
    assert shared_counts.tolist() == [10, 0, 0]
    assert shared_sums[1].tolist() == [0.0, 0.0] and shared_sums[0].tolist() == [10.0, 10.0]
    assert withheld.tolist() == [False, True, False]  # empty is not "withheld"
    assert counts.tolist() == [10, 3, 0]  # inputs untouched


def test_lloyd_update_keeps_an_empty_centroid_in_place():
    previous = np.array([[0.0, 0.0], [5.0, 5.0]])
    centroids, empty = km.lloyd_update(previous, np.array([[4.0, 2.0], [0.0, 0.0]]), np.array([2, 0]))
    np.testing.assert_allclose(centroids, [[2.0, 1.0], [5.0, 5.0]])
    assert empty.tolist() == [False, True]


def test_federated_lloyd_step_equals_the_centralized_step(client_rows):
    pooled = np.vstack(client_rows)
    start = pooled[[0, 50, 100]][None]  # one run, k = 3
    stats = [km.chain_statistics(x, start) for x in client_rows]
    sums, counts = sum(s[0] for s in stats), sum(s[1] for s in stats)
    federated, _ = km.lloyd_update(start, sums, counts)
    labels, d2 = km.assign(pooled, start[0])
    central = np.stack([pooled[labels == j].mean(axis=0) for j in range(3)])
    np.testing.assert_allclose(federated[0], central, rtol=1e-10)
    assert sum(s[2] for s in stats)[0] == pytest.approx(d2.sum())
    assert km.centroid_shift(start, federated).shape == (1,)


def test_all_runs_at_once_equal_each_run_alone(client_rows):
    x = client_rows[2]
    rng = np.random.default_rng(5)
    starts = rng.normal(size=(4, 3, x.shape[1]))  # R = 4 runs, k = 3
    sums, counts, inertia, labels = km.chain_statistics(x, starts)
    for r in range(4):
        alone, d2 = km.assign(x, starts[r])
        np.testing.assert_array_equal(labels[r], alone)
        alone_sums, alone_counts = km.cluster_sums(x, alone, 3)
        np.testing.assert_allclose(sums[r], alone_sums, rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(counts[r], alone_counts)
        assert inertia[r] == pytest.approx(d2.sum(), rel=1e-9)


def test_seedings_come_from_local_means_and_need_k_distinct_ones():
    points = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    seeds = km.seed_from_summaries(points, np.array([5, 5, 5, 5]), k=2, runs=4, seed=0)
    assert seeds.shape == (4, 2, 2)
    assert all(any(np.allclose(c, p) for p in points) for c in seeds.reshape(-1, 2))
    with pytest.raises(ValueError, match="only 1 distinct local means"):
        km.seed_from_summaries(points[:1].repeat(3, axis=0), np.array([5, 5, 5]), k=2, runs=1, seed=0)


def test_ari_from_summed_contingency_equals_sklearn():
    rng = np.random.default_rng(3)
    truth, predicted = rng.integers(0, 3, 200), rng.integers(0, 4, 200)
    predicted[:120] = truth[:120]  # partly agreeing
    halves = [slice(0, 70), slice(70, 200)]  # two clients
    table = sum(km.contingency(predicted[h], truth[h], k=4, num_classes=3) for h in halves)
    assert km.ari_from_contingency(table) == pytest.approx(adjusted_rand_score(truth, predicted), abs=1e-12)


def test_simplified_silhouette_uses_the_two_nearest_centroids():
    centroids = np.array([[0.0, 0.0], [4.0, 0.0]])
    rows = np.array([[1.0, 0.0], [2.0, 0.0], [4.0, 0.0]])
    np.testing.assert_allclose(km.simplified_silhouette(rows, centroids), [(3 - 1) / 3, 0.0, 1.0])
    assert km.simplified_silhouette(rows, centroids[:1]).tolist() == [0.0, 0.0, 0.0]
