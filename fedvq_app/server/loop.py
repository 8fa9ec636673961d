"""The round loop every neural method runs through.

It speaks the Strategy protocol of Flower's Message API (``configure_train`` ->
``send_and_receive`` -> ``aggregate_train`` -> ``configure_evaluate`` ->
``aggregate_evaluate``), exactly like ``Strategy.start``, and adds what that loop
lacks: a first round other than 1 (resume), per-round tracking of every client,
dropouts and rejections, evaluation every k rounds, a checkpoint after each round
(:mod:`fedvq_app.server.checkpoint`; ``resume-from`` continues after the last one)
and a hook after each round.

Faults of a real deployment:

* a node that dies or stalls mid-round sends nothing within ``round-timeout`` (or
  the SuperLink answers for it with a "node unavailable" error once its heartbeat
  lapses): the round goes on with the replies that arrived and the node is
  recorded as dropped;
* Flower's ``sample_nodes`` waits *forever* for ``min_available_nodes``. The loop
  hands strategies a grid whose ``get_node_ids`` waits at most ``round-timeout``
  seconds for the strategy's minimum; when too few nodes remain the run stops
  after the last completed round (``stopped_early`` in summary.json) instead of
  hanging or running below the minimum.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from logging import ERROR, INFO, WARNING

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid

from fedvq_app.errors import RunFailed, is_node_unavailable
from fedvq_app.grid_proxy import GridProxy
from fedvq_app.server.failures import (
    check_client_sizes,
    divergence,
    exclude_misconfigured_sites,
    nothing_accepted,
    stop_if_hopeless,
)
from fedvq_app.server.secure_sum import train_exchange
from fedvq_app.strategies.contract import RoundStrategy
from fedvq_app.tracking.communication import metered
from fedvq_app.tracking.experiment import ExperimentTracker, RoundOutcome
from fedvq_app.tracking.idsets import count_and_named

RoundHook = Callable[[int, ArrayRecord], None]


@dataclass(frozen=True)
class LoopPlan:
    """Which rounds to run and how."""

    first_round: int
    last_round: int
    timeout: float
    eval_every: int
    train_config: dict
    evaluate_config: dict


class NodesUnavailable(RuntimeError):
    """Fewer connected nodes than the strategy's minimum, for longer than the wait allowed."""


class PatientGrid(GridProxy):
    """The run's grid, except that ``get_node_ids`` waits a bounded time for ``required`` nodes.

    Strategies sample through it (Flower's ``sample_nodes`` loops on
    ``get_node_ids`` until ``min_available_nodes`` are connected); past the
    deadline it raises :class:`NodesUnavailable`, which ends that loop.
    """

    def __init__(self, grid: Grid, required: int, wait_s: float, poll_s: float = 1.0) -> None:
        super().__init__(grid)
        self.required = required
        self.deadline = time.time() + wait_s
        self.poll_s = poll_s

    def get_node_ids(self) -> Iterable[int]:
        announced = False
        while True:
            nodes = list(super().get_node_ids())
            if len(nodes) >= self.required:
                return nodes
            if time.time() >= self.deadline:
                raise NodesUnavailable(f"{len(nodes)} nodes connected, the strategy needs at least {self.required}")
            if not announced:
                log(INFO, "[fedvq] waiting for nodes: %d connected, %d needed", len(nodes), self.required)
                announced = True
            time.sleep(self.poll_s)


def required_nodes(strategy: RoundStrategy, phase: str) -> int:
    """The node count Flower's ``sample_nodes`` will wait for in ``phase`` (train/evaluate)."""
    phase_minimum = strategy.min_train_nodes if phase == "train" else strategy.min_evaluate_nodes
    return max(int(strategy.min_available_nodes or 1), int(phase_minimum or 0), 1)


def _configure(strategy: RoundStrategy, phase: str, rnd: int, arrays, config: dict, grid: Grid, wait_s: float):
    patient = PatientGrid(grid, required_nodes(strategy, phase), wait_s)
    configure = strategy.configure_train if phase == "train" else strategy.configure_evaluate
    return list(configure(rnd, arrays, ConfigRecord(dict(config)), patient))


def without_unavailable(messages: list[Message], replies: Iterable[Message]) -> tuple[list[Message], list[int]]:
    """Replies minus the SuperLink's "node unavailable" errors; also the nodes those errors stood for.

    Such an error is the SuperLink speaking for a dead node (its sender is not the
    node the message went to): a dropout, never a rejected reply of some node.
    """
    destination = {m.metadata.message_id: m.metadata.dst_node_id for m in messages if m.metadata.message_id}
    kept, unavailable = [], []
    for reply in replies:
        node = destination.get(reply.metadata.reply_to_message_id)
        foreign = node is not None and node != reply.metadata.src_node_id
        if reply.has_error() and (foreign or is_node_unavailable(reply)):
            node = node if node is not None else reply.metadata.src_node_id
            log(WARNING, "[fedvq] node %s is unavailable: %s", node, reply.error.reason)
            unavailable.append(node)
            continue
        kept.append(reply)
    return kept, unavailable


