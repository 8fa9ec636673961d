"""Weighted averages of parameter dictionaries."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def normalized_weights(weights: Sequence[float]) -> np.ndarray:
    """Weights scaled to sum to 1 (uniform when they sum to 0)."""
    w = np.asarray(weights, dtype=np.float64)
    if w.size == 0:
        raise ValueError("no weights given")
    if (w < 0).any() or not np.isfinite(w).all():
        raise ValueError(f"weights must be finite and >= 0, got {w.tolist()}")
    total = w.sum()
    return np.full_like(w, 1.0 / w.size) if total == 0 else w / total


def weighted_average(arrays: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float]) -> dict[str, np.ndarray]:
    """Key-wise weighted mean; every mapping must have the same keys; dtypes are kept."""
    w = normalized_weights(weights)
    keys = list(arrays[0])
    out: dict[str, np.ndarray] = {}
    for key in keys:
        stacked = np.stack([np.asarray(a[key], dtype=np.float64) for a in arrays])
        mean = np.tensordot(w, stacked, axes=1)
        out[key] = mean.astype(np.asarray(arrays[0][key]).dtype)
    return out
