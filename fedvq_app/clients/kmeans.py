"""The federated k-means client: one handler per message type of the workflow.

Every reply carries statistics only -- sizes, feature moments, a scatter matrix,
per-centroid (sum, count), inertia and silhouette sums, contingency counts -- never
a row. The client is stateless between messages: each instruction carries the
global transform (mean, std, PCA components) it needs. Its privacy guard zeroes
any local mean built from fewer than ``kmeans.privacy-threshold`` rows before the
reply is built; a SuperNode can raise (never lower) that threshold with the node
config ``privacy-threshold``.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Context, Message, MetricRecord, RecordDict
from sklearn.cluster import KMeans

from fedvq_app.aggregation import kmeans as km
from fedvq_app.config import Settings, resolve_log_root
from fedvq_app.data.tabular import TabularPartition, load_tabular_partition
from fedvq_app.kmeans_records import read_transform
from fedvq_app.options import KMeansOptions
from fedvq_app.protocol import ARRAYS, CONFIG, KMEANS_ACTIONS, METRICS
from fedvq_app.protocol import KMEANS_CENTROIDS as CENTROIDS
from fedvq_app.protocol import KMEANS_CLIENT_LOGS as CLIENT_LOGS_KEY
from fedvq_app.records import to_numpy, to_record
from fedvq_app.tracking.kmeans_logs import KMeansLogs
from fedvq_app.training.threads import limit_native_threads

#: message type -> client method; the ClientApp registers one handler per entry (via the registry)
ACTIONS = KMEANS_ACTIONS
NODE_THRESHOLD_KEY = "privacy-threshold"


class KMeansClient:
    """Answers the k-means workflow's messages for one partition."""

    def __init__(self, settings: Settings, context: Context) -> None:
        self.settings = settings
        self.options = settings.options(KMeansOptions)
        self.partition_id = int(context.node_config["partition-id"])
        self.num_partitions = int(context.node_config["num-partitions"])
        limit_native_threads(settings.train.num_threads)
        self.threshold = max(self.options.privacy_threshold, int(context.node_config.get(NODE_THRESHOLD_KEY, 0)))
        self.data: TabularPartition = load_tabular_partition(
            self.options.data_source,
            self.partition_id,
            self.num_partitions,
            data_path=self.options.data_path,
            fallback_dir=settings.dataset.data_dir,
            split=self.options.split,
            skew_alpha=self.options.skew_alpha,
            seed=settings.seed,
        )

    # ------------------------------------------------------------------ helpers
    def _reply(self, msg: Message, metrics: dict, arrays: dict[str, np.ndarray] | None = None) -> Message:
        records = {
            METRICS: MetricRecord({"num-examples": len(self.data.x), "partition-id": self.partition_id, **metrics})
        }
        if arrays is not None:
            records[ARRAYS] = to_record(arrays)
        return Message(content=RecordDict(records), reply_to=msg)

    def _logs(self, msg: Message) -> KMeansLogs | None:
        """This run's log folder on this machine (None when client logs are off).

        The server turns them on per message (``client-logs``): only when ``kmeans.client-logs``
        is on and the federation has at most ``tracking.per-client-limit`` clients.
        """
        config = msg.content[CONFIG]
        name = str(config.get("experiment", ""))
        if not bool(config.get(CLIENT_LOGS_KEY, False)):
            return None
        if not self.options.client_logs or not name or "/" in name or "\\" in name or name in (".", ".."):
            return None
        return KMeansLogs(resolve_log_root(self.settings.log_dir) / name)

    # ------------------------------------------------------------------ phases
    def handshake(self, msg: Message) -> Message:
        """Metadata only: rows, features, label classes (0 = unlabeled), partition id."""
        return self._reply(msg, {"num-features": self.data.num_features, "num-classes": self.data.num_classes})

    def normalization_stats(self, msg: Message) -> Message:
        """Per-feature mean and M2 (sum of squared deviations); the count is num-examples."""
        _, mean, m2 = km.local_moments(self.data.x)
        return self._reply(msg, {}, {"mean": mean, "m2": m2})

    def covariance_stats(self, msg: Message) -> Message:
        """(count, mean, scatter) of the globally standardized rows."""
        _, mean, scatter = km.local_scatter(read_transform(msg.content).standardize(self.data.x))
        return self._reply(msg, {}, {"mean": mean, "scatter": scatter})

    def init_summaries(self, msg: Message) -> Message:
        """Local k-means; the (sum, count) of each local cluster that passes the privacy filter."""
        transform = read_transform(msg.content)
        config = msg.content[CONFIG]
        local_k = int(config["local-k"])
        z = transform.cluster_space(self.data.x)
        fitted = min(local_k, len(z))
        seed = int(np.random.SeedSequence([int(config["seed"]), self.partition_id]).generate_state(1)[0])
        labels = KMeans(n_clusters=fitted, n_init=3, random_state=seed).fit_predict(z)
        raw_sums, counts = km.cluster_sums(z, labels, local_k)
        sums, shared_counts, withheld = km.privacy_filter(raw_sums, counts, self.threshold)
        logs = self._logs(msg)
        if logs is not None:
            logs.write_client_points(self.partition_id, transform.view_of_rows(self.data.x))
            logs.client_log(
                self.partition_id,
                f"init: local k-means with {fitted} clusters on {len(z)} rows, "
                f"counts {counts.tolist()}, withheld {int(withheld.sum())}",
            )
        return self._reply(msg, {"withheld": int(withheld.sum())}, {"sums": sums, "counts": shared_counts})

    def lloyd_step(self, msg: Message) -> Message:
        """Assign rows to the nearest global centroid of every run; return the filtered (sum, count)."""
        transform = read_transform(msg.content)
        centroids = to_numpy(msg.content[ARRAYS])[CENTROIDS]  # (runs, k, d)
        z = transform.cluster_space(self.data.x)
        raw_sums, counts, inertia, labels = km.chain_statistics(z, centroids)
        sums, shared_counts, withheld = km.privacy_filter(raw_sums, counts, self.threshold)
        server_round = int(msg.content[CONFIG].get("server-round", 0))
        logs = self._logs(msg)
        if logs is not None:
            self._log_step(logs, server_round, counts, sums, shared_counts, withheld, labels)
        arrays = {"sums": sums, "counts": shared_counts, "inertia": inertia}
        return self._reply(msg, {"withheld": int(withheld.sum())}, arrays)

    def _log_step(self, logs, server_round, counts, sums, shared_counts, withheld, labels) -> None:
        """What it shared (local means and counts of every run), its counts before the privacy filter,
        and the row assignments: one line of the round's file, on this disk."""
        metadata = {
            "num_samples": int(labels.shape[1]),
            "privacy_threshold": self.threshold,
            "sample_counts_before_filter": counts.tolist(),
            "sample_counts_after_filter": shared_counts.tolist(),
            "withheld_clusters": [np.flatnonzero(w).tolist() for w in withheld],
        }
        with np.errstate(invalid="ignore", divide="ignore"):
            means = np.where(shared_counts[..., None] > 0, sums / shared_counts[..., None], np.nan)
        logs.write_client_round(self.partition_id, server_round, means, shared_counts, labels, metadata)
        logs.client_log(
            self.partition_id,
            f"round {server_round}: {int(withheld.sum())} local means withheld "
            f"(threshold {self.threshold}); counts of run 0 {counts[0].tolist()}",
        )

    def final_evaluation(self, msg: Message) -> Message:
        """Inertia, silhouette over a bounded sample, cluster sizes and the contingency table."""
        transform = read_transform(msg.content)
        config = msg.content[CONFIG]
        centroids = to_numpy(msg.content[ARRAYS])[CENTROIDS]
        z = transform.cluster_space(self.data.x)
        labels, d2 = km.assign(z, centroids)
        k = len(centroids)
        sample = self._silhouette_rows(len(z), int(config["silhouette-sample"]))
        silhouette = km.simplified_silhouette(z[sample], centroids)
        arrays = {"counts": np.bincount(labels, minlength=k).astype(np.int64)}
        num_classes = int(config["num-classes"])
        if num_classes and self.data.labels is not None:
            arrays["contingency"] = km.contingency(labels, self.data.labels, k, num_classes)
        metrics = {
            "inertia": float(d2.sum()),
            "silhouette-sum": float(silhouette.sum()),
            "silhouette-count": int(len(sample)),
        }
        logs = self._logs(msg)
        if logs is not None:
            logs.client_log(
                self.partition_id,
                f"evaluation: inertia {metrics['inertia']:.4f}, cluster sizes {arrays['counts'].tolist()}",
            )
        return self._reply(msg, metrics, arrays)

    def _silhouette_rows(self, n: int, limit: int) -> np.ndarray:
        """A seeded sample of at most ``limit`` rows (all rows when limit >= n)."""
        if limit >= n:
            return np.arange(n)
        rng = np.random.default_rng([self.settings.seed, self.partition_id])
        return np.sort(rng.choice(n, size=limit, replace=False))
