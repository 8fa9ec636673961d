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
from dataclasses import dataclass, replace
from logging import ERROR, INFO, WARNING

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid

from fedvq_app.errors import RunFailed, is_node_unavailable
from fedvq_app.grid_proxy import GridProxy
from fedvq_app.server.carried import attach_evaluation, split_evaluation
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
    #: one message per site per round: an evaluation rides on the next round's train messages
    evaluate_with_train: bool = False


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


def by_node(replies: Iterable[Message]) -> list[Message]:
    """Replies in node-id order: the strategies' weighted sums then add them in the same order whatever
    order they arrived in (a deployment's replies arrive as the sites finish), so a run's figures do not
    depend on which site was faster."""
    return sorted(replies, key=lambda m: m.metadata.src_node_id)


def _send(grid: Grid, messages, timeout: float) -> tuple[list[int], list]:
    """Send and wait at most ``timeout``; errors the SuperLink returns for absent nodes are no replies."""
    messages = list(messages)
    if not messages:
        return [], []
    sampled = [m.metadata.dst_node_id for m in messages]
    kept, _ = without_unavailable(messages, grid.send_and_receive(messages, timeout=timeout))
    kept = by_node(kept)
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


@dataclass
class PendingEvaluation:
    """A round trained and aggregated whose evaluation rides on the next round's train messages."""

    outcome: RoundOutcome
    arrays: ArrayRecord
    messages: list[Message]
    #: RNG states right after the evaluate sampling (what a two-message round checkpoints)
    rng: dict


