"""Phase 4b of federated k-means: one Lloyd step from per-centroid (sum, count).

The server advances ``n-init`` independent centroid sets ("runs") together -- the
federated counterpart of scikit-learn's ``n_init`` -- so a poor seeding cannot trap
the result in a worse optimum; :meth:`LloydStep.best_run` picks the run with the
lowest inertia once all have converged.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Message

from fedvq_app.aggregation.kmeans import centroid_shift, lloyd_update
from fedvq_app.aggregation.validation import Schema
from fedvq_app.strategies.kmeans_phase import (
    STEP,
    KMeansPhase,
    reply_arrays,
    reply_metrics,
    small_count_problem,
)
from fedvq_app.tracking.idsets import ranges


@dataclass
class StepResult:
    """What one round changed (every array has the runs as first axis)."""

    server_round: int
    centroids: np.ndarray  # (R, k, d) after the update
    previous: np.ndarray  # (R, k, d) sent this round
    shifts: np.ndarray  # (R,)
    counts: np.ndarray  # (R, k) summed shared counts
    empty: np.ndarray  # (R, k)
    inertia: np.ndarray  # (R,) at the centroids sent this round
    participating: list[int] = field(default_factory=list)
    withheld: int = 0
    #: partition id -> (sums (R, k, d), counts (R, k)) as received; kept only when the server is asked
    #: to write them (kmeans.debug-server-local-means), empty otherwise
    local: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    @property
    def shift(self) -> float:
        """The largest move of any run (the convergence test)."""
        return float(self.shifts.max())


class LloydStep(KMeansPhase):
    """Holds the global centroid sets; each round replaces them by the summed local means."""

    message_type = STEP

    def __init__(self, k: int, dim: int, threshold: int, runs: int = 1, keep_local: bool = False) -> None:
        super().__init__()
        #: keep every client's (sums, counts) in the result (debug output only; 10,000 clients x rounds of arrays)
        self.keep_local = keep_local
        self.centroids = np.zeros((runs, k, dim))  # the workflow sets the initial centroids
        self.threshold = threshold
        self.last: StepResult | None = None

    def expected_arrays(self) -> Schema:
        runs, k, dim = self.centroids.shape
        return {
            "sums": ((runs, k, dim), "float64"),
            "counts": ((runs, k), "int64"),
            "inertia": ((runs,), "float64"),
        }

    def method_problem(self, msg: Message) -> str | None:
        return small_count_problem(reply_arrays(msg)["counts"], self.threshold)

    def aggregate(self, server_round: int, replies: Iterable[Message]) -> StepResult | None:
        """New centroids from the accepted replies (None, centroids kept, when none came)."""
        self.last = None
        accepted = self.screen(replies)
        if not accepted:
            return None
        # summed reply by reply: at 10,000 clients a list of every reply's decoded arrays is tens of MB
        sums, counts, inertia = 0.0, 0, 0.0
        partitions, withheld, local = [], 0, {}
        for msg in accepted:
            arrays, metrics = reply_arrays(msg), reply_metrics(msg)
            sums, counts, inertia = sums + arrays["sums"], counts + arrays["counts"], inertia + arrays["inertia"]
            partitions.append(int(metrics["partition-id"]))
            withheld += int(metrics.get("withheld", 0))
            if self.keep_local:
                local[partitions[-1]] = (arrays["sums"], arrays["counts"])
        return self.from_sums(server_round, sums, counts, inertia, withheld, partitions, local)

    def from_sums(
        self,
        server_round: int,
        sums: np.ndarray,
        counts: np.ndarray,
        inertia: np.ndarray,
        withheld: int,
        partitions: list[int],
        local: dict | None = None,
    ) -> StepResult:
        """The step from the federation's summed (sums, counts, inertia) (also a secure sum's)."""
        previous = self.centroids
        self.centroids, empty = lloyd_update(previous, sums, counts)
        self.last = StepResult(
            server_round=server_round,
            centroids=self.centroids,
            previous=previous,
            shifts=np.atleast_1d(centroid_shift(previous, self.centroids)),
            counts=counts,
            empty=empty,
            inertia=inertia,
            participating=sorted(partitions),
            withheld=withheld,
            local=local or {},
        )
        return self.last

    def best_run(self) -> int:
        """The run with the lowest inertia in the last round (0 before any round)."""
        return int(np.argmin(self.last.inertia)) if self.last is not None else 0

    def round_report(self) -> dict:
        """Per-round statistics for rounds.jsonl."""
        if self.last is None:
            return {}
        r, best = self.last, self.best_run()
        return {
            "centroid_shift": r.shift,
            "inertia_before_update": float(r.inertia[best]),
            "best_run": best,
            "run_inertia": r.inertia.tolist(),
            "run_shifts": r.shifts.tolist(),
            "cluster_counts": r.counts[best].tolist(),
            "empty_clusters": np.flatnonzero(r.empty[best]).tolist(),
            "participating_partitions": ranges(r.participating),
            "withheld_local_means": r.withheld,
        }
