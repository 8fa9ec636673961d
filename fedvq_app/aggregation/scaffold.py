"""SCAFFOLD's server-side updates (Karimireddy et al., 2020, option II)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def server_step(
    global_arrays: Mapping[str, np.ndarray], averaged: Mapping[str, np.ndarray], server_lr: float
) -> dict[str, np.ndarray]:
    """x <- x + lr_g * (mean(y_i) - x)."""
    return {
        k: (global_arrays[k] + server_lr * (averaged[k] - global_arrays[k])).astype(global_arrays[k].dtype)
        for k in global_arrays
    }


def control_update(
    control: Mapping[str, np.ndarray], deltas: Sequence[Mapping[str, np.ndarray]], participation: float
) -> dict[str, np.ndarray]:
    """c <- c + (|S| / N) * mean_i(delta c_i)."""
    if not deltas:
        return dict(control)
    return {
        k: (control[k] + participation * np.mean([d[k] for d in deltas], axis=0)).astype(control[k].dtype)
        for k in control
    }
