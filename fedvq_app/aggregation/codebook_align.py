"""Index alignment of codebooks: keep code ``j`` meaning the same thing across rounds.

The VQ layer's projection produces one logit per code *index*, and the decoder
has learned what each index's vector looks like. K-means and barycenters return
their centers in an arbitrary order, so a new global codebook must be put back
into the index order of the codebook the clients trained from. Both helpers are
minimum-cost one-to-one matchings (Hungarian algorithm, ``scipy``).
"""

from __future__ import annotations

import numpy as np


def squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise squared Euclidean distances in the one-matrix-product (BLAS) form, clipped at 0.

    The same form as scikit-learn's ``euclidean_distances(squared=True)`` without its input
    validation, which cost as much as the product itself on a 512 x 512 round.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    out = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.maximum(out, 0.0, out=out)


def match_slots(centers: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Slot of ``reference`` each center goes to (distinct slots, least total squared distance).

    ``centers`` may have fewer rows than ``reference`` (a rectangular matching):
    the unmatched reference slots are the ones no center claimed.
    """
    centers = np.asarray(centers, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if len(centers) > len(reference):
        raise ValueError(f"{len(centers)} centers cannot take distinct slots among {len(reference)}")
    cost = squared_distances(centers, reference)
    nearest = cost.argmin(axis=1)
    if len(np.unique(nearest)) == len(nearest):
        # every center's nearest slot is its own: the sum of row minima is a lower bound of
        # any matching's cost, so this is the optimum (the usual case after a warm start)
        return nearest.astype(np.int64)
    from scipy.optimize import linear_sum_assignment  # noqa: PLC0415 (server only: ClientApps import this module)

    rows, cols = linear_sum_assignment(cost)
    slots = np.empty(len(centers), dtype=np.int64)
    slots[rows] = cols
    return slots


def alignment_permutation(codebook: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``perm`` with ``codebook[perm]`` index-aligned to ``reference`` (same shape)."""
    if np.shape(codebook) != np.shape(reference):
        raise ValueError(f"codebook {np.shape(codebook)} and reference {np.shape(reference)} differ in shape")
    slots = match_slots(codebook, reference)
    perm = np.empty_like(slots)
    perm[slots] = np.arange(len(slots))
    return perm


def align_codebook(codebook: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, int]:
    """The codebook reordered to ``reference``'s indices and how many rows changed index."""
    perm = alignment_permutation(codebook, reference)
    return np.asarray(codebook)[perm], int((perm != np.arange(len(perm))).sum())


def place_in_slots(centers: np.ndarray, reference: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """A full codebook: each center in its matched ``reference`` slot, ``fill`` rows elsewhere.

    Used when there are fewer centers than codes (too few distinct vectors, or
    only the used codes were clustered): the free slots keep a sensible vector
    (``fill``, e.g. the index-wise mean of the clients' codes) at their own index.
    """
    out = np.array(fill, dtype=np.float64, copy=True)
    out[match_slots(centers, reference)] = centers
    return out
