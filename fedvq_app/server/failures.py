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

from flwr.app import Message

from fedvq_app.errors import RunFailed, config_error_of, warn


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
