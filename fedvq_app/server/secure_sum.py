"""Secure sums: one exchange whose replies the server only adds up, through Flower's SecAgg+.

:func:`secure_sum` sends the project's instructions through the four SecAgg+ stages
(:mod:`fedvq_app.server.secaggplus_legacy` drives Flower's own workflow) and returns
the sum of the clients' vectors -- never one client's vector. Each message names the
client handler and the summand kind (:data:`~fedvq_app.protocol.SECAGG_RECORD`);
the client encodes its reply (fedvq_app/clients/secure_sum.py) and Flower's mod masks it.

Error of the sum: Flower quantizes each entry of [-c, c] to ``L`` levels (``quantization-range``;
0 = auto: the largest power of two with ``sampled x L < 2**32``) with stochastic rounding,
under one level per client, so each summed entry is within ``contributors x 2c / L`` of the exact sum
(:meth:`~fedvq_app.config.SecAggSettings.sum_error_bound`); entries beyond c are clipped
(the client logs a warning).

Dropouts: a client lost after the key exchange is recovered from its neighbours'
shares, as the protocol does, as long as ``reconstruction-threshold`` of them answer;
otherwise the exchange is dropped with a warning naming the stage and the nodes, and
the caller goes on as after a round nobody answered.

:func:`train_exchange` is what the round loop calls instead of its plain send when
``secagg.mode`` is on: it returns the federation's example-weighted mean as one reply
(see docs/privacy.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from fedvq_app import protocol
from fedvq_app.config import ConfigError, SecAggSettings, Settings
from fedvq_app.records import to_numpy, to_record
from fedvq_app.server.secaggplus_legacy import run_stages
from fedvq_app.strategies.contract import innermost
from fedvq_app.tracking.idsets import count_and_named

#: Flower's SecAgg+ sums integers modulo 2**32 (its default modulus)
MODULUS = 2**32

Exchange = Callable[[Grid, list[Message], float], tuple[list[int], list[Message]]]


@dataclass
class SecureSum:
    """The sum of the contributors' vectors (each scaled as its summand kind says) and who is in it."""

    total: list[np.ndarray]
    contributors: list[int]
    sampled: list[int]
    names: list[str] = field(default_factory=list)
    metric_names: list[str] = field(default_factory=list)
    #: largest error of one summed entry, in the units of the vectors
    error_bound: float = 0.0


def flower_params(secagg: SecAggSettings, clipping_range: float, clients: int) -> dict[str, Any]:
    """``SecAggPlusWorkflow``'s arguments (Flower: an int > 2 is a count, a float a fraction)."""

    def count_or_fraction(value: float) -> int | float:
        return int(value) if value > 1 else float(value)

    return {
        "num_shares": count_or_fraction(secagg.num_shares),
        "reconstruction_threshold": count_or_fraction(secagg.reconstruction_threshold),
        "clipping_range": float(clipping_range),
        "quantization_range": int(secagg.levels(clients)),
    }


def check_capacity(secagg: SecAggSettings, clients: int) -> None:
    """The integers of the sum must not wrap: clients x quantization-range < 2**32."""
    if clients * secagg.levels(clients) >= MODULUS:
        raise ConfigError(
            f"config key 'secagg.quantization-range' has invalid value {secagg.quantization_range}: with "
            f"{clients} clients the sum would wrap modulo 2**32; expected < {MODULUS // clients}"
        )


def secure_sum(
    grid: Grid,
    messages: list[Message],
    secagg: SecAggSettings,
    *,
    handler: str,
    summand: str,
    server_round: int,
    timeout: float | None,
    clipping_range: float,
    extra: Mapping[str, Any] | None = None,
) -> SecureSum | None:
    """The sum of every answering client's summand of ``messages``' replies (None: the exchange dropped)."""
    if not messages:
        return None
    sampled = [m.metadata.dst_node_id for m in messages]
    if len(sampled) < 3:
        log(WARNING, "[fedvq] secure aggregation needs at least 3 clients, %d sampled: exchange dropped", len(sampled))
        return None
    check_capacity(secagg, len(sampled))
    instructions = ConfigRecord(
        {"handler": handler, "summand": summand, "clipping-range": float(clipping_range), **dict(extra or {})}
    )
    contents = {}
    for msg in messages:
        records = dict(msg.content.items())
        records[protocol.SECAGG_RECORD] = instructions
        contents[msg.metadata.dst_node_id] = RecordDict(records)
    outcome = run_stages(grid, contents, server_round, flower_params(secagg, clipping_range, len(sampled)), timeout)
    if outcome.total is None:
        silent = sorted(set(sampled) - set(outcome.keyed))
        after_keys = sorted(set(outcome.keyed) - set(outcome.contributors)) if outcome.contributors else []
        log(
            WARNING,
            "[fedvq] secure aggregation dropped (round %s, %s): halted at the %s stage; %d of %d sampled nodes "
            "sent keys, each node needs %d answering neighbours (secagg.reconstruction-threshold)%s%s",
            server_round,
            handler,
            outcome.halted_at,
            len(outcome.keyed),
            len(sampled),
            outcome.threshold,
            f"; no keys from {count_and_named(silent)}" if silent else "",
            f"; lost after the key exchange: {count_and_named(after_keys)}" if after_keys else "",
        )
        return None
    layouts = {
        node: reply.content.config_records.get(protocol.SECAGG_LAYOUT) for node, reply in outcome.replies.items()
    }
    names = {tuple(layout.get("names", [])) if layout else () for layout in layouts.values()}
    metric_names = {tuple(layout.get("metric-names", [])) if layout else () for layout in layouts.values()}
    if len(names) != 1 or len(metric_names) != 1:
        log(
            WARNING,
            "[fedvq] secure aggregation dropped (round %s): the clients' vectors differ in layout",
            server_round,
        )
        return None
    lost = sorted(set(outcome.keyed) - set(outcome.contributors))
    if lost:
        log(
            WARNING,
            "[fedvq] secure aggregation (round %s): %s lost after the key exchange; their masks were removed "
            "with their neighbours' shares, the sum covers the other %d",
            server_round,
            count_and_named(lost),
            len(outcome.contributors),
        )
    else:
        log(
            INFO,
            "[fedvq] secure aggregation (round %s, %s): %d clients summed",
            server_round,
            handler,
            len(outcome.contributors),
        )
    return SecureSum(
        total=outcome.total,
        contributors=outcome.contributors,
        sampled=sampled,
        names=list(names.pop()),
        metric_names=list(metric_names.pop()),
        error_bound=secagg.sum_error_bound(len(outcome.contributors), clipping_range, len(sampled)),
    )