class RoundLoop:
    """The rounds of one run: state shared by the steps of a round (see :func:`run_rounds`)."""

    def __init__(
        self,
        strategy: RoundStrategy,
        grid: Grid,
        plan: LoopPlan,
        tracker: ExperimentTracker,
        after_round: RoundHook | None,
        send_train: Callable | None = None,
    ) -> None:
        from fedvq_app.server.checkpoint import Checkpointer  # noqa: PLC0415 (torch: neural loops only)

        self.strategy, self.grid, self.plan, self.tracker, self.after_round = strategy, grid, plan, tracker, after_round
        #: how train messages go out and come back: plainly, or as one secure sum (secagg.mode)
        self.send_train = send_train or _send
        self.checkpoint = Checkpointer(tracker.dir, strategy, tracker, dict(tracker.settings.raw))
        #: why an evaluation went out in a message of its own, said once per reason
        self.said: set[str] = set()

    # ---------------------------------------------------------------- evaluation
    def evaluate_alone(self, outcome: RoundOutcome, messages: list[Message]) -> None:
        """Send the evaluate messages of ``outcome``'s round on their own and aggregate the replies.

        Their time is added to the round's; a round whose traffic was taken already
        (a pending round) gets their bytes too.
        """
        rnd, started = outcome.server_round, time.time()
        outcome.sampled_evaluate, outcome.evaluate_replies = _send(self.grid, messages, self.plan.timeout)
        if outcome.traffic is not None:
            outcome.traffic.merge(self.tracker.traffic.take())
        outcome.wall_time_s += time.time() - started
        stop_if_hopeless(outcome.evaluate_replies, f"round {rnd} (evaluate)", self.tracker)
        self.aggregate_evaluation(outcome, outcome.evaluate_replies)

    def aggregate_evaluation(self, outcome: RoundOutcome, replies: list[Message]) -> None:
        outcome.evaluate_metrics = _as_dict(self.strategy.aggregate_evaluate(outcome.server_round, replies))
        outcome.evaluate_rejected = list(self.strategy.rejections)
        exclude_misconfigured_sites(outcome.evaluate_rejected, self.tracker)

    def carry(self, pending: PendingEvaluation, messages: list[Message]) -> tuple[list[Message], bool]:
        """The train messages with ``pending``'s evaluation on board, or sent apart first (and why, once)."""
        carrying, reason = attach_evaluation(messages, pending.messages)
        if reason is None:
            return carrying, True
        if reason not in self.said:
            self.said.add(reason)
            rnd = pending.outcome.server_round
            log(INFO, "[fedvq] round %d: evaluation sent in messages of its own: %s", rnd, reason)
        self.evaluate_alone(pending.outcome, pending.messages)
        self.finish(pending.outcome, pending.arrays, pending.rng)
        return messages, False

    def finish(self, outcome: RoundOutcome, arrays: ArrayRecord, rng: dict | None = None) -> None:
        """Report, record and checkpoint a round whose figures are all in."""
        outcome.strategy_report = self.strategy.round_report()
        self.tracker.record_round(outcome)
        self.checkpoint(outcome.server_round, arrays, rng=rng)
        if self.after_round is not None:
            self.after_round(outcome.server_round, arrays)

    def flush(self, pending: PendingEvaluation | None) -> None:
        """A pending round when no train message will carry its evaluation: evaluate it on its own."""
        if pending is None:
            return
        self.evaluate_alone(pending.outcome, pending.messages)
        self.finish(pending.outcome, pending.arrays, pending.rng)

    # ---------------------------------------------------------------- one round
    def train(self, rnd: int, arrays: ArrayRecord, pending: PendingEvaluation | None):
        """Round ``rnd``'s training; returns (outcome, new arrays); files ``pending``'s evaluation."""
        plan, strategy, tracker = self.plan, self.strategy, self.tracker
        first = rnd == plan.first_round
        started = time.time()
        messages = _configure(strategy, "train", rnd, arrays, plan.train_config, self.grid, plan.timeout)
        carried = False
        if pending is not None:
            messages, carried = self.carry(pending, messages)
        sampled, replies = self.send_train(self.grid, messages, plan.timeout)
        replies, evaluation = split_evaluation(replies)
        if carried and pending is not None:
            # the evaluate replies of the nodes that were asked, as if they had come on their own
            outcome = pending.outcome
            outcome.sampled_evaluate = [m.metadata.dst_node_id for m in pending.messages]
            asked = set(outcome.sampled_evaluate)
            outcome.evaluate_replies = by_node(m for m in evaluation if m.metadata.src_node_id in asked)
            self.aggregate_evaluation(outcome, outcome.evaluate_replies)
            self.finish(outcome, pending.arrays, pending.rng)
        if first and sampled and not replies:
            reason = (
                f"no node replied within round-timeout={plan.timeout:g} s "
                f"({len(sampled)} sampled); raise round-timeout if the nodes are slow"
            )
            tracker.stopped_early = {"where": f"round {rnd} (train)", "reason": reason}
            raise RunFailed(f"round {rnd} (train): {reason}")
        stop_if_hopeless(replies, f"round {rnd} (train)", tracker, first=first)
        if first:
            check_client_sizes(replies, tracker, strategy.weighted_by_key)
        new_arrays, train_metrics = strategy.aggregate_train(rnd, replies)
        if first:  # no reply of the first round usable: no later round will do better
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
        outcome = RoundOutcome(
            server_round=rnd,
            sampled_train=sampled,
            train_replies=replies,
            train_metrics=_as_dict(train_metrics),
            train_rejected=rejections,
        )
        outcome.wall_time_s = time.time() - started
        return outcome, (new_arrays if new_arrays is not None else arrays)


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

    With ``plan.evaluate_with_train`` (the default) a round's evaluation rides on the
    next round's train messages (:mod:`fedvq_app.server.carried`): one message per site
    per round. The round is recorded and checkpointed when its evaluation is in, so
    rounds.jsonl, summary.json and the plots file every evaluation under the round
    whose model it measured, as with separate evaluate messages. The last round's
    model, and any round whose evaluation cannot ride (see ``attach_evaluation``),
    is evaluated in messages of its own.
    """
    first_round = plan.first_round
    grid = metered(grid, tracker.traffic)  # bytes to and from every client, per round
    tracker.traffic_outside_rounds()  # whatever a workflow exchanged before the first round
    from fedvq_app.server.checkpoint import capture_rng, resume  # noqa: PLC0415 (torch: neural loops only)

    resumed = resume(tracker.settings, strategy, tracker, initial=arrays)
    if resumed is not None:
        first_round, arrays = resumed
    send_train = train_exchange(tracker.settings, strategy)  # secagg.mode: the sum through SecAgg+
    if send_train is not None and plan.evaluate_with_train:
        log(INFO, "[fedvq] secagg.mode: evaluation in messages of its own (a masked train reply cannot carry it)")
        plan = replace(plan, evaluate_with_train=False)
    loop = RoundLoop(strategy, grid, replace(plan, first_round=first_round), tracker, after_round, send_train)
    pending: PendingEvaluation | None = None
    for rnd in range(first_round, plan.last_round + 1):
        try:
            outcome, arrays = loop.train(rnd, arrays, pending)
        except NodesUnavailable as err:
            loop.flush(pending)
            _stop(tracker, rnd, err)
            break
        pending = None
        unavailable = None
        if rnd % plan.eval_every == 0 or rnd == plan.last_round:
            try:
                eval_messages = _configure(strategy, "evaluate", rnd, arrays, plan.evaluate_config, grid, plan.timeout)
            except NodesUnavailable as err:
                unavailable = err
            else:
                if plan.evaluate_with_train and rnd < plan.last_round:
                    outcome.traffic = tracker.traffic.take()
                    pending = PendingEvaluation(outcome, arrays, eval_messages, capture_rng())
                    continue
                loop.evaluate_alone(outcome, eval_messages)
        loop.finish(outcome, arrays)
        if unavailable is not None:
            _stop(tracker, rnd + 1, unavailable)
            break
    return arrays
