"""The client side of secure aggregation: Flower's SecAgg+ mod around the project's handlers.

:func:`secure_sum_mod` is the ClientApp's mod. A message of a secure exchange
(it carries Flower's ``secaggplus_configs``) goes through
``flwr.client.mod.secaggplus_mod`` unchanged: key generation, share distribution,
masking and unmasking are Flower's. For the masked-vector stage the mod calls the
method's own handler (named by the server in :data:`~fedvq_app.protocol.SECAGG_RECORD`,
since every SecAgg+ stage travels as a plain ``train`` message) and this module turns
its reply into the one vector to sum (:data:`SUMMANDS`), written in the legacy
layout the mod reads (:mod:`fedvq_app.legacy_fitres`). Nothing of the reply leaves
the client but that masked vector and the names of its parts.

With ``secagg.mode`` on in the run config, a client refuses to answer an exchange
that is only summed (:data:`~fedvq_app.protocol.SUMMED_MESSAGE_TYPES`) in the clear.
"""

from __future__ import annotations

from collections.abc import Callable
from logging import WARNING

import numpy as np
from flwr.app import ConfigRecord, Context, Message
from flwr.client.mod import secaggplus_mod
from flwr.common.logger import log
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

from fedvq_app import protocol
from fedvq_app.config import ConfigError
from fedvq_app.errors import config_error_reply
from fedvq_app.legacy_fitres import vector_as_fitres
from fedvq_app.records import to_numpy

Vector = tuple[list[np.ndarray], dict[str, list[str]]]


def secure_handler(msg: Message) -> str | None:
    """The handler the server named for a secure exchange (None: an ordinary message)."""
    record = msg.content.config_records.get(protocol.SECAGG_RECORD)
    return None if record is None else str(record["handler"])


#: reply metrics that name a client rather than measure it: never summed
IDENTITY_METRICS = ("partition-id",)


def _numeric_metrics(reply: Message, names: list[str] | None = None) -> dict[str, float]:
    metrics = reply.content.metric_records.get(protocol.METRICS)
    values = dict(metrics) if metrics is not None else {}
    if names is None:
        names = sorted(
            k
            for k, v in values.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and k not in IDENTITY_METRICS
        )
    return {name: float(values.get(name, 0.0)) for name in names}


def _arrays(reply: Message) -> tuple[list[str], list[np.ndarray]]:
    names, arrays = [], []
    for record_name in sorted(reply.content.array_records):
        for key, value in to_numpy(reply.content.array_records[record_name]).items():
            names.append(f"{record_name}/{key}")
            arrays.append(np.asarray(value, dtype=np.float64))
    return names, arrays


def weighted(reply: Message, config: ConfigRecord) -> Vector:
    """FedAvg's example-weighted sum: every array and metric x weight / scale, then weight / scale.

    Arrays of the records the server lists in ``summed-records`` (a method's statistics, e.g. FedVQ's
    per-code counts and sums) are summed instead: / (scale x the bound the server gives their key).
    """
    key = str(config["weight-key"])
    scale = float(config["scale"])
    summed = set(config.get("summed-records", []))
    bounds = dict(zip(config.get("bound-names", []), config.get("bound-values", []), strict=True))
    metrics = _numeric_metrics(reply)
    factor = metrics.pop(key) / scale
    names, arrays = _arrays(reply)
    vector = []
    for name, array in zip(names, arrays, strict=True):
        record, array_key = name.split("/", 1)
        bound = float(bounds.get(f"{record}/{array_key}", 1.0))
        vector.append(array / (scale * bound) if record in summed else array * factor)
    tail = np.array([factor, *(factor * v for v in metrics.values())])
    return vector + [tail], {"names": names, "metric-names": list(metrics)}


def plain_sum(reply: Message, config: ConfigRecord) -> Vector:
    """Every array and the metrics the server named / (scale x that entry's bound, when the server gave one),
    after [1 / scale] (the server's check of how many clients are in the sum)."""
    scale = float(config["scale"])
    bounds = dict(zip(config.get("bound-names", []), config.get("bound-values", []), strict=True))
    names, arrays = _arrays(reply)
    metrics = _numeric_metrics(reply, [str(n) for n in config.get("metric-names", [])])
    tail = np.array([1.0 / scale, *(v / (scale * float(bounds.get(k, 1.0))) for k, v in metrics.items())])
    scaled = [
        a / (scale * float(bounds.get(name.split("/", 1)[1], 1.0))) for name, a in zip(names, arrays, strict=True)
    ]
    return scaled + [tail], {"names": names, "metric-names": list(metrics)}


def _moments(reply: Message) -> tuple[float, np.ndarray, np.ndarray]:
    arrays = to_numpy(reply.content[protocol.ARRAYS])
    count = float(_numeric_metrics(reply, ["num-examples"])["num-examples"])
    return count, arrays["mean"], arrays["m2"]


