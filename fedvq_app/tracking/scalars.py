"""One round of rounds.jsonl as flat ``tag -> number`` scalars (TensorBoard and MLflow share them).

Tags, per round:

* ``<metric>/mean``, ``/min``, ``/max`` over the clients' evaluation replies, for
  every numeric metric they report (``test-accuracy``, ``test-loss``,
  ``test-macro-f1``, ``test-balanced-accuracy``, ``own-test-accuracy``,
  ``val-accuracy``...);
* ``train/<key>`` and ``evaluate/<key>``: the strategy's aggregated metrics (train
  loss, k-means inertia, gradient dissimilarity Gamma...), except an evaluate metric the
  clients report themselves: its ``<metric>/mean`` is the one tag (no ``evaluate/test-accuracy``,
  an example-weighted near-duplicate, next to ``test-accuracy/mean``; no
  ``evaluate/generic-overall-accuracy`` next to an equal ``generic-accuracy/mean``);
* ``strategy/<path>``: every number in the method's own round report (codebook
  usage and perplexity, cluster count and norms, k-means centroid shift...), nested
  keys joined by ``/``, except numbers already logged as aggregated metrics
  (FedLoGe's group accuracies are ``evaluate/<mode>-<group>-accuracy``);
* ``communication/...``: bytes sent to and received from the clients;
* ``time/round_s``.
"""

from __future__ import annotations

import math
from typing import Any

#: per-client metrics that are ids or weights, not measurements
NOT_MEASUREMENTS = frozenset({"partition-id", "node-id", "num-examples", "rotated", "server-round"})
#: how deep a method's report is flattened (strategy/clusters/3/norm)
MAX_DEPTH = 4


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def _flatten(prefix: str, value: Any, out: dict[str, float], depth: int = 0) -> None:
    number = _number(value)
    if number is not None:
        out[prefix] = number
    elif isinstance(value, dict) and depth < MAX_DEPTH:
        for key, inner in value.items():
            _flatten(f"{prefix}/{key}", inner, out, depth + 1)


def _client_mean_of(key: str, value: float, spread: dict[str, float]) -> bool:
    """Whether an aggregated evaluate metric is the clients' mean already logged as ``<metric>/mean``:
    the same name (``test-accuracy``), or the same name with ``-overall`` and the same value
    (FedLoGe's ``generic-overall-accuracy`` is the mean of the clients' ``generic-accuracy``)."""
    if f"{key}/mean" in spread:
        return True
    alias = f"{key.replace('-overall-', '-')}/mean"
    return alias != f"{key}/mean" and alias in spread and abs(spread[alias] - value) <= 1e-12


def _already_logged(tag: str, value: float, logged: dict[str, float]) -> bool:
    """Whether a method-report number is an aggregated metric already logged under another name.

    FedLoGe reports ``modes/generic/overall`` and aggregates ``generic-overall-accuracy``: the
    same number. A report leaf is dropped when an aggregated ``train/`` or ``evaluate/`` tag holds
    the same value and its name contains the leaf's last two path parts.
    """
    parts = tag.split("/")[-2:]
    return any(
        other.startswith(("train/", "evaluate/")) and number == value and all(p in other for p in parts)
        for other, number in logged.items()
    )


def client_spread_scalars(clients: dict[str, dict[str, Any]]) -> dict[str, float]:
    """``<metric>/mean|min|max`` over the clients for every numeric metric they report."""
    values: dict[str, list[float]] = {}
    for metrics in clients.values():
        for key, value in metrics.items():
            number = None if key in NOT_MEASUREMENTS else _number(value)
            if number is not None:
                values.setdefault(key, []).append(number)
    out = {}
    for key, series in sorted(values.items()):
        out[f"{key}/mean"] = sum(series) / len(series)
        out[f"{key}/min"] = min(series)
        out[f"{key}/max"] = max(series)
    return out


def round_scalars(record: dict[str, Any]) -> dict[str, float]:
    """Every scalar of one rounds.jsonl record, by tag."""
    out = client_spread_scalars(record.get("evaluate", {}).get("clients", {}))
    aggregated: dict[str, float] = {}  # every aggregated number, logged here or as a clients' mean
    for phase in ("train", "evaluate"):
        for key, value in record.get(phase, {}).get("aggregated", {}).items():
            number = _number(value)
            if number is None:
                continue
            aggregated[f"{phase}/{key}"] = number
            if not (phase == "evaluate" and _client_mean_of(key, number, out)):
                out[f"{phase}/{key}"] = number
    strategy = {k: v for k, v in (record.get("strategy") or {}).items() if k != "round"}
    own: dict[str, float] = {}
    _flatten("strategy", strategy, own)
    out.update({tag: value for tag, value in own.items() if not _already_logged(tag, value, aggregated)})
    communication = record.get("communication")
    if communication:
        for key in (
            "sent_bytes",
            "received_bytes",
            "total_bytes",
            "per_client_mean_sent_bytes",
            "per_client_mean_received_bytes",
        ):
            out[f"communication/{key}"] = float(communication[key])
    if _number(record.get("wall_time_s")) is not None:
        out["time/round_s"] = float(record["wall_time_s"])
    if record.get("dropped") is not None:
        out["clients/dropped"] = float(len(record["dropped"]))
        out["clients/rejected"] = float(len(record.get("rejected", [])))
    return out


def summary_scalars(summary: dict[str, Any]) -> dict[str, float]:
    """The run's final figures (``final/...``) and communication totals, for MLflow's run metrics."""
    out: dict[str, float] = {}
    for key, value in (summary.get("final") or {}).items():
        number = None if key == "round" else _number(value)
        if number is not None:
            out[f"final/{key}"] = number
    communication = summary.get("communication") or {}
    for key, value in communication.items():
        number = _number(value)
        if number is not None:
            out[f"communication_total/{key}"] = number
    for key in ("wall_time_s", "rounds", "num_clients", "inertia", "silhouette", "ari"):
        number = _number(summary.get(key))
        if number is not None:
            out[f"run/{key}"] = number
    return out
