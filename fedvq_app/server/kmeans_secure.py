"""Federated k-means under secure aggregation: every statistic the server uses reaches it as a sum.

The phases of :mod:`fedvq_app.server.kmeans_workflow` exchange sums only (normalization
moments, PCA scatter, each Lloyd step's per-cluster sums and counts, the evaluation's
inertia, silhouette sums and contingency table), so with ``secagg.mode = secaggplus``
each goes through :func:`fedvq_app.server.secure_sum.secure_sum` instead.

SecAgg+ sums fixed-point numbers: each entry of a client's vector is clipped to
[-1, 1] here and quantized to ``secagg.quantization-range`` levels. Every summand is
therefore divided by public bounds that no row can exceed, and those bounds come from
earlier *sums* (nothing a single site reveals):

1. normalization, pass 1: per feature, how many sites' rows reach each power of two
   (each site's bound |mean| + sqrt(M2) >= |x|; a one-hot histogram, summed) -> s;
2. pass 2: (count, sum x / s) -> a first mean mu0;
3. pass 3: the same histogram around mu0 -> s' >= |x - mu0|;
4. pass 4: (sum (x - mu0) / s', sum (x - mu0)^2 / s'^2) -> mean and std, centred, so a
   feature far from zero keeps its variance (see ``aggregation.kmeans.local_moments``);
5. PCA: (count, sum z / B, sum z z^T / B^2) with B = ||(s' + |mu - mu0|) / std||, a bound
   on every standardized row's norm;
6. each Lloyd step: sums / B, counts, inertia / (B + max ||c||)^2, withheld counts;
7. evaluation: counts, contingency table, inertia, silhouette sums.

Every part is also divided by the largest site size (the handshake's, public), so each
entry is within [-1, 1]. The counts come back within ``sites x 2 / levels x largest site``
of integers and are rounded. The privacy threshold still acts on every client (it withholds
its small local means itself); the server can no longer double-check one site's counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedvq_app import protocol
from fedvq_app.aggregation.kmeans import MIN_STD, FeatureTransform
from fedvq_app.config import Settings
from fedvq_app.errors import RunFailed
from fedvq_app.server.secure_sum import SecureSum, secure_sum
from fedvq_app.strategies.kmeans_evaluation import KMeansEvaluation
from fedvq_app.strategies.kmeans_handshake import Federation
from fedvq_app.strategies.kmeans_normalization import Normalization
from fedvq_app.strategies.kmeans_pca import FederatedPCA, PCAResult
from fedvq_app.strategies.kmeans_step import LloydStep, StepResult

#: every statistic is scaled into [-1, 1] before SecAgg+ quantizes it
CLIP = 1.0
#: power-of-two buckets of the magnitude histograms: 2**LOW .. 2**(LOW + BUCKETS - 1)
LOW, BUCKETS = -40, 100


@dataclass
class SecureNormalization:
    mean: np.ndarray
    std: np.ndarray
    count: int
    #: per feature, a bound on |standardized value| of every row
    z_bounds: np.ndarray

    @property
    def row_bound(self) -> float:
        """A bound on the norm of every standardized row (and of its PCA projection)."""
        return float(np.linalg.norm(self.z_bounds))


class SecureKMeans:
    """The k-means phases' sums through SecAgg+ for the nodes of a federation."""

    def __init__(self, grid: Grid, settings: Settings, federation: Federation, timeout: float) -> None:
        self.grid, self.settings, self.timeout = grid, settings, timeout
        #: the largest site (public since the handshake): no count exceeds it
        self.scale = float(max(c.num_samples for c in federation.clients.values()))
        self.normalization: SecureNormalization | None = None
        self.exchanges = 0

    # ------------------------------------------------------------------ plumbing
    def _sum(self, messages: list[Message], summand: str, extra: dict[str, Any]) -> SecureSum:
        """A secure sum the job cannot do without (set-up phases, evaluation): none stops the run."""
        result = self._try_sum(messages, summand, extra)
        if result is None:
            phase = messages[0].metadata.message_type if messages else ""
            raise RunFailed(f"[kmeans] {phase}: secure aggregation failed (see the warning above)")
        return result

    def _try_sum(
        self, messages: list[Message], summand: str, extra: dict[str, Any], server_round: int = 0
    ) -> SecureSum | None:
        phase = messages[0].metadata.message_type if messages else ""
        self.exchanges += 1
        result = secure_sum(
            self.grid,
            messages,
            self.settings.secagg,
            handler=protocol.KMEANS_ACTIONS[phase],
            summand=summand,
            server_round=server_round or self.exchanges,
            timeout=self.timeout,
            clipping_range=CLIP,
            extra={"scale": self.scale, **extra},
        )
        return result

    def _parts(self, result: SecureSum) -> dict[str, np.ndarray]:
        *arrays, tail = result.total
        named = {name.split("/", 1)[1]: a for name, a in zip(result.names, arrays, strict=True)}
        named.update({name: np.asarray(v) for name, v in zip(result.metric_names, tail[1:], strict=True)})
        return named

    # ------------------------------------------------------------------ phases
    def _magnitudes(self, messages: list[Message], center: np.ndarray) -> np.ndarray:
        result = self._sum(
            messages,
            protocol.SUMMAND_KMEANS_MAGNITUDES,
            {"low": LOW, "buckets": BUCKETS, "center": center.tolist()},
        )
        histogram = result.total[0]  # (features, buckets): how many sites reach each power of two
        top = np.array([np.flatnonzero(row > 0.5).max(initial=0) for row in histogram])
        return 2.0 ** (LOW + top)

    def _moments(self, messages: list[Message], center: np.ndarray, scales: np.ndarray):
        result = self._sum(
            messages,
            protocol.SUMMAND_KMEANS_MOMENTS,
            {"center": center.tolist(), "feature-scales": scales.tolist()},
        )
        count = float(result.total[0][0]) * self.scale
        first = result.total[1] * self.scale * scales
        second = result.total[2] * self.scale * scales**2
        return int(round(count)), first, second

    def normalize(self, phase: Normalization, nodes: list[int], config: dict) -> SecureNormalization:
        """Global mean and std (ddof=0) from four secure sums (see the module docstring)."""

        def messages() -> list[Message]:
            return phase.instructions(nodes, config)

        d = phase.num_features
        zero = np.zeros(d)
        scales = self._magnitudes(messages(), zero)
        count, first, _ = self._moments(messages(), zero, scales)
        if count <= 0:
            raise RunFailed("[kmeans] normalization: the secure sum holds no rows")
        mu0 = first / count
        spread = self._magnitudes(messages(), mu0)
        count, first, second = self._moments(messages(), mu0, spread)
        shift = first / count
        mean = mu0 + shift
        std = np.sqrt(np.maximum(second / count - shift**2, 0.0))
        std[std < MIN_STD] = 1.0
        z_bounds = (spread + np.abs(shift)) / std
        self.normalization = SecureNormalization(mean, std, count, z_bounds)
        return self.normalization

    def pca(self, phase: FederatedPCA, nodes: list[int], config: dict, transform: FeatureTransform) -> PCAResult:
        bound = self._row_bound()
        result = self._sum(
            phase.instructions(nodes, config, transform=transform), protocol.SUMMAND_KMEANS_SCATTER, {"bound": bound}
        )
        count = int(round(float(result.total[0][0]) * self.scale))
        total = result.total[1] * self.scale * bound
        outer = result.total[2] * self.scale * bound**2
        mean = total / count
        scatter = outer - count * np.outer(mean, mean)
        return phase.result(count, (scatter + scatter.T) / 2)

    def _row_bound(self) -> float:
        if self.normalization is None:
            raise RuntimeError("normalize() first")
        return self.normalization.row_bound

    def _sum_bounds(self, centroids: np.ndarray) -> dict[str, float]:
        reach = self._row_bound() + float(np.linalg.norm(centroids, axis=-1).max())
        return {"sums": self._row_bound(), "counts": 1.0, "inertia": reach**2, "withheld": 1.0}

    def step(
        self, step: LloydStep, server_round: int, messages: list[Message], federation: Federation
    ) -> tuple[StepResult | None, list[Message]]:
        """One Lloyd step from the secure sum; also the reply that stands for it (for the round's record)."""
        bounds = self._sum_bounds(step.centroids)
        result = self._try_sum(
            messages,
            protocol.SUMMAND_SUM,
            {"metric-names": ["withheld"], "bound-names": list(bounds), "bound-values": list(bounds.values())},
            server_round=server_round,
        )
        step.rejections = []
        if result is None:
            step.accepted_nodes = []
            step.last = None
            return None, []
        parts = {name: value * self.scale * bounds.get(name, 1.0) for name, value in self._parts(result).items()}
        step.accepted_nodes = list(result.contributors)
        partitions = sorted(federation.partition_of(n) for n in result.contributors)
        outcome = step.from_sums(
            server_round,
            parts["sums"],
            np.rint(parts["counts"]).astype(np.int64),
            parts["inertia"],
            int(round(float(parts["withheld"]))),
            partitions,
        )
        return outcome, [stand_in_reply(messages, result)]

    def evaluate(
        self,
        phase: KMeansEvaluation,
        federation: Federation,
        config: dict,
        transform: FeatureTransform,
        centroids: np.ndarray,
    ) -> dict:
        bounds = {**self._sum_bounds(centroids[None]), "silhouette-sum": 1.0, "silhouette-count": 1.0}
        names = ["inertia", "silhouette-sum", "silhouette-count", "num-examples"]
        arrays = {protocol.KMEANS_CENTROIDS: centroids}
        messages = phase.instructions(federation.nodes, config, transform=transform, arrays=arrays)
        result = self._sum(
            messages,
            protocol.SUMMAND_SUM,
            {"metric-names": names, "bound-names": list(bounds), "bound-values": list(bounds.values())},
        )
        parts = {name: value * self.scale * bounds.get(name, 1.0) for name, value in self._parts(result).items()}
        phase.accepted_nodes, phase.rejections = list(result.contributors), []
        return phase.from_sums(
            inertia=float(parts["inertia"]),
            silhouette_sum=float(parts["silhouette-sum"]),
            silhouette_count=int(round(float(parts["silhouette-count"]))),
            num_samples=int(round(float(parts["num-examples"]))),
            sizes=np.rint(parts["counts"]).astype(np.int64),
            table=np.rint(parts["contingency"]).astype(np.int64) if "contingency" in parts else None,
            partitions=[federation.partition_of(n) for n in result.contributors],
        )


def stand_in_reply(messages: list[Message], result: SecureSum) -> Message:
    """A reply naming the nodes in a secure sum (the tracker counts them as answered, not dropped)."""
    sent = next(m for m in messages if m.metadata.dst_node_id == result.contributors[0])
    content = RecordDict({protocol.SECAGG_CONTRIBUTORS: ConfigRecord({"nodes": list(result.contributors)})})
    return Message(content, reply_to=sent)