def _send(grid: Grid, messages, timeout: float) -> tuple[list[int], list]:
    """Send and wait at most ``timeout``; errors the SuperLink returns for absent nodes are no replies."""
    messages = list(messages)
    if not messages:
        return [], []
    sampled = [m.metadata.dst_node_id for m in messages]
    kept, _ = without_unavailable(messages, grid.send_and_receive(messages, timeout=timeout))
    silent = sorted(set(sampled) - {r.metadata.src_node_id for r in kept})
    if silent:
        log(WARNING, "[fedvq] no reply within the round from %s", count_and_named(silent))
    return sampled, kept


def _stop(tracker: ExperimentTracker, rnd: int, err: Exception) -> None:
    tracker.stopped_early = {"before_round": rnd, "reason": str(err)}
    if not tracker.rounds:  # nothing was trained: the run failed
        raise RunFailed(f"no round could start: {err}")
    log(ERROR, "[fedvq] stopping before round %d: %s", rnd, err)


def _as_dict(record: MetricRecord | None) -> dict:
    return dict(record) if record is not None else {}


def run_rounds(
    strategy: RoundStrategy,
    grid: Grid,
    arrays: ArrayRecord,
    plan: LoopPlan,
    tracker: ExperimentTracker,
    after_round: RoundHook | None = None,
) -> ArrayRecord:
    """Run rounds ``first_round..last_round``; return the final global arrays.

    With ``resume-from`` set, the checkpoint replaces ``arrays`` and the strategy's
    state, and the loop starts after the checkpointed round. Each completed round
    is checkpointed into the experiment folder.
    """
    first_round = plan.first_round
    grid = metered(grid, tracker.traffic)  # bytes to and from every client, per round
    tracker.traffic_outside_rounds()  # whatever a workflow exchanged before the first round
    from fedvq_app.server.checkpoint import Checkpointer, resume  # noqa: PLC0415 (torch: neural loops only)

    resumed = resume(tracker.settings, strategy, tracker, initial=arrays)
    if resumed is not None:
        first_round, arrays = resumed
    checkpoint = Checkpointer(tracker.dir, strategy, tracker, dict(tracker.settings.raw))
    send_train = train_exchange(tracker.settings, strategy) or _send  # secagg.mode: the sum through SecAgg+
    for rnd in range(first_round, plan.last_round + 1):
        started = time.time()
        try:
            messages = _configure(strategy, "train", rnd, arrays, plan.train_config, grid, plan.timeout)
        except NodesUnavailable as err:
            _stop(tracker, rnd, err)
            break
        sampled, replies = send_train(grid, messages, plan.timeout)
        if rnd == first_round and sampled and not replies:
            reason = (
                f"no node replied within round-timeout={plan.timeout:g} s "
                f"({len(sampled)} sampled); raise round-timeout if the nodes are slow"
            )
            tracker.stopped_early = {"where": f"round {rnd} (train)", "reason": reason}
            raise RunFailed(f"round {rnd} (train): {reason}")
        stop_if_hopeless(replies, f"round {rnd} (train)", tracker, first=rnd == first_round)
        if rnd == first_round:
            check_client_sizes(replies, tracker, strategy.weighted_by_key)
        new_arrays, train_metrics = strategy.aggregate_train(rnd, replies)
        if rnd == first_round:  # no reply of the first round usable: no later round will do better
            hopeless = nothing_accepted(list(strategy.rejections), replies)
            if hopeless is not None:
                tracker.stopped_early = {"where": f"round {rnd} (train)", "reason": hopeless}
                raise RunFailed(f"round {rnd} (train): {hopeless}")
        rejections = list(strategy.rejections)
        exclude_misconfigured_sites(rejections, tracker)
        diverged = divergence(rnd, new_arrays, replies, rejections, _as_dict(train_metrics), strategy, tracker)
        if diverged is not None:  # training on from NaN/inf only burns rounds and looks alive
            tracker.stopped_early = {"where": f"round {rnd} (train)", "reason": diverged}
            raise RunFailed(diverged)
        if new_arrays is not None:
            arrays = new_arrays
        outcome = RoundOutcome(
            server_round=rnd,
            sampled_train=sampled,
            train_replies=replies,
            train_metrics=_as_dict(train_metrics),
            train_rejected=rejections,
        )
        unavailable = None
        if rnd % plan.eval_every == 0 or rnd == plan.last_round:
            try:
                eval_messages = _configure(strategy, "evaluate", rnd, arrays, plan.evaluate_config, grid, plan.timeout)
            except NodesUnavailable as err:
                unavailable = err
            else:
                outcome.sampled_evaluate, outcome.evaluate_replies = _send(grid, eval_messages, plan.timeout)
                stop_if_hopeless(outcome.evaluate_replies, f"round {rnd} (evaluate)", tracker)
                outcome.evaluate_metrics = _as_dict(strategy.aggregate_evaluate(rnd, outcome.evaluate_replies))
                outcome.evaluate_rejected = list(strategy.rejections)
                exclude_misconfigured_sites(outcome.evaluate_rejected, tracker)
        outcome.strategy_report = strategy.round_report()
        outcome.wall_time_s = time.time() - started
        tracker.record_round(outcome)
        checkpoint(rnd, arrays)
        if after_round is not None:
            after_round(rnd, arrays)
        if unavailable is not None:
            _stop(tracker, rnd + 1, unavailable)
            break
    return arrays
