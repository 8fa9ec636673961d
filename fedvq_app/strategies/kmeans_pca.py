"""Phase 3 of federated k-means: PCA of the standardized data from merged scatter matrices."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from flwr.app import Message

from fedvq_app.aggregation.kmeans import covariance, merge_scatter, principal_components
from fedvq_app.aggregation.validation import Schema
from fedvq_app.strategies.kmeans_phase import PCA, KMeansPhase, reply_arrays, reply_metrics


@dataclass(frozen=True)
class PCAResult:
    """Global principal components of the standardized data."""

    components: np.ndarray  # d x p
    explained_variance: np.ndarray  # p
    explained_variance_ratio: np.ndarray  # p
    covariance: np.ndarray  # d x d (ddof=1), equal to the pooled covariance
    count: int


class FederatedPCA(KMeansPhase):
    """Merges (count, mean, scatter) exactly and eigendecomposes the covariance."""

    message_type = PCA

    def __init__(self, num_features: int, num_components: int) -> None:
        super().__init__()
        self.num_features = num_features
        self.num_components = min(num_components, num_features)

    def expected_arrays(self) -> Schema:
        d = self.num_features
        return {"mean": ((d,), "float64"), "scatter": ((d, d), "float64")}

    def method_problem(self, msg: Message) -> str | None:
        scatter = reply_arrays(msg)["scatter"]
        if not np.allclose(scatter, scatter.T):
            return "scatter matrix is not symmetric"
        return None

    def aggregate(self, replies: Iterable[Message]) -> PCAResult:
        accepted = self.screen(replies)
        if not accepted:
            raise ValueError("no client returned covariance statistics")
        parts = []
        for msg in accepted:
            arrays = reply_arrays(msg)
            parts.append((int(reply_metrics(msg)["num-examples"]), arrays["mean"], arrays["scatter"]))
        count, _, scatter = merge_scatter(parts)
        return self.result(count, scatter)

    def result(self, count: int, scatter: np.ndarray) -> PCAResult:
        """Components of the pooled scatter (also what a secure sum gives, fedvq_app/server/kmeans_secure.py)."""
        cov = covariance(count, scatter)
        components, variance = principal_components(cov, self.num_components)
        total = float(np.trace(cov))
        ratio = variance / total if total > 0 else np.zeros_like(variance)
        return PCAResult(components, variance, ratio, cov, count)
