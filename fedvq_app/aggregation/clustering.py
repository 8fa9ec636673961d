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


#: how eps1 / eps2 are read: multiples of the run's reference update norm, or absolute norms
THRESHOLD_SCALES = ("relative", "absolute")


@dataclass(frozen=True)
class SplitRule:
    """When a cluster is split (Sattler et al.'s criterion, defaults in docs/cfl.md).

    ``scale = "absolute"``: split when ``||mean dW|| < eps1`` and ``max ||dW|| > eps2`` (the reference code's
    constants, which hold for one model, optimiser, number of local steps and dataset only).
    ``scale = "relative"``: the same test with both thresholds multiplied by ``reference``, the size of a
    typical client update at the run's most active round (the largest mean client update norm,
    ``reference_norm``, seen so far): "the cluster's mean update has shrunk below eps1 of the run's peak
    client update while some member still moves more than eps2 of one". Model, optimiser, local steps
    and data scale every norm of a run alike, so relative thresholds carry over where constants do not.
    """

    eps1: float
    eps2: float
    min_cluster_size: int
    warmup_rounds: int
    scale: str = "absolute"
    #: split only when the two halves' updates point apart: mean cross-half cosine similarity below this
    #: (None: no such check, the reference code)
    max_cross_similarity: float | None = None

    def __post_init__(self) -> None:
        if self.scale not in THRESHOLD_SCALES:
            raise ValueError(f"scale must be one of {THRESHOLD_SCALES}, got {self.scale!r}")

    def thresholds(self, reference: float | None) -> tuple[float, float]:
        """(eps1, eps2) as norms: scaled by ``reference`` when relative (None: no reference yet -> no split)."""
        if self.scale == "absolute":
            return self.eps1, self.eps2
        if reference is None or not np.isfinite(reference) or reference <= 0:
            return 0.0, float("inf")
        return self.eps1 * reference, self.eps2 * reference

    def decide(
        self, server_round: int, mean_norm: float, max_norm: float, size: int, reference: float | None = None
    ) -> tuple[bool, str]:
        """(split?, why) for a cluster with ``size`` participating members this round."""
        if server_round < self.warmup_rounds:
            return False, f"warm-up (round < {self.warmup_rounds})"
        if size < 2 * self.min_cluster_size:
            return False, f"too few participants ({size} < {2 * self.min_cluster_size})"
        eps1, eps2 = self.thresholds(reference)
        unit = "" if self.scale == "absolute" else f" = {self.eps1:g} x reference {reference or 0.0:.3f}"
        if not mean_norm < eps1:
            return False, f"not converged (mean norm {mean_norm:.3f} >= eps1 {eps1:.3f}{unit})"
        if not max_norm > eps2:
            unit = "" if self.scale == "absolute" else f" = {self.eps2:g} x reference {reference or 0.0:.3f}"
            return False, f"members agree (max norm {max_norm:.3f} <= eps2 {eps2:.3f}{unit})"
        return True, f"mean norm < eps1 {eps1:.3f} and max norm > eps2 {eps2:.3f}"

    def halves_apart(self, cross: float) -> bool:
        """The bipartition separates updates that disagree (mean cross-half similarity below the bound)."""
        return self.max_cross_similarity is None or cross < self.max_cross_similarity

    def children_ok(self, groups: Sequence[Sequence[int]]) -> bool:
        """Both halves keep at least ``min_cluster_size`` participating members."""
        return all(len(g) >= self.min_cluster_size for g in groups)


def cross_similarity(similarity: np.ndarray, ids: Sequence[int], halves: Sequence[Sequence[int]]) -> float:
    """Mean cosine similarity between members of the two halves (``similarity`` ordered as ``ids``)."""
    position = {int(p): i for i, p in enumerate(ids)}
    first = [position[int(p)] for p in halves[0]]
    second = [position[int(p)] for p in halves[1]]
    return float(np.asarray(similarity, np.float64)[np.ix_(first, second)].mean())


def reference_norm(updates: np.ndarray) -> float:
    """Mean client update norm of ``updates`` (clients x params); its running maximum is the relative rule's unit."""
    return float(np.linalg.norm(updates, axis=1).mean())


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
