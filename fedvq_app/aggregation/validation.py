"""Checks that decide whether a client's reply may enter aggregation."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

Schema = dict[str, tuple[tuple[int, ...], str]]


def array_schema(arrays: Mapping[str, np.ndarray]) -> Schema:
    """Name -> (shape, dtype) of a set of arrays."""
    return {k: (tuple(np.shape(v)), str(np.asarray(v).dtype)) for k, v in arrays.items()}


def array_problem(expected: Schema, got: Mapping[str, np.ndarray]) -> str | None:
    """Why ``got`` does not match ``expected`` (keys, shapes, dtypes, finiteness), or None."""
    missing = sorted(set(expected) - set(got))
    if missing:
        return f"missing arrays {missing[:3]}{'...' if len(missing) > 3 else ''}"
    extra = sorted(set(got) - set(expected))
    if extra:
        return f"unexpected arrays {extra[:3]}{'...' if len(extra) > 3 else ''}"
    for name, (shape, dtype) in expected.items():
        value = np.asarray(got[name])
        if tuple(value.shape) != shape:
            return f"array '{name}' has shape {tuple(value.shape)}, expected {shape}"
        if str(value.dtype) != dtype:
            return f"array '{name}' has dtype {value.dtype}, expected {dtype}"
        if value.dtype.kind in "fc" and not np.isfinite(value).all():
            return f"array '{name}' contains NaN or inf"
    return None


def metric_problem(metrics: Mapping[str, object], weight_key: str) -> str | None:
    """Why a metric record is unusable (missing/invalid weight, non-finite values), or None."""
    weight = metrics.get(weight_key)
    if isinstance(weight, bool) or not isinstance(weight, int | float):
        return f"metric '{weight_key}' missing or not a number"
    if not math.isfinite(weight) or weight <= 0:
        return f"metric '{weight_key}' is {weight}, expected a positive number"
    if weight != int(weight):
        return f"metric '{weight_key}' is {weight}, expected a whole number of examples"
    for key, value in metrics.items():
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            return f"metric '{key}' contains NaN or inf"
    return None
