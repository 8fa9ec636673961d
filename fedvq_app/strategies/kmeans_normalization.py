"""Phase 2 of federated k-means: global mean and std from per-client (count, mean, M2) (Chan et al.)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import Message

from fedvq_app.aggregation.kmeans import merge_moments
from fedvq_app.aggregation.validation import Schema
from fedvq_app.strategies.kmeans_phase import NORMALIZATION, KMeansPhase, reply_arrays, reply_metrics


class Normalization(KMeansPhase):
    """Merges every client's feature moments into the global mean and std (ddof=0)."""

    message_type = NORMALIZATION

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def expected_arrays(self) -> Schema:
        vector = ((self.num_features,), "float64")
        return {"mean": vector, "m2": vector}

    def aggregate(self, replies: Iterable[Message]) -> tuple[np.ndarray, np.ndarray, int]:
        """(mean, std, total count); ValueError when no usable reply came back."""
        accepted = self.screen(replies)
        if not accepted:
            raise ValueError("no client returned normalization statistics")
        parts = []
        for msg in accepted:
            arrays = reply_arrays(msg)
            parts.append((int(reply_metrics(msg)["num-examples"]), arrays["mean"], arrays["m2"]))
        return merge_moments(parts)
