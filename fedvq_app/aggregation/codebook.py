"""FedVQ's codebook aggregators: pure functions with one signature, chosen by name.

Every aggregator in :data:`AGGREGATORS` is called as::

    aggregate(codebooks, data_weights, usage_counts, previous, rng, params) -> CodebookResult

``codebooks`` are the clients' (K, D) code matrices, ``data_weights`` their
example counts, ``usage_counts`` how often each client's data picked each code
(``None`` = no usage information: every code counts as equally used),
``previous`` the global codebook the clients trained from (``None`` = start
cold, no index memory), ``rng`` a numpy Generator. The result always has K rows.

``previous`` makes the clustering warm-start from the last global codebook, so
center ``j`` starts at code ``j`` (index consistency for free, and one K-means
run instead of ``n_init`` restarts); :func:`aggregate_codebook` adds the
Hungarian re-alignment (``codebook_align``) on top. Clients whose codebook or
usage is not finite are dropped (the server rejects such replies earlier; the
functions stay safe on their own). ``inertia`` is the same for every
aggregator: the sum of squared distances of every submitted code to its
nearest global code, so aggregators compare on one scale.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from fedvq_app.aggregation.codebook_align import align_codebook, place_in_slots
from fedvq_app.aggregation.weighted import normalized_weights

#: relative scale of the jitter that separates padded duplicate codes
PAD_JITTER = 1e-3
#: share of uniform mass mixed into the barycenter's per-slot usage weights (no slot gets 0)
BARYCENTER_SMOOTHING = 0.1


@dataclass(frozen=True)
class CodebookParams:
    """Knobs of the aggregators (the defaults are the seed's where it has one)."""

    usage_threshold: float = 0.01
    n_init: int = 10
    max_iter: int = 300
    tol: float = 1e-4
    barycenter_iters: int = 20


DEFAULT_PARAMS = CodebookParams()


@dataclass(frozen=True)
class CodebookResult:
    """A new global codebook, its quantization error on the clients' codes, and statistics."""

    codebook: np.ndarray
    inertia: float
    stats: dict[str, Any] = field(default_factory=dict)


Aggregator = Callable[..., CodebookResult]


# ----------------------------------------------------------------------------
# Usage statistics (shared with the client, which computes them on its data)
# ----------------------------------------------------------------------------
def usage_frequencies(counts: np.ndarray | None, num_codes: int) -> np.ndarray:
    """Counts -> frequencies summing to 1; uniform when there is no count at all."""
    if counts is None:
        return np.full(num_codes, 1.0 / num_codes)
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    return counts / total if total > 0 else np.full(num_codes, 1.0 / num_codes)


def used_codes(counts: np.ndarray, threshold: float) -> np.ndarray:
    """Codes picked at least ``threshold`` of the time (and at least once): a bool mask."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        return np.zeros(len(counts), dtype=bool)
    return (counts > 0) & (counts / total >= threshold)


def perplexity(counts: np.ndarray) -> float:
    """exp(entropy) of the code distribution: the effective number of codes in use."""
    freq = usage_frequencies(counts, len(counts))
    nz = freq[freq > 0]
    return float(np.exp(-(nz * np.log(nz)).sum()))


# ----------------------------------------------------------------------------
# Input screening
# ----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Inputs:
    codebooks: list[np.ndarray]  # finite float64 (K, D)
    weights: np.ndarray  # data weights, sum 1
    freqs: list[np.ndarray]  # usage frequencies, each sums to 1 (uniform without counts)
    counted: list[bool]  # whether the client's data picked any code at all
    dropped: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.codebooks[0].shape

    def points(self) -> np.ndarray:
        return np.vstack(self.codebooks)

    def index_mean(self) -> np.ndarray:
        """Index-wise data-weighted mean: FedAvg of the codebook."""
        return np.tensordot(self.weights, np.stack(self.codebooks), axes=1)


def _finite_nonneg(values: Any) -> bool:
    arr = np.asarray(values, dtype=np.float64)
    return bool(np.isfinite(arr).all() and (arr >= 0).all())


def _prepare(
    codebooks: Sequence[np.ndarray],
    data_weights: Sequence[float],
    usage_counts: Sequence[np.ndarray] | None,
) -> _Inputs:
    """Check shapes, drop clients with non-finite values, normalise weights and usage."""
    if len(codebooks) == 0:
        raise ValueError("no codebooks to aggregate")
    if len(data_weights) != len(codebooks) or (usage_counts is not None and len(usage_counts) != len(codebooks)):
        raise ValueError("codebooks, data_weights and usage_counts must have one entry per client")
    shapes = {np.shape(c) for c in codebooks}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"every codebook must be the same (K, D) matrix, got shapes {sorted(shapes)}")
    num_codes = np.shape(codebooks[0])[0]
    kept, weights, freqs, counted = [], [], [], []
    for i, book in enumerate(codebooks):
        book = np.asarray(book, dtype=np.float64)
        counts = None if usage_counts is None else np.asarray(usage_counts[i], dtype=np.float64)
        usable = (
            np.isfinite(book).all()
            and _finite_nonneg(data_weights[i])
            and (counts is None or (counts.shape == (num_codes,) and _finite_nonneg(counts)))
        )
        if usable:
            kept.append(book)
            weights.append(float(data_weights[i]))
            freqs.append(usage_frequencies(counts, num_codes))
            counted.append(counts is not None and counts.sum() > 0)
    if not kept:
        raise ValueError("no client sent a finite codebook")
    return _Inputs(kept, normalized_weights(weights), freqs, counted, len(codebooks) - len(kept))


# ----------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------
def _nearest_sq_distances(points: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    """Squared distance of every point to its nearest code (exhaustive search).

    The nearest code comes from one float32 matrix product (the model's own precision,
    twice as fast as float64 on a round's (clients x K) x K products); the distance to it
    is then taken exactly in float64, so tight codebooks lose no precision to cancellation.
    """
    p32, c32 = points.astype(np.float32), codebook.astype(np.float32)
    # |p|^2 - 2 p.c + |c|^2 as one GEMM (scikit-learn's euclidean_distances upcasts float32
    # to float64 chunk by chunk, which made this the slowest step of a round)
    sq = (c32 * c32).sum(1)[None, :] - 2.0 * (p32 @ c32.T)
    nearest = sq.argmin(axis=1)
    return ((points - codebook[nearest]) ** 2).sum(1)


def quantization_error(points: np.ndarray, codebook: np.ndarray, hint: np.ndarray | None = None) -> float:
    """Sum of squared distances of ``points`` to their nearest code.

    ``hint`` (optional) is a guess of each point's nearest code, e.g. its own row index when
    the points are the clients' codebooks. A guess is accepted without searching when the
    point lies within half the distance from the guessed code to its closest other code
    (then no other code can be nearer, by the triangle inequality: Elkan's bound); only the
    other points are searched exhaustively. The result is the exhaustive one either way.
    """
    points = np.asarray(points, dtype=np.float64)
    codebook = np.asarray(codebook, dtype=np.float64)
    if len(points) == 0:
        return 0.0
    if hint is None or len(codebook) < 2:
        return float(_nearest_sq_distances(points, codebook).sum())
    hint = np.asarray(hint, dtype=np.int64)
    to_hint = ((points - codebook[hint]) ** 2).sum(1)
    norms = (codebook * codebook).sum(1)
    scale = norms[:, None] + norms[None, :]
    # squared code-to-code distances from the Gram matrix, less a margin for its rounding error
    between = np.maximum(scale - 2.0 * (codebook @ codebook.T) - 1e-9 * scale, 0.0)
    np.fill_diagonal(between, np.inf)
    half_gap_sq = between.min(1) / 4.0  # (|c_h - c_k| / 2)^2 for the closest other code k
    certain = to_hint <= half_gap_sq[hint]
    rest = ~certain
    searched = _nearest_sq_distances(points[rest], codebook).sum() if rest.any() else 0.0
    return float(to_hint[certain].sum() + searched)


def _row_ids(points: np.ndarray) -> np.ndarray:
    """Id of each row's group of byte-identical rows, ids numbered in first-seen order.

    Rows are grouped by the bytes of their first few values (one ``np.unique`` over
    short keys); only rows that share those bytes are compared in full. Codebook rows
    are continuous vectors, so in practice only exact copies (e.g. codes nobody moved)
    reach the full comparison, and the cost stays linear instead of sorting kilobyte keys.
    """
    if len(points) == 0:
        return np.zeros(0, dtype=np.int64)
    rows = np.ascontiguousarray(points).reshape(len(points), -1)
    head = np.ascontiguousarray(rows[:, : min(4, rows.shape[1])])
    keys = head.view(np.dtype((np.void, head.dtype.itemsize * head.shape[1]))).ravel()
    _, group = np.unique(keys, return_inverse=True)
    ids = group.ravel().astype(np.int64)
    shared = np.flatnonzero(np.bincount(ids)[ids] > 1)
    if len(shared):
        seen: dict[bytes, int] = {}
        offset = int(ids.max()) + 1
        for i in shared:
            ids[i] = offset + seen.setdefault(rows[i].tobytes(), len(seen))
    _, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[inverse.ravel()]


def count_distinct(points: np.ndarray) -> int:
    """Number of distinct rows."""
    return int(_row_ids(points).max(initial=-1) + 1)


def _distinct(points: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique rows (first-seen order) with their weights summed (K-means on duplicates is ill-posed)."""
    ids = _row_ids(points)
    _, first_rows = np.unique(ids, return_index=True)
    return np.asarray(points)[first_rows], np.bincount(ids, weights=weights, minlength=len(first_rows))


def _seed(rng: np.random.Generator) -> int:
    return int(rng.integers(2**31 - 1))


def weighted_kmeans(
    points: np.ndarray,
    weights: np.ndarray,
    k: int,
    init: np.ndarray | None,
    rng: np.random.Generator,
    params: CodebookParams = DEFAULT_PARAMS,
) -> tuple[np.ndarray, float]:
    """Centers (at most ``k``: fewer when there are fewer distinct points) and the weighted SSE.

    With ``init`` (k rows) one warm-started run; without, ``n_init`` k-means++ restarts.
    """
    uniq, w = _distinct(points, weights)
    if len(uniq) <= k:
        return uniq, 0.0
    warm = init is not None
    # float32 (the model's precision) halves the cost of every Lloyd step; a warm start from
    # last round's codebook converges in a few steps since clients drifted from those codes
    dtype = np.float32 if warm else np.float64
    from sklearn.cluster import KMeans  # noqa: PLC0415 (server only; ClientApps import this module for names)

    model = KMeans(
        n_clusters=k,
        init=np.asarray(init, dtype=dtype) if warm else "k-means++",
        n_init=1 if warm else params.n_init,
        max_iter=params.max_iter,
        tol=params.tol,
        random_state=_seed(rng),
    ).fit(uniq.astype(dtype, copy=False), sample_weight=w)
    centers = model.cluster_centers_.astype(np.float64)
    if warm:  # the last M-step again in float64: exact weighted means of the final clusters
        centers = _weighted_means(uniq, w, model.labels_, centers)
    return centers, float(model.inertia_)


def _weighted_means(points: np.ndarray, weights: np.ndarray, labels: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """Row c = weighted mean of the points labelled c (``fallback[c]`` for a cluster with no weight)."""
    from scipy.sparse import csr_matrix  # noqa: PLC0415 - start-up cost: scipy, only on this path

    k = len(fallback)
    member = csr_matrix((weights, (labels, np.arange(len(labels)))), shape=(k, len(labels)))
    mass = np.asarray(member.sum(axis=1)).ravel()
    sums = member @ np.asarray(points, dtype=np.float64)
    out = np.array(fallback, dtype=np.float64, copy=True)
    filled = mass > 0
    out[filled] = sums[filled] / mass[filled, None]
    return out


def _pad(centers: np.ndarray, k: int, spare: np.ndarray, rng: np.random.Generator, params: CodebookParams):
    """Cold completion to ``k`` rows: K-means of the spare codes, else jittered copies."""
    missing = k - len(centers)
    if missing <= 0:
        return centers[:k]
    extra = np.empty((0, centers.shape[1]))
    if len(spare):
        extra, _ = weighted_kmeans(spare, np.ones(len(spare)), missing, None, rng, params)
    rows = [centers, extra]
    still = missing - len(extra)
    if still > 0:
        pool = np.vstack(rows)
        scale = PAD_JITTER * max(float(pool.std()), 1.0)
        rows.append(pool[rng.integers(len(pool), size=still)] + rng.normal(0.0, scale, (still, pool.shape[1])))
    return np.vstack(rows)


def _warm_codebook(
    points: np.ndarray,
    weights: np.ndarray,
    slots: np.ndarray,
    previous: np.ndarray,
    fill: np.ndarray,
    rng: np.random.Generator,
    params: CodebookParams,
) -> tuple[np.ndarray, float, int]:
    """Clusters started at ``previous[slots]``; center i goes back to slot ``slots[i]``.

    Every other slot keeps its ``fill`` row. With no more distinct points than
    slots there is nothing to cluster: each point takes its nearest previous slot
    (Hungarian). Returns the codebook, the weighted SSE and the number of centers.
    """
    previous = np.asarray(previous, dtype=np.float64)
    centers, objective = weighted_kmeans(points, weights, len(slots), previous[slots], rng, params)
    if count_distinct(points) <= len(slots):
        return place_in_slots(centers, previous, fill), objective, len(centers)
    codebook = np.array(fill, dtype=np.float64, copy=True)
    codebook[slots] = centers
    return codebook, objective, len(centers)


def _result(codebook: np.ndarray, inputs: _Inputs, **stats: Any) -> CodebookResult:
    """The result with the common statistics and the quantization error on every client's codes."""
    points = inputs.points()
    common = {
        "clients": len(inputs.codebooks),
        "dropped_clients": inputs.dropped,
        "distinct_codes": count_distinct(points),
    }
    # every client's row j most likely sits nearest to global code j (all started from it)
    hint = np.tile(np.arange(inputs.shape[0]), len(inputs.codebooks)) if len(codebook) == inputs.shape[0] else None
    return CodebookResult(codebook, quantization_error(points, codebook, hint), {**common, **stats})


# ----------------------------------------------------------------------------
# The aggregators (one signature)
# ----------------------------------------------------------------------------
def aggregate_mean(codebooks, data_weights, usage_counts, previous, rng, params=DEFAULT_PARAMS) -> CodebookResult:
    """FedAvg of the codebook: index-wise mean weighted by examples (the naive baseline)."""
    inputs = _prepare(codebooks, data_weights, usage_counts)
    return _result(inputs.index_mean(), inputs)


def _kmeans_on_all(inputs: _Inputs, point_weights: np.ndarray, previous, rng, params) -> CodebookResult:
    k = inputs.shape[0]
    if previous is None:
        centers, objective = weighted_kmeans(inputs.points(), point_weights, k, None, rng, params)
        codebook, clusters = _pad(centers, k, np.empty((0, inputs.shape[1])), rng, params), len(centers)
    else:
        codebook, objective, clusters = _warm_codebook(
            inputs.points(), point_weights, np.arange(k), previous, inputs.index_mean(), rng, params
        )
    return _result(codebook, inputs, objective=objective, clusters=clusters)


def aggregate_kmeans(codebooks, data_weights, usage_counts, previous, rng, params=DEFAULT_PARAMS) -> CodebookResult:
    """K-means (K = codebook size) over the union of every client's codes, unweighted."""
    inputs = _prepare(codebooks, data_weights, usage_counts)
    return _kmeans_on_all(inputs, np.ones(len(inputs.points())), previous, rng, params)


def aggregate_weighted_kmeans(
    codebooks, data_weights, usage_counts, previous, rng, params=DEFAULT_PARAMS
) -> CodebookResult:
    """K-means over all codes, each code weighted by its client's share of the data."""
    inputs = _prepare(codebooks, data_weights, usage_counts)
    k = inputs.shape[0]
    point_weights = np.repeat(inputs.weights * len(inputs.codebooks), k)
    return _kmeans_on_all(inputs, point_weights, previous, rng, params)


def _usage_masks(inputs: _Inputs, threshold: float) -> tuple[list[np.ndarray], int]:
    """Per client: the codes used above the threshold, and how many clients fell back.

    A client with no code above the threshold contributes every code it used at
    all; one whose data picked no code (or that sent no counts) contributes all
    its codes with equal weight (the seed's "using all embeddings").
    """
    masks, fallbacks = [], 0
    for freq, counted in zip(inputs.freqs, inputs.counted, strict=True):
        mask = (freq > 0) & (freq >= threshold) if counted else np.zeros(len(freq), dtype=bool)
        if not mask.any():
            fallbacks += 1
            mask = freq > 0
        masks.append(mask)
    return masks, fallbacks


def aggregate_usage_kmeans(
    codebooks, data_weights, usage_counts, previous, rng, params=DEFAULT_PARAMS
) -> CodebookResult:
    """K-means over the codes clients actually used, weighted by data share x usage frequency.

    Cold (the seed): min(K, distinct used codes) clusters, the remaining slots from
    a K-means of the unused codes. Warm (``previous`` known): one cluster per code
    index that any client used, started at that index's previous code and written
    back to that index, so every client's code j is merged with the other clients'
    code j; the slots nobody used keep the clients' mean code at that index.
    """
    inputs = _prepare(codebooks, data_weights, usage_counts)
    k = inputs.shape[0]
    masks, fallbacks = _usage_masks(inputs, params.usage_threshold)
    used = np.vstack([book[m] for book, m in zip(inputs.codebooks, masks, strict=True)])
    used_w = np.concatenate([w * f[m] for w, f, m in zip(inputs.weights, inputs.freqs, masks, strict=True)])
    union_used = np.logical_or.reduce(masks)
    if previous is None:
        spare = np.vstack([book[~m] for book, m in zip(inputs.codebooks, masks, strict=True)])
        centers, objective = weighted_kmeans(used, used_w, k, None, rng, params)
        codebook, clusters = _pad(centers, k, spare, rng, params), len(centers)
    else:
        codebook, objective, clusters = _warm_codebook(
            used, used_w, np.flatnonzero(union_used), previous, inputs.index_mean(), rng, params
        )
    return _result(
        codebook,
        inputs,
        objective=objective,
        clusters=clusters,
        used_points=len(used),
        usage_ratio=float(union_used.mean()),
        fallback_clients=fallbacks,
        used_inertia=quantization_error(used, codebook),
    )


def _cold_support(points: np.ndarray, k: int, rng: np.random.Generator, params: CodebookParams) -> np.ndarray:
    """k-means++ seeding on the distinct codes (padded when there are fewer than k)."""
    uniq, _ = _distinct(points, np.ones(len(points)))
    if len(uniq) <= k:
        return _pad(uniq, k, np.empty((0, points.shape[1])), rng, params)
    from sklearn.cluster import kmeans_plusplus  # noqa: PLC0415 (server only, as above)

    support, _ = kmeans_plusplus(uniq, k, random_state=_seed(rng))
    return support


def aggregate_wasserstein(
    codebooks, data_weights, usage_counts, previous, rng, params=DEFAULT_PARAMS
) -> CodebookResult:
    """Free-support Wasserstein barycenter (POT) of the clients' code distributions.

    Client i is the measure on its used codes with mass = usage frequency; the
    barycenter weights are the data shares. Warm (``previous``): the K atoms start at
    the previous codes and atom j carries the clients' combined usage of index j
    (mixed with a little uniform mass); cold: k-means++ atoms with uniform mass.
    """
    import ot  # noqa: PLC0415 (slow to import; only this aggregator needs it)

    inputs = _prepare(codebooks, data_weights, usage_counts)
    k = inputs.shape[0]
    locations = [book[f > 0] for book, f in zip(inputs.codebooks, inputs.freqs, strict=True)]
    masses = [f[f > 0] / f[f > 0].sum() for f in inputs.freqs]
    if previous is not None:
        support = np.asarray(previous, dtype=np.float64)
        slot_usage = np.tensordot(inputs.weights, np.stack(inputs.freqs), axes=1)
        b = (1 - BARYCENTER_SMOOTHING) * slot_usage + BARYCENTER_SMOOTHING / k
    else:
        support = _cold_support(np.vstack(locations), k, rng, params)
        b = np.full(k, 1.0 / k)
    codebook = ot.lp.free_support_barycenter(
        locations,
        masses,
        support,
        b=b / b.sum(),
        weights=inputs.weights,
        numItermax=params.barycenter_iters,
        stopThr=1e-7,
    )
    return _result(np.asarray(codebook, dtype=np.float64), inputs, used_points=int(sum(len(x) for x in locations)))


AGGREGATORS: Mapping[str, Aggregator] = MappingProxyType(
    {
        "mean": aggregate_mean,
        "kmeans": aggregate_kmeans,
        "weighted-kmeans": aggregate_weighted_kmeans,
        "usage-kmeans": aggregate_usage_kmeans,
        "wasserstein": aggregate_wasserstein,
    }
)


# ----------------------------------------------------------------------------
# Alignment modes
# ----------------------------------------------------------------------------
@dataclass(frozen=True)
class AlignMode:
    """How index consistency is kept: warm start from the previous codebook, re-matching."""

    warm_start: bool
    match: bool


ALIGN_MODES: Mapping[str, AlignMode] = MappingProxyType(
    {
        "none": AlignMode(warm_start=False, match=False),
        "warm-start": AlignMode(warm_start=True, match=False),
        "hungarian": AlignMode(warm_start=True, match=True),
    }
)


def aggregate_codebook(
    method: str,
    codebooks: Sequence[np.ndarray],
    data_weights: Sequence[float],
    usage_counts: Sequence[np.ndarray] | None,
    previous: np.ndarray | None,
    rng: np.random.Generator,
    align: str = "hungarian",
    params: CodebookParams = DEFAULT_PARAMS,
) -> CodebookResult:
    """Run aggregator ``method`` under alignment mode ``align`` (see :data:`ALIGN_MODES`).

    ``none`` forgets ``previous`` (cold clustering, arbitrary center order: the seed),
    ``warm-start`` starts from it, ``hungarian`` also re-matches the result to it.
    Adds ``realigned_codes`` (rows the matching moved) and ``drift`` (mean distance
    of code j to previous code j) to the statistics.
    """
    mode = ALIGN_MODES[align]
    result = AGGREGATORS[method](
        codebooks, data_weights, usage_counts, previous if mode.warm_start else None, rng, params
    )
    codebook, stats = result.codebook, dict(result.stats)
    if previous is not None:
        previous = np.asarray(previous, dtype=np.float64)
        moved = 0
        if mode.match:
            codebook, moved = align_codebook(codebook, previous)
        stats["realigned_codes"] = moved
        stats["drift"] = float(np.linalg.norm(codebook - previous, axis=1).mean())
    return CodebookResult(codebook, result.inertia, stats)
