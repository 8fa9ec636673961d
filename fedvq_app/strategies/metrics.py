"""Aggregation of client MetricRecords into the round's headline numbers."""

from __future__ import annotations

from flwr.app import MetricRecord, RecordDict

PER_CLIENT_KEYS = frozenset({"partition-id", "rotated", "domain", "label-counts"})


def aggregate_scalar_metrics(records: list[RecordDict], weight_key: str) -> MetricRecord:
    """Weighted mean of the scalar metrics; per-client ids and list metrics are skipped.

    Flower's default would also average list values and client ids, which means
    nothing; per-client values are kept by the tracker from the replies instead.
    """
    totals: dict[str, float] = {}
    weight_sum = 0.0
    for record in records:
        metrics = next(iter(record.metric_records.values()))
        weight = float(metrics[weight_key])
        weight_sum += weight
        for key, value in metrics.items():
            if key == weight_key or key in PER_CLIENT_KEYS or isinstance(value, list):
                continue
            totals[key] = totals.get(key, 0.0) + weight * float(value)
    if weight_sum <= 0:
        return MetricRecord()
    return MetricRecord({k: v / weight_sum for k, v in totals.items()})
