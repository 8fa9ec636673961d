"""When a round's replies say the run cannot succeed: stop it with one line.

A client that cannot even start (its data file is missing, ``device='cuda'`` on a
CPU node, ``partition.classes-per-client`` larger than its classes...) replies
with an error whose reason is marked as a configuration error
(:data:`fedvq_app.errors.CONFIG_ERROR_PREFIX`). When *every* reply of a round is
an error and all carry configuration errors -- or all carry the very same error
-- no later round can do better, so the run fails with that line instead of
running every round with zero clients. A round where some replies are usable
goes on; the failing nodes are counted as rejected.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import numpy as np
from flwr.app import Message

from fedvq_app.errors import RunFailed, config_error_of, warn
from fedvq_app.records import to_numpy


def round_failure(replies: Iterable[Message], first: bool = False) -> str | None:
    """Why the round shows the run cannot go on, or None.

    ``first``: the run's first round, where no node has ever worked; any mix of
    errors from every node then ends the run too (later, differing errors may be
    transient and the run goes on).
    """
    replies = list(replies)
    if not replies or not all(r.has_error() for r in replies):
        return None
    reasons = [r.error.reason for r in replies]
    config_errors = [config_error_of(reason) for reason in reasons]
    if all(err is not None for err in config_errors):
        counts = Counter(config_errors)
        line, _ = counts.most_common(1)[0]
        if len(counts) == 1:
            return f"configuration error on every node: {line}"
        return f"configuration errors on every node ({len(counts)} different), the most common: {line}"
    if len(set(reasons)) == 1:
        return f"every node failed with the same error: {reasons[0]}"
    if first:
        line, _ = Counter(reasons).most_common(1)[0]
        return f"every node failed ({len(set(reasons))} different errors), the most common: {line}"
    return None


#: how the reply guard words a client's error reply (``ReplyGuard._problem``, the k-means phases)
CLIENT_ERROR = "client error: "


def exclude_misconfigured_sites(rejections: Iterable[tuple[int, str]], tracker) -> None:
    """Sites whose replies carry a configuration error (bad node config, missing data file): excluded.

    Such a site cannot take part in any round (the error is in its own set-up), while the
    others go on; it is named with its reason in the ``site-excluded`` warning (log and
    summary.json ``warnings``), in summary.json ``excluded_sites`` and in the final log line.
    """
    for node, reason in rejections:
        line = config_error_of(reason[len(CLIENT_ERROR) :] if reason.startswith(CLIENT_ERROR) else reason)
        if line is not None and tracker is not None:
            tracker.exclude_site(node, line)


#: what a client's error says when training from the global model gave NaN/inf (fedvq_app.training.loop);
#: NaN arrays in a reply are not counted: they may as well be a broken or hostile client's
NON_FINITE_MARKS = ("training loss became",)


def divergence(server_round: int, arrays, replies: list[Message], rejections, train_metrics: dict, strategy, tracker):
    """Why the global model must be taken as non-finite after this round, with its likely cause; else None.

    Non-finite means: NaN/inf in the aggregated arrays, a non-finite aggregated training loss,
    or more than half of the round's train replies failing or rejected because training from
    the global model gave NaN/inf (the clients then train on from garbage, the run only
    looks alive). The cause named: client-level DP noise against the clipping norm and the
    number of clients when privacy is on, the learning rate otherwise.
    """
    bad_arrays = []
    if arrays is not None:
        bad_arrays = [k for k, v in to_numpy(arrays).items() if not np.isfinite(v).all()]
    failed = {r.metadata.src_node_id for r in replies if r.has_error() and _non_finite(r.error.reason)}
    failed |= {node for node, reason in rejections if _non_finite(reason)}
    loss = train_metrics.get("train-loss")
    bad_loss = isinstance(loss, float) and not np.isfinite(loss)
    if not bad_arrays and not bad_loss and not (replies and 2 * len(failed) > len(replies)):
        return None
    what = []
    if failed:
        what.append(f"{len(failed)} of {len(replies)} clients' training from it gave NaN/inf")
    if bad_arrays:
        what.append(f"{len(bad_arrays)} aggregated arrays hold NaN/inf (e.g. '{bad_arrays[0]}')")
    if bad_loss:
        what.append(f"the aggregated train loss is {loss}")
    losses = [r["train"]["aggregated"].get("train-loss") for r in tracker.rounds[-5:]]
    if any(v is not None for v in losses):
        what.append("train loss of the previous rounds " + ", ".join(f"{v:.3g}" for v in losses if v is not None))
    return (
        f"round {server_round}: the global model diverged to NaN/inf ({'; '.join(what)}); "
        f"likely cause: {_likely_cause(strategy, tracker.settings, arrays)}"
    )


def _non_finite(reason: str) -> bool:
    return any(mark in reason for mark in NON_FINITE_MARKS)


def _likely_cause(strategy, settings, arrays) -> str:
    privacy = settings.privacy
    if privacy.mode in ("client-fixed", "client-adaptive"):
        clip = float(getattr(strategy, "round_clip_norm", privacy.clipping_norm))
        clients = int(getattr(strategy, "num_sampled_clients", 0) or 0) or 1
        std = privacy.noise_multiplier * clip / clients
        size = sum(int(v.size) for v in arrays.to_numpy_ndarrays()) if arrays is not None else 0
        scale = ""
        if size:
            scale = (
                f" on each of {size:,} parameters, a noise vector of norm ~{std * size**0.5:.3g} every round "
                f"against a clipped mean update of norm <= {clip:g}"
            )
        return (
            f"the client-level DP noise: std {std:.3g} = privacy.noise-multiplier {privacy.noise_multiplier:g} "
            f"x privacy.clipping-norm {clip:g} / {clients} clients{scale}; the noise std falls as 1 / clients: "
            "use many more clients per round (hundreds), a smaller privacy.noise-multiplier (weaker privacy) or "
            "a privacy.clipping-norm near the updates' median norm (rounds.jsonl strategy.privacy)"
        )
    if privacy.mode == "sample-dpsgd":
        return (
            f"the DP-SGD noise on every step (privacy.noise-multiplier {privacy.noise_multiplier:g} x "
            f"privacy.clipping-norm {privacy.clipping_norm:g} / batch size {settings.train.batch_size}): "
            "use larger batches or a smaller noise multiplier, or lower train.lr"
        )
    return f"train.lr={settings.train.lr:g} is too large for this model and data: lower it"


def nothing_accepted(rejections: list[tuple[int, str]], replies: list[Message]) -> str | None:
    """Every reply of the run's first round rejected by the reply guard: the most common reason, else None."""
    if not replies or len({n for n, _ in rejections}) < len({r.metadata.src_node_id for r in replies}):
        return None
    line, _ = Counter(reason for _, reason in rejections).most_common(1)[0]
    return f"every reply was rejected, e.g.: {line}"


