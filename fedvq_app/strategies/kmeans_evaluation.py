"""Phase 5 of federated k-means: inertia, silhouette and ARI from returned statistics."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import Message

from fedvq_app.aggregation.kmeans import ari_from_contingency
from fedvq_app.aggregation.validation import Schema
from fedvq_app.strategies.kmeans_phase import EVALUATION, KMeansPhase, reply_arrays, reply_metrics


class KMeansEvaluation(KMeansPhase):
    """Sums clients' inertia, silhouette sums and contingency tables.

    The silhouette is the simplified (centroid) silhouette averaged over each
    client's bounded sample; the ARI comes from the summed (cluster x class)
    contingency table and is exact.
    """

    message_type = EVALUATION

    def __init__(self, k: int, num_classes: int, silhouette_sample: int) -> None:
        super().__init__()
        self.k, self.num_classes, self.silhouette_sample = k, num_classes, silhouette_sample

    def config(self) -> dict:
        return {"num-classes": self.num_classes, "silhouette-sample": self.silhouette_sample}

    def expected_arrays(self) -> Schema:
        schema = {"counts": ((self.k,), "int64")}
        if self.num_classes:
            schema["contingency"] = ((self.k, self.num_classes), "int64")
        return schema

    def method_problem(self, msg: Message) -> str | None:
        metrics = reply_metrics(msg)
        missing = [k for k in ("inertia", "silhouette-sum", "silhouette-count") if k not in metrics]
        return f"missing metrics {missing}" if missing else None

    def aggregate(self, replies: Iterable[Message]) -> dict:
        accepted = self.screen(replies)
        if not accepted:
            raise ValueError("no client returned evaluation statistics")
        # summed reply by reply (no list of every client's decoded arrays: tens of MB at 10,000 clients)
        inertia = sil_sum = 0.0
        sil_count = num_samples = 0
        sizes, table, partitions = 0, 0, []
        for msg in accepted:
            m, a = reply_metrics(msg), reply_arrays(msg)
            inertia += m["inertia"]
            sil_sum += m["silhouette-sum"]
            sil_count += int(m["silhouette-count"])
            num_samples += int(m["num-examples"])
            sizes = sizes + a["counts"]
            if self.num_classes:
                table = table + a["contingency"]
            partitions.append(int(m["partition-id"]))
        return self.from_sums(inertia, sil_sum, sil_count, num_samples, sizes, table, partitions)

    def from_sums(self, inertia, silhouette_sum, silhouette_count, num_samples, sizes, table, partitions) -> dict:
        """The report from the federation's sums (also a secure sum's)."""
        inertia, sil_sum, sil_count = inertia, silhouette_sum, silhouette_count
        result = {
            "inertia": float(inertia),
            "silhouette": float(sil_sum) / sil_count if sil_count and self.k > 1 else None,
            "silhouette_samples": sil_count,
            "num_samples": num_samples,
            "cluster_sizes": np.asarray(sizes).tolist(),
            "evaluated_partitions": sorted(partitions),
        }
        if self.num_classes:
            result["ari"] = ari_from_contingency(np.asarray(table))
            result["contingency"] = np.asarray(table).tolist()
        return result
