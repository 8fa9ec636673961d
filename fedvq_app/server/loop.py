"""The round loop every neural method runs through.

It speaks the Strategy protocol of Flower's Message API (``configure_train`` ->
``send_and_receive`` -> ``aggregate_train`` -> ``configure_evaluate`` ->
``aggregate_evaluate``), exactly like ``Strategy.start``, and adds what that loop
lacks: a first round other than 1 (resume), per-round tracking of every client,
dropouts and rejections, evaluation every k rounds, and a hook after each round
(checkpointing).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedvq_app.tracking.experiment import ExperimentTracker, RoundOutcome

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


def _send(grid: Grid, messages, timeout: float) -> tuple[list[int], list]:
    messages = list(messages)
    if not messages:
        return [], []
    sampled = [m.metadata.dst_node_id for m in messages]
    return sampled, list(grid.send_and_receive(messages, timeout=timeout))


def _as_dict(record: MetricRecord | None) -> dict:
    return dict(record) if record is not None else {}


def run_rounds(
    strategy: Strategy,
    grid: Grid,
    arrays: ArrayRecord,
    plan: LoopPlan,
    tracker: ExperimentTracker,
    after_round: RoundHook | None = None,
) -> ArrayRecord:
    """Run rounds ``first_round..last_round``; return the final global arrays."""
    for rnd in range(plan.first_round, plan.last_round + 1):
        started = time.time()
        sampled, replies = _send(
            grid, strategy.configure_train(rnd, arrays, ConfigRecord(dict(plan.train_config)), grid), plan.timeout
        )
        new_arrays, train_metrics = strategy.aggregate_train(rnd, replies)
        if new_arrays is not None:
            arrays = new_arrays
        outcome = RoundOutcome(
            server_round=rnd,
            sampled_train=sampled,
            train_replies=replies,
            train_metrics=_as_dict(train_metrics),
            train_rejected=list(getattr(strategy, "rejections", [])),
        )
        if rnd % plan.eval_every == 0 or rnd == plan.last_round:
            eval_config = ConfigRecord(dict(plan.evaluate_config))
            outcome.sampled_evaluate, outcome.evaluate_replies = _send(
                grid, strategy.configure_evaluate(rnd, arrays, eval_config, grid), plan.timeout
            )
            outcome.evaluate_metrics = _as_dict(strategy.aggregate_evaluate(rnd, outcome.evaluate_replies))
            outcome.evaluate_rejected = list(getattr(strategy, "rejections", []))
        report = getattr(strategy, "round_report", None)
        outcome.strategy_report = report() if callable(report) else {}
        outcome.wall_time_s = time.time() - started
        tracker.record_round(outcome)
        if after_round is not None:
            after_round(rnd, arrays)
    return arrays
