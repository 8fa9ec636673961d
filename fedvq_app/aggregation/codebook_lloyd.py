"""The EMA quantizer's codebook from usage statistics: a federated Lloyd step (no Flower).

Each client sends, per code, the number of its feature vectors assigned to the code
(nearest neighbour), their sum and the sum of their squared norms, after
:func:`fedvq_app.aggregation.kmeans.privacy_filter` withheld every code fewer than
``codebook.privacy-threshold`` of its vectors chose. The server's new code ``j`` is
the exact mean of every vector assigned to ``j`` anywhere in the federation,
``sum_i S_ij / sum_i n_ij`` (:func:`~fedvq_app.aggregation.kmeans.lloyd_update`):
the pooled-data Lloyd step, which is also what an EMA with decay 0 over one pass
of all clients' data would give.

Before the first global codebook exists the clients' codes come from independent
local k-means initialisations, so code ``j`` means something different on every
client. The global codebook is then a weighted k-means over the clients' local code
means (each weighted by its count): k-means++ seeding from those summaries
(:func:`~fedvq_app.aggregation.kmeans.seed_from_summaries`) and weighted Lloyd
iterations (scikit-learn), the federated k-means initialisation.

Dead codes (no vector anywhere chose them, or every client withheld them) are
revived on the server without any raw vector: each takes half of the code with
the largest within-code squared error (computed from count, sum and sum of
squares), split along a random direction scaled to that code's spread (LBG
splitting).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedvq_app.aggregation.codebook import CodebookResult
from fedvq_app.aggregation.kmeans import lloyd_update, privacy_filter, seed_from_summaries

#: the name of this aggregator in ``codebook.aggregation`` (the statistics path, not in AGGREGATORS)
LLOYD = "lloyd"

#: the split moves the two halves this many within-code standard deviations apart
SPLIT_SCALE = 0.5


def local_statistics(
    counts: np.ndarray, sums: np.ndarray, squares: np.ndarray, privacy_threshold: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """A client's per-code (counts, sums, squares) with codes below the threshold withheld; and how many."""
    sums_f, counts_f, withheld = privacy_filter(
        np.asarray(sums, dtype=np.float64), np.asarray(counts, dtype=np.int64), privacy_threshold
    )
    squares_f = np.where(withheld, 0.0, np.asarray(squares, dtype=np.float64))
    return counts_f, sums_f, squares_f, int(withheld.sum())