def _center(config: ConfigRecord, size: int) -> np.ndarray:
    return np.asarray(config.get("center", [0.0] * size), dtype=np.float64)


def kmeans_magnitudes(reply: Message, config: ConfigRecord) -> Vector:
    """Per feature, a one-hot power-of-two bucket of this site's bound on |x - center|
    (|mean - center| + sqrt(M2) bounds every row: M2 >= (x - mean)^2)."""
    count, mean, m2 = _moments(reply)
    low, buckets = int(config["low"]), int(config["buckets"])
    center = _center(config, len(mean))
    bound = np.abs(mean - center) + np.sqrt(np.maximum(m2, 0.0)) if count > 0 else np.zeros_like(mean)
    exponent = np.ceil(np.log2(np.maximum(bound, 2.0**low)))
    index = np.clip(exponent.astype(int) - low, 0, buckets - 1)
    onehot = np.zeros((len(mean), buckets))
    onehot[np.arange(len(mean)), index] = 1.0
    return [onehot], {"names": ["magnitudes"], "metric-names": []}


def kmeans_moments(reply: Message, config: ConfigRecord) -> Vector:
    """(count, sum (x - c) / s, sum (x - c)^2 / s^2) / scale: the server's center c and per-feature bounds
    s >= |x - c| (so every term is within [-1, 1]); computed from the centred moments, no cancellation."""
    count, mean, m2 = _moments(reply)
    s, scale = np.asarray(config["feature-scales"], dtype=np.float64), float(config["scale"])
    offset = mean - _center(config, len(mean))
    first = count * offset / s
    second = (m2 + count * offset**2) / s**2
    return [np.array([count / scale]), first / scale, second / scale], {
        "names": ["count", "sum", "sum-of-squares"],
        "metric-names": [],
    }


def kmeans_scatter(reply: Message, config: ConfigRecord) -> Vector:
    """(count, sum z / b, sum z z^T / b^2) / scale of the standardized rows (b >= |z|, from the server)."""
    arrays = to_numpy(reply.content[protocol.ARRAYS])
    count = float(_numeric_metrics(reply, ["num-examples"])["num-examples"])
    mean, scatter, scale = arrays["mean"], arrays["scatter"], float(config["scale"])
    bound = float(config.get("bound", 1.0))
    second = scatter + count * np.outer(mean, mean)
    return [np.array([count / scale]), count * mean / (scale * bound), second / (scale * bound**2)], {
        "names": ["count", "sum", "outer"],
        "metric-names": [],
    }


SUMMANDS: dict[str, Callable[[Message, ConfigRecord], Vector]] = {
    protocol.SUMMAND_WEIGHTED: weighted,
    protocol.SUMMAND_SUM: plain_sum,
    protocol.SUMMAND_KMEANS_MAGNITUDES: kmeans_magnitudes,
    protocol.SUMMAND_KMEANS_MOMENTS: kmeans_moments,
    protocol.SUMMAND_KMEANS_SCATTER: kmeans_scatter,
}


def summand_reply(msg: Message, reply: Message) -> Message:
    """The handler's reply as the legacy FitRes Flower's mod masks, plus the layout (names only)."""
    if reply.has_error():  # the mod cannot mask an error: end this client's part of the protocol here
        raise RuntimeError(f"secure aggregation: the handler failed: {reply.error.reason}")
    config = msg.content.config_records[protocol.SECAGG_RECORD]
    vector, layout = SUMMANDS[str(config["summand"])](reply, config)
    clip = float(config["clipping-range"])
    largest = max((float(np.abs(a).max()) for a in vector if a.size), default=0.0)
    if largest > clip:
        log(WARNING, "[fedvq] secure aggregation clips this client's values (largest %.3g > %.3g)", largest, clip)
    content = vector_as_fitres(vector)
    content.config_records[protocol.SECAGG_LAYOUT] = ConfigRecord({k: v for k, v in layout.items() if v})
    return Message(content, reply_to=msg)


def secure_sum_mod(msg: Message, context: Context, call_next) -> Message:
    """ClientApp mod: SecAgg+ for secure exchanges, the handler for the rest; no summed reply in the clear."""
    if RECORD_KEY_CONFIGS in msg.content.config_records:

        def summed(message: Message, ctx: Context) -> Message:
            return summand_reply(message, call_next(message, ctx))

        return secaggplus_mod(msg, context, summed)
    if context.run_config.get("secagg.mode", "off") != "off" and msg.metadata.message_type in (
        protocol.SUMMED_MESSAGE_TYPES
    ):
        err = ConfigError(
            f"config key 'secagg.mode' is {context.run_config['secagg.mode']!r}: this site answers a "
            f"{msg.metadata.message_type} message only through secure aggregation, never in the clear"
        )
        log(WARNING, "[fedvq] node %s refuses: %s", context.node_id, err)
        return config_error_reply(msg, err)
    return call_next(msg, context)