def stop_if_hopeless(replies: Iterable[Message], where: str, tracker=None, first: bool = False) -> None:
    """Raise :class:`RunFailed` when :func:`round_failure` finds a reason."""
    reason = round_failure(replies, first)
    if reason is None:
        return
    if tracker is not None:
        tracker.stopped_early = {"where": where, "reason": reason}
    raise RunFailed(f"{where}: {reason}")


#: a client training on fewer samples than this gets the ``tiny-clients`` warning
TINY_CLIENT = 10
#: ``dominant-client``: one client holds more than this share of all examples ...
DOMINANT_SHARE = 0.5
#: ... and more than this many times the median client
DOMINANT_RATIO = 100.0


def check_client_sizes(replies: Iterable[Message], tracker, weight_key: str = "num-examples") -> None:
    """Named warnings about legal but suspicious client sizes (first round's accepted replies)."""
    sizes: dict[int, float] = {}
    for reply in replies:
        if reply.has_error() or "metrics" not in reply.content.metric_records:
            continue
        value = reply.content["metrics"].get(weight_key)
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            sizes[reply.metadata.src_node_id] = float(value)
    if not sizes:
        return
    collector = getattr(tracker, "warnings", None)
    tiny = sorted(n for n, v in sizes.items() if v < TINY_CLIENT)
    if tiny:
        warn(
            collector,
            "tiny-clients",
            f"{len(tiny)} of {len(sizes)} clients train on fewer than {TINY_CLIENT} "
            f"samples (smallest {int(min(sizes.values()))}); their updates are mostly noise: use fewer partitions",
        )
    total = sum(sizes.values())
    ordered = sorted(sizes.values())
    median = ordered[len(ordered) // 2]
    node, largest = max(sizes.items(), key=lambda item: item[1])
    if len(sizes) > 2 and largest > DOMINANT_SHARE * total and largest > DOMINANT_RATIO * median:
        warn(
            collector,
            "dominant-client",
            f"node {node} claims {largest:g} of {total:g} examples "
            f"({largest / total:.0%}, {largest / median:.0f}x the median client): it dominates the weighted mean",
        )