def code_sse(counts: np.ndarray, sums: np.ndarray, squares: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Per-code sum of squared distances of the assigned vectors to ``codes`` (from the statistics)."""
    counts = np.asarray(counts, dtype=np.float64)
    sse = squares - 2.0 * np.einsum("kd,kd->k", sums, codes) + counts * np.square(codes).sum(1)
    return np.maximum(sse, 0.0)


def revive_dead(
    codebook: np.ndarray,
    counts: np.ndarray,
    sums: np.ndarray,
    squares: np.ndarray,
    rng: np.random.Generator,
    eligible: np.ndarray | None = None,
    max_revived: int = -1,
) -> tuple[np.ndarray, list[int]]:
    """Split the most distorted live codes into the dead ones; (new codebook, revived indices).

    ``eligible`` (bool per code): only these dead codes may be revived (e.g. dead for several
    rounds); ``max_revived``: at most this many this round (-1: no cap), the longest-dead first
    in index order. A dead code not revived keeps its vector.
    """
    book = np.array(codebook, dtype=np.float64, copy=True)
    dead_mask = counts <= 0
    if eligible is not None:
        dead_mask &= np.asarray(eligible, dtype=bool)
    dead = np.flatnonzero(dead_mask)
    if max_revived >= 0:
        dead = dead[:max_revived]
    live = counts > 0
    if not len(dead) or not live.any():
        return book, []
    sse = np.where(live, code_sse(counts, sums, squares, book), -np.inf)
    weight = np.asarray(counts, dtype=np.float64).copy()
    dim = book.shape[1]
    revived = []
    for d in dead:
        c = int(np.argmax(sse))
        if not np.isfinite(sse[c]) or sse[c] <= 0:
            break
        spread = np.sqrt(sse[c] / (weight[c] * dim))  # per-dimension std of code c's vectors
        direction = rng.standard_normal(dim)
        delta = SPLIT_SCALE * spread * direction
        centre = book[c].copy()
        book[c], book[d] = centre - delta, centre + delta
        # each half keeps about half the vectors and half the error; the next split goes elsewhere
        sse[c] = sse[d] = sse[c] / 2.0
        weight[c] = weight[d] = weight[c] / 2.0
        revived.append(int(d))
    return book, revived


def initial_codebook(
    counts: Sequence[np.ndarray], sums: Sequence[np.ndarray], k: int, rng: np.random.Generator, max_iter: int = 300
) -> tuple[np.ndarray, int]:
    """Weighted k-means over the clients' local code means (the round before any global codebook).

    Returns the codebook and how many of its rows had to be filled because fewer than
    ``k`` distinct local means arrived (copies of the means, jittered by their spread).
    """
    means, weights = [], []
    for n, s in zip(counts, sums, strict=True):
        keep = n > 0
        means.append(s[keep] / n[keep][:, None])
        weights.append(n[keep].astype(np.float64))
    points, weight = np.vstack(means), np.concatenate(weights)
    distinct = np.unique(points, axis=0)
    if len(distinct) <= k:
        spread = max(float(points.std()), 1e-3)
        fill = distinct[rng.integers(len(distinct), size=k - len(distinct))]
        fill = fill + SPLIT_SCALE * spread * rng.standard_normal(fill.shape)
        return np.vstack([distinct, fill]), k - len(distinct)
    seed = int(rng.integers(2**31))
    start = seed_from_summaries(points, weight, k, runs=1, seed=seed)[0]
    from sklearn.cluster import KMeans  # noqa: PLC0415 (server only: ClientApps import this module)

    km = KMeans(n_clusters=k, init=start, n_init=1, max_iter=max_iter, random_state=seed)
    return km.fit(points, sample_weight=weight).cluster_centers_, 0


def lloyd_codebook(
    counts: Sequence[np.ndarray],
    sums: Sequence[np.ndarray],
    squares: Sequence[np.ndarray],
    previous: np.ndarray | None,
    rng: np.random.Generator,
    max_iter: int = 300,
    eligible: np.ndarray | None = None,
    max_revived: int = -1,
) -> CodebookResult:
    """New global codebook from the clients' (already privacy-filtered) per-code statistics.

    ``previous`` is the global codebook the clients trained from (None before the first
    one exists: federated k-means initialisation over the local code means).
    ``eligible`` / ``max_revived``: which dead codes may be revived, and how many (see
    :func:`revive_dead`).
    """
    counts = [np.asarray(c, dtype=np.int64) for c in counts]
    sums = [np.asarray(s, dtype=np.float64) for s in sums]
    squares = [np.asarray(q, dtype=np.float64) for q in squares]
    if not counts or all(int(c.sum()) == 0 for c in counts):
        raise ValueError("no code statistics to aggregate: every client withheld or sent no counts")
    k = len(counts[0])
    if previous is None:
        book, filled = initial_codebook(counts, sums, k, rng, max_iter)
        return CodebookResult(book, 0.0, {"initialised": True, "dead_codes": filled, "revived_codes": filled})
    total_n = np.sum(counts, axis=0)
    total_s = np.sum(sums, axis=0)
    total_q = np.sum(squares, axis=0)
    book, empty = lloyd_update(previous, total_s, total_n)
    book, revived = revive_dead(book, total_n, total_s, total_q, rng, eligible, max_revived)
    inertia = float(code_sse(total_n, total_s, total_q, book)[total_n > 0].sum())
    return CodebookResult(
        book,
        inertia,
        {
            "initialised": False,
            "dead_codes": int(empty.sum()),
            "revived_codes": len(revived),
            "distinct_codes": int((total_n > 0).sum()),
        },
    )


def lloyd_codebook_heads(
    counts: Sequence[np.ndarray],
    sums: Sequence[np.ndarray],
    squares: Sequence[np.ndarray],
    previous: np.ndarray | None,
    rng: np.random.Generator,
    heads: int,
    max_iter: int = 300,
    eligible: np.ndarray | None = None,
    max_revived: int = -1,
) -> CodebookResult:
    """:func:`lloyd_codebook` for a multi-head quantizer: ``heads`` codebooks of ``K`` codes each.

    The statistics come flat, code ``j`` of head ``h`` at index ``h * K + j``; every head's
    codebook is initialised, updated and revived on its own statistics only (a code of one
    head never takes the vectors of another head's chunks). ``max_revived`` caps each head.
    """
    if heads == 1:
        return lloyd_codebook(counts, sums, squares, previous, rng, max_iter, eligible, max_revived)
    k = len(counts[0]) // heads
    books, inertia, stats = [], 0.0, {}
    for h in range(heads):
        part = slice(h * k, (h + 1) * k)
        result = lloyd_codebook(
            [c[part] for c in counts],
            [s[part] for s in sums],
            [q[part] for q in squares],
            None if previous is None else previous[part],
            rng,
            max_iter,
            None if eligible is None else eligible[part],
            max_revived,
        )
        books.append(result.codebook)
        inertia += result.inertia
        for key, value in result.stats.items():
            stats[key] = value if isinstance(value, bool) else stats.get(key, 0) + value
    return CodebookResult(np.vstack(books), inertia, stats)
