"""Phase 4a of federated k-means: initial centroids from clients' local means (no raw rows).

Every client runs k-means locally (``local-k`` clusters) and returns the per-cluster
(sum, count) that pass its privacy filter; the server draws ``n-init`` weighted
k-means++ seedings from those local means (Garst & Reinders, ADMA 2024, initialise
from local means too). Each seeding starts one of the Lloyd runs advanced together.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import Message

from fedvq_app.aggregation.kmeans import seed_from_summaries
from fedvq_app.aggregation.validation import Schema
from fedvq_app.config import ConfigError
from fedvq_app.strategies.kmeans_phase import INIT, KMeansPhase, reply_arrays, small_count_problem


class SummaryInit(KMeansPhase):
    """``runs`` x k initial centroids from the union of clients' filtered local means."""

    message_type = INIT

    def __init__(self, k: int, local_k: int, dim: int, threshold: int, seed: int, runs: int) -> None:
        super().__init__()
        self.k, self.local_k, self.dim = k, local_k, dim
        self.threshold, self.seed, self.runs = threshold, seed, runs
        self.num_summaries = 0

    def config(self) -> dict:
        return {"local-k": self.local_k, "seed": self.seed}

    def expected_arrays(self) -> Schema:
        return {"sums": ((self.local_k, self.dim), "float64"), "counts": ((self.local_k,), "int64")}

    def method_problem(self, msg: Message) -> str | None:
        return small_count_problem(reply_arrays(msg)["counts"], self.threshold)

    def aggregate(self, replies: Iterable[Message]) -> np.ndarray:
        """Initial centroid sets, shape (runs, k, dim)."""
        accepted = self.screen(replies)
        if not any((reply_arrays(m)["counts"] > 0).any() for m in accepted):
            reasons = "; ".join(f"node {n}: {r}" for n, r in self.rejections[:3]) or "every local mean withheld"
            raise ConfigError(
                f"config key 'kmeans.privacy-threshold' ({self.threshold}): no client could share a local mean for "
                f"the initialisation ({reasons}); lower it, lower kmeans.local-k, or give the clients more rows"
            )
        sums = np.concatenate([reply_arrays(m)["sums"] for m in accepted])
        counts = np.concatenate([reply_arrays(m)["counts"] for m in accepted])
        shared = counts > 0
        self.num_summaries = int(shared.sum())
        means = sums[shared] / counts[shared, None]
        return seed_from_summaries(means, counts[shared], self.k, self.runs, self.seed)
