"""Clustered FL's server math (Sattler et al., 2020): update norms, similarities, bipartition.

Pure numpy/scikit-learn, no Flower. Clients are always named by their stable
partition id; functions that split return lists of ids, never positions inside a
sub-matrix, so nested splits keep picking the right clients (the FL-bench CFL
bug, issue #20, indexed the parent matrix with positions of the child).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

Arrays = Mapping[str, np.ndarray]


def weight_update(new: Arrays, old: Arrays) -> dict[str, np.ndarray]:
    """Delta W = new - old for every array (float64, so small steps are exact)."""
    return {k: np.asarray(new[k], np.float64) - np.asarray(old[k], np.float64) for k in old}


def flatten(arrays: Arrays, names: Sequence[str]) -> np.ndarray:
    """One vector of the named arrays, in the given order."""
    return np.concatenate([np.ravel(arrays[n]) for n in names]) if names else np.zeros(0)


def update_norms(updates: np.ndarray) -> tuple[float, float]:
    """(||mean_i dW_i||, max_i ||dW_i||) of the rows of ``updates`` (clients x params).

    A small mean with a large max means the cluster sits near a stationary point of
    the joint objective while some members are still far from theirs: CFL's signal
    that the members want different models.
    """
    mean_norm = float(np.linalg.norm(updates.mean(axis=0)))
    max_norm = float(np.linalg.norm(updates, axis=1).max())
    return mean_norm, max_norm


def similarity_matrix(updates: np.ndarray) -> np.ndarray:
    """Pairwise cosine similarity of the rows (clients x params)."""
    from sklearn.metrics.pairwise import cosine_similarity  # noqa: PLC0415 (server only: 1 s per ClientApp process)

    return cosine_similarity(updates)


def bipartition(similarity: np.ndarray, ids: Sequence[int]) -> tuple[list[int], list[int]]:
    """Two groups of ``ids`` by complete-linkage clustering of cosine distances.

    Distance = 1 - similarity: complete linkage only compares distances, so this
    gives the same split as the reference code's ``-similarity`` while staying
    non-negative. The group holding the smallest id comes first.
    """
    if len(ids) < 2:
        raise ValueError("a bipartition needs at least two clients")
    distance = np.clip(1.0 - np.asarray(similarity, np.float64), 0.0, 2.0)
    np.fill_diagonal(distance, 0.0)
    from sklearn.cluster import AgglomerativeClustering  # noqa: PLC0415 (server only, as above)

    labels = AgglomerativeClustering(n_clusters=2, metric="precomputed", linkage="complete").fit(distance).labels_
    groups = [sorted(int(i) for i, lab in zip(ids, labels, strict=True) if lab == g) for g in (0, 1)]
    return tuple(sorted(groups, key=min))  # type: ignore[return-value]


def mean_update(updates: Sequence[Arrays], weights: Sequence[float] | None = None) -> dict[str, np.ndarray]:
    """(Weighted) mean of per-client updates, array by array."""
    w = np.ones(len(updates)) if weights is None else np.asarray(weights, np.float64)
    w = w / w.sum()
    return {k: sum(wi * u[k] for wi, u in zip(w, updates, strict=True)) for k in updates[0]}


def apply_update(model: Arrays, update: Arrays) -> dict[str, np.ndarray]:
    """model + update, each array kept in its own dtype (integers rounded)."""
    out = {}
    for k, value in model.items():
        moved = np.asarray(value, np.float64) + update[k]
        out[k] = (np.rint(moved) if np.issubdtype(value.dtype, np.integer) else moved).astype(value.dtype)
    return out


@dataclass(frozen=True)
class SplitRule:
    """When a cluster is split (the issue's criterion, reference defaults in docs/cfl.md)."""

    eps1: float
    eps2: float
    min_cluster_size: int
    warmup_rounds: int

    def decide(self, server_round: int, mean_norm: float, max_norm: float, size: int) -> tuple[bool, str]:
        """(split?, why) for a cluster with ``size`` participating members this round."""
        if server_round < self.warmup_rounds:
            return False, f"warm-up (round < {self.warmup_rounds})"
        if size < 2 * self.min_cluster_size:
            return False, f"too few participants ({size} < {2 * self.min_cluster_size})"
        if mean_norm >= self.eps1:
            return False, f"not converged (mean norm {mean_norm:.3f} >= eps1 {self.eps1})"
        if max_norm <= self.eps2:
            return False, f"members agree (max norm {max_norm:.3f} <= eps2 {self.eps2})"
        return True, "mean norm < eps1 and max norm > eps2"

    def children_ok(self, groups: Sequence[Sequence[int]]) -> bool:
        """Both halves keep at least ``min_cluster_size`` participating members."""
        return all(len(g) >= self.min_cluster_size for g in groups)


def cluster_purity(clusters: Sequence[Sequence[int]], groups: Mapping[int, object]) -> float | None:
    """Share of clients whose cluster's majority group is their own group.

    Purity 1.0 = no cluster mixes groups (e.g. rotated and upright clients). Clients
    without a known group are ignored; None when no client has one.
    """
    total = majority = 0
    for members in clusters:
        labels = [groups[m] for m in members if m in groups]
        if labels:
            total += len(labels)
            majority += Counter(labels).most_common(1)[0][1]
    return majority / total if total else None
