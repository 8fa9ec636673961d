"""Conversions between numpy dictionaries and Flower ArrayRecords."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord


def to_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """Numpy dict -> ArrayRecord (order kept)."""
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def to_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    """ArrayRecord -> numpy dict (order kept)."""
    return {k: v.numpy() for k, v in record.items()}
