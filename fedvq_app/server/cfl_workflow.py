"""CFL's ServerApp workflow: the common round loop, then the seed's results table.

The rounds run through :func:`~fedvq_app.server.loop.run_rounds` like every neural
method. Afterwards every pre-split model and every final cluster model is sent to
every node for evaluation only, which gives the seed's table: per client, the
accuracy of the FL model before the split and of each cluster model (the seed
shows 0 for clients outside a model's cluster; the full cross-evaluation is kept
too).
"""

from __future__ import annotations

from logging import WARNING
from typing import Any

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from fedvq_app.aggregation.validation import metric_problem
from fedvq_app.config import Settings
from fedvq_app.records import to_record
from fedvq_app.server.workflow import run_training
from fedvq_app.strategies.cfl import partition_of
from fedvq_app.strategies.contract import innermost
from fedvq_app.tracking.experiment import ExperimentTracker, write_json

RESULTS_FILE = "cfl_results.json"
TABLE_METRICS = ("val-accuracy", "test-accuracy")


def evaluate_everywhere(grid: Grid, arrays: dict, server_round: int, timeout: float) -> dict[int, dict]:
    """partition-id -> evaluation metrics of ``arrays`` on every connected node."""
    messages = [
        Message(
            content=RecordDict({"arrays": to_record(arrays), "config": ConfigRecord({"server-round": server_round})}),
            dst_node_id=node,
            message_type=MessageType.EVALUATE,
        )
        for node in grid.get_node_ids()
    ]
    scores = {}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        node = reply.metadata.src_node_id
        if reply.has_error() or "metrics" not in reply.content.metric_records:
            log(WARNING, "[cfl] final evaluation: no usable reply from node %s", node)
            continue
        metrics = dict(reply.content["metrics"])
        problem = metric_problem(metrics, "num-examples")
        partition = partition_of(metrics)
        if problem is not None or partition is None:
            log(WARNING, "[cfl] final evaluation: rejected reply from node %s: %s", node, problem or "no partition-id")
            continue
        scores[partition] = metrics
    return scores


def results_table(models: list[tuple[str, list[int], dict]], scores: list[dict[int, dict]]) -> dict[str, Any]:
    """The seed's table (own-cluster accuracies, 0 elsewhere) and the full cross-evaluation."""
    clients = sorted({p for s in scores for p in s} | {p for _, members, _ in models for p in members})
    table: dict[str, Any] = {"clients": clients, "models": [], "metrics": list(TABLE_METRICS)}
    for (label, members, _), per_client in zip(models, scores, strict=True):
        row = {"label": label, "members": members}
        for key in TABLE_METRICS:
            full = [per_client.get(p, {}).get(key) for p in clients]
            row[f"{key}-all"] = full
            row[key] = [(v if p in members else 0.0) for p, v in zip(clients, full, strict=True)]
        table["models"].append(row)
    return table


def run_cfl_workflow(grid: Grid, settings: Settings, tracker: ExperimentTracker) -> dict[str, Any]:
    """Initial model, the common round loop (checkpoints, resume), the cross-evaluation, CFL's report."""
    strategy = run_training(grid, settings, tracker)
    models = innermost(strategy).evaluation_models()  # CFL's own member, under any privacy wrapper
    scores = [evaluate_everywhere(grid, m, settings.num_server_rounds, settings.round_timeout) for _, _, m in models]
    report = strategy.final_report()
    report["results_table"] = results_table(models, scores)
    write_json(tracker.dir / RESULTS_FILE, report["results_table"])
    return report
