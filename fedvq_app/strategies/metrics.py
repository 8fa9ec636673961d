"""Aggregation of client MetricRecords into the round's headline numbers."""

from __future__ import annotations

from flwr.app import MetricRecord, RecordDict

PER_CLIENT_KEYS = frozenset({"partition-id", "rotated", "domain", "label-counts"})


def aggregate_scalar_metrics(records: list[RecordDict], weight_key: str) -> MetricRecord:
    """Weighted mean of each scalar metric over the records that carry it; ids and lists are skipped.

    Flower's default would also average list values and client ids, which means
    nothing; per-client values are kept by the tracker from the replies instead. A
    metric only some clients report (e.g. an error on classes a client never saw) is
    the mean over those clients, not diluted by the others' weights.
    """
    totals: dict[str, float] = {}
    weights: dict[str, float] = {}
    for record in records:
        metrics = next(iter(record.metric_records.values()))
        weight = float(metrics[weight_key])
        for key, value in metrics.items():
            if key == weight_key or key in PER_CLIENT_KEYS or isinstance(value, list):
                continue
            totals[key] = totals.get(key, 0.0) + weight * float(value)
            weights[key] = weights.get(key, 0.0) + weight
    return MetricRecord({k: v / weights[k] for k, v in totals.items() if weights[k] > 0})
