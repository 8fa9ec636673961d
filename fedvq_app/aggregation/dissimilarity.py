"""Gradient dissimilarity of a federation (FusedSpaceFed, seed 003), pure numpy.

Every client sends the gradient g_i of its local loss at the global parameters w;
with p_i its data share the server measures

    Gamma    = sum_i p_i ||g_i||^2 / ||sum_i p_i g_i||^2   (>= 1; 1 = identical gradients)
    variance = sum_i p_i ||g_i - g_bar||^2                 (the seed code's spread, data-weighted)

Gamma is only defined at one point w. Strategies that send different models to
different nodes (clustered FL) are handled by :func:`grouped_dissimilarity`: nodes
are grouped by the model they were sent (and by the names/shapes of their
gradients), Gamma is computed inside each group, and the groups' values are
averaged by data share.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fedvq_app.aggregation.weighted import normalized_weights

Gradient = Mapping[str, np.ndarray]


def _check_same_layout(gradients: Sequence[Gradient]) -> None:
    first = gradients[0]
    for other in gradients[1:]:
        if set(other) != set(first) or any(np.shape(other[k]) != np.shape(first[k]) for k in first):
            raise ValueError("gradients must have the same names and shapes")


def _mean_gradient(gradients: Sequence[Gradient], p: np.ndarray) -> dict[str, np.ndarray]:
    return {
        k: np.tensordot(p, np.stack([np.asarray(g[k], np.float64) for g in gradients]), axes=1) for k in gradients[0]
    }


def _squared_norm(gradient: Gradient) -> float:
    return float(sum(np.sum(np.square(np.asarray(v, np.float64))) for v in gradient.values()))


def gradient_dissimilarity(gradients: Sequence[Gradient], weights: Sequence[float]) -> float:
    """Gamma = sum p_i ||g_i||^2 / ||sum p_i g_i||^2 (inf when the mean gradient is 0)."""
    if not gradients:
        raise ValueError("no gradients given")
    _check_same_layout(gradients)
    p = normalized_weights(weights)
    spread = float(sum(w * _squared_norm(g) for w, g in zip(p, gradients, strict=True)))
    mean_norm = _squared_norm(_mean_gradient(gradients, p))
    if mean_norm == 0.0:
        return math.inf if spread > 0 else 1.0
    return spread / mean_norm


def gradient_variance(gradients: Sequence[Gradient], weights: Sequence[float]) -> float:
    """sum p_i ||g_i - g_bar||^2 with g_bar = sum p_i g_i."""
    if not gradients:
        raise ValueError("no gradients given")
    _check_same_layout(gradients)
    p = normalized_weights(weights)
    mean = _mean_gradient(gradients, p)
    deviations = [{k: np.asarray(g[k], np.float64) - mean[k] for k in g} for g in gradients]
    return float(sum(w * _squared_norm(d) for w, d in zip(p, deviations, strict=True)))


def layout_signature(gradient: Gradient) -> tuple:
    """Names and shapes of a gradient: gradients are comparable only when these agree."""
    return tuple(sorted((k, tuple(np.shape(v))) for k, v in gradient.items()))


def model_fingerprint(arrays: Mapping[str, np.ndarray]) -> str:
    """A digest of a model's arrays (names, dtypes, shapes, bytes): equal models, equal digests."""
    digest = hashlib.blake2b(digest_size=16)
    for name in sorted(arrays):
        value = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{value.dtype.str}|{value.shape}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class GroupDissimilarity:
    """Gamma inside one group of nodes that were evaluated at the same point."""

    nodes: tuple[Hashable, ...]
    share: float  # the group's share of the data of all groups
    gamma: float
    variance: float


@dataclass(frozen=True)
class Dissimilarity:
    """The federation's Gamma: one group in plain FL, several in clustered FL."""

    gamma: float  # data-share-weighted mean of the groups' Gamma
    variance: float  # data-share-weighted mean of the groups' variance
    groups: tuple[GroupDissimilarity, ...]


def grouped_dissimilarity(
    gradients: Mapping[Hashable, Gradient],
    weights: Mapping[Hashable, float],
    models: Mapping[Hashable, Hashable] | None = None,
) -> Dissimilarity:
    """Gamma per group of nodes sharing a model (``models[node]``) and a gradient layout.

    Nodes missing from ``models`` are grouped by their gradient layout alone, so
    gradients that cannot be compared (different names or shapes) never meet.
    """
    if not gradients:
        raise ValueError("no gradients given")
    models = models or {}
    members: dict[tuple, list[Hashable]] = {}
    for node, gradient in gradients.items():
        members.setdefault((models.get(node), layout_signature(gradient)), []).append(node)
    total = float(sum(weights[n] for n in gradients))
    groups = []
    for nodes in members.values():
        grads, w = [gradients[n] for n in nodes], [weights[n] for n in nodes]
        share = float(sum(w)) / total if total > 0 else len(nodes) / len(gradients)
        groups.append(
            GroupDissimilarity(tuple(nodes), share, gradient_dissimilarity(grads, w), gradient_variance(grads, w))
        )
    return Dissimilarity(
        gamma=float(sum(g.share * g.gamma for g in groups)),
        variance=float(sum(g.share * g.variance for g in groups)),
        groups=tuple(groups),
    )