def weighted_mean_reply(
    result: SecureSum,
    sent: Message,
    weight_key: str,
    scale: float = 1.0,
    summed: Mapping[str, Mapping[str, float]] | None = None,
) -> Message:
    """The federation's weighted mean as one reply to ``sent`` (arrays cast to what was sent).

    Records in ``summed`` (record -> array key -> bound) come back as sums instead: counts rounded,
    "used" masks as "any client", squares clipped at 0 (quantization noise), through
    :func:`pooled_statistic`.
    """
    summed = summed or {}
    *arrays, tail = result.total
    total_weight_scaled = float(tail[0])
    sent_arrays = to_numpy(sent.content[protocol.ARRAYS]) if protocol.ARRAYS in sent.content.array_records else {}
    records: dict[str, dict[str, np.ndarray]] = {}
    for name, total in zip(result.names, arrays, strict=True):
        record, key = name.split("/", 1)
        if record in summed:
            bound = float(summed[record].get(key, 1.0))
            records.setdefault(record, {})[key] = pooled_statistic(key, total * scale * bound)
            continue
        mean = total / total_weight_scaled
        like = sent_arrays.get(key) if record == protocol.ARRAYS else None
        if like is not None:
            mean = np.rint(mean) if np.issubdtype(like.dtype, np.integer) else mean
            mean = mean.astype(like.dtype).reshape(like.shape)
        records.setdefault(record, {})[key] = mean
    metrics = {name: float(v / total_weight_scaled) for name, v in zip(result.metric_names, tail[1:], strict=True)}
    content = RecordDict({name: to_record(arrays_) for name, arrays_ in records.items()})
    content[protocol.METRICS] = MetricRecord({**metrics, weight_key: total_weight_scaled})
    content[protocol.SECAGG_CONTRIBUTORS] = ConfigRecord({"nodes": list(result.contributors)})
    return Message(content, reply_to=sent)


def pooled_statistic(key: str, total: np.ndarray) -> np.ndarray:
    """A summed statistic in its usual type: counts whole, masks 0/1, squares >= 0."""
    if key == "counts":
        return np.maximum(np.rint(total), 0).astype(np.int64)
    if key == "used":
        return (total > 0.5).astype(np.uint8)
    if key == "squares":
        return np.maximum(total, 0.0)
    return total


def train_exchange(settings: Settings, strategy) -> Exchange | None:
    """The round loop's train exchange under secure aggregation (None: secagg off, the plain send).

    The clients send ``weight x arrays / S`` and ``weight / S`` masked (S: the largest
    weight a client may claim, the training pool); the server receives their sums only
    and hands the strategy one reply: the weighted mean with the summed weight.
    """
    secagg = settings.secagg
    if not secagg.enabled:
        return None

    def exchange(grid: Grid, messages: list[Message], timeout: float) -> tuple[list[int], list[Message]]:
        messages = list(messages)
        sampled = [m.metadata.dst_node_id for m in messages]
        if not messages:
            return [], []
        scale = float(strategy.max_num_examples or 1)
        # a method's statistics summed, not averaged: record -> array key -> bound (see clients/secure_sum.py)
        summed = getattr(innermost(strategy), "secure_summed_records", lambda _scale: {})(scale)
        bounds = {f"{record}/{key}": float(b) for record, keys in summed.items() for key, b in keys.items()}
        config = messages[0].content.config_records.get(protocol.CONFIG)
        server_round = int(config.get("server-round", 0)) if config is not None else 0
        result = secure_sum(
            grid,
            messages,
            secagg,
            handler="train",
            summand=protocol.SUMMAND_WEIGHTED,
            server_round=server_round,
            timeout=timeout,
            clipping_range=secagg.clipping_range,
            extra={
                "scale": scale,
                "weight-key": strategy.weighted_by_key,
                # (no empty lists: Flower cannot type an empty list in a ConfigRecord)
                **({"summed-records": list(summed)} if summed else {}),
                **({"bound-names": list(bounds), "bound-values": list(bounds.values())} if bounds else {}),
            },
        )
        if result is None:
            return sampled, []
        sent = next(m for m in messages if m.metadata.dst_node_id == result.contributors[0])
        reply = weighted_mean_reply(result, sent, strategy.weighted_by_key, scale, summed)
        # the weight travelled divided by S: back to examples
        weight = float(reply.content[protocol.METRICS][strategy.weighted_by_key]) * scale
        reply.content[protocol.METRICS][strategy.weighted_by_key] = int(round(weight))
        return sampled, [reply]

    return exchange
