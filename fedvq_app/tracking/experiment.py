"""The experiment folder every run writes: config, per-round JSON, summary, plots.

Layout of ``<log-dir>/<experiment-name or method_dataset_timestamp>/``::

    config.json      resolved run config
    rounds.jsonl     one JSON object per round (per-client and aggregated metrics,
                     sampled/replied/dropped/rejected nodes, strategy statistics)
    summary.json     stable keys for scripts (see :meth:`ExperimentTracker.summary`)
    *.png            plots (see fedvq_app.tracking.plots)
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from logging import INFO
from pathlib import Path
from typing import Any

from flwr.app import Message
from flwr.common.logger import log

from fedvq_app.config import Settings, resolve_log_root
from fedvq_app.registry import get_method

#: key of a method report whose entries are merged into the top level of summary.json
TOP_LEVEL_KEY = "top_level"


def _jsonable(value: Any) -> Any:
    """Floats that JSON can carry (NaN/inf -> None), lists and dicts recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item"):
        return _jsonable(value.item())
    return value


def write_json(path: Path, payload: Any) -> None:
    path.write_text(json.dumps(_jsonable(payload), indent=2) + "\n")


def _client_metrics(replies: Iterable[Message], rejected: Iterable[tuple[int, str]] = ()) -> dict[int, dict[str, Any]]:
    """partition-id -> that client's metric record, from replies that carry one and were not rejected."""
    out: dict[int, dict[str, Any]] = {}
    rejected_nodes = {node for node, _ in rejected}
    for msg in replies:
        if msg.has_error() or "metrics" not in msg.content.metric_records or msg.metadata.src_node_id in rejected_nodes:
            continue
        metrics = dict(msg.content["metrics"])
        if "partition-id" in metrics:
            metrics["node-id"] = msg.metadata.src_node_id
            out[int(metrics["partition-id"])] = metrics
    return out


@dataclass
class RoundOutcome:
    """Everything the round loop learned in one round."""

    server_round: int
    sampled_train: list[int]
    train_replies: list[Message]
    train_metrics: dict[str, float]
    train_rejected: list[tuple[int, str]]
    sampled_evaluate: list[int] = field(default_factory=list)
    evaluate_replies: list[Message] = field(default_factory=list)
    evaluate_metrics: dict[str, float] = field(default_factory=dict)
    evaluate_rejected: list[tuple[int, str]] = field(default_factory=list)
    strategy_report: dict[str, Any] = field(default_factory=dict)
    wall_time_s: float = 0.0


class ExperimentTracker:
    """Writes one experiment folder; keeps just enough in memory for the summary."""

    def __init__(self, settings: Settings, directory: Path) -> None:
        self.settings = settings
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.started = time.time()
        self.rounds: list[dict[str, Any]] = []
        self.label_counts: dict[int, list[int]] = {}
        self.node_to_partition: dict[int, int] = {}
        #: rounds shown in the progress log (a workflow with its own limit may change it)
        self.planned_rounds = settings.num_server_rounds
        #: why the round loop ended before the last planned round (None = it did not)
        self.stopped_early: dict[str, Any] | None = None
        write_json(self.dir / "config.json", settings.to_dict())
        log(INFO, "[fedvq] experiment folder: %s", self.dir)

    @classmethod
    def create(cls, settings: Settings) -> ExperimentTracker:
        """New folder under the resolved ``log-dir`` (resumes reuse their folder)."""
        if settings.resume_from:
            return cls(settings, Path(settings.resume_from).expanduser().resolve())
        root = resolve_log_root(settings.log_dir)
        spec = get_method(settings.method)
        data = spec.data_name(settings) if spec.data_name else settings.dataset.name
        name = settings.experiment_name or f"{settings.method}_{data}_{datetime.now():%Y%m%d-%H%M%S-%f}"
        return cls(settings, root / name)

    # ------------------------------------------------------------------ rounds
    def record_round(self, outcome: RoundOutcome) -> dict[str, Any]:
        """Append one line to rounds.jsonl and log the headline figures."""
        train_clients = _client_metrics(outcome.train_replies, outcome.train_rejected)
        eval_clients = _client_metrics(outcome.evaluate_replies, outcome.evaluate_rejected)
        for pid, metrics in {**train_clients, **eval_clients}.items():
            self.node_to_partition[int(metrics["node-id"])] = pid
        for pid, metrics in train_clients.items():
            if "label-counts" in metrics:
                self.label_counts[pid] = list(metrics["label-counts"])
        replied = {m.metadata.src_node_id for m in outcome.train_replies if not m.has_error()}
        dropped = sorted(set(outcome.sampled_train) - replied)
        record = {
            "round": outcome.server_round,
            "wall_time_s": outcome.wall_time_s,
            "sampled_train": sorted(outcome.sampled_train),
            "dropped": dropped,
            "dropped_partitions": sorted(
                self.node_to_partition[n] for n in dropped if n in self.node_to_partition
            ),
            "rejected": [{"node": n, "reason": r} for n, r in outcome.train_rejected],
            "evaluate_rejected": [{"node": n, "reason": r} for n, r in outcome.evaluate_rejected],
            "train": {
                "aggregated": outcome.train_metrics,
                "clients": {
                    pid: {k: v for k, v in m.items() if k != "label-counts"}
                    for pid, m in sorted(train_clients.items())
                },
            },
            "evaluate": {
                "aggregated": outcome.evaluate_metrics,
                "clients": dict(sorted(eval_clients.items())),
            },
            "strategy": outcome.strategy_report,
        }
        record["evaluate"]["summary"] = client_spread(eval_clients)
        self.rounds.append(_jsonable(record))
        with (self.dir / "rounds.jsonl").open("a") as fh:
            fh.write(json.dumps(self.rounds[-1]) + "\n")
        self._log_progress(record)
        return record

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of the tracker (rounds.jsonl holds the rest)."""
        return {
            "label_counts": {str(k): v for k, v in self.label_counts.items()},
            "node_to_partition": {str(k): v for k, v in self.node_to_partition.items()},
            "elapsed_s": time.time() - self.started,
        }

    def load_state_dict(self, state: dict[str, Any], last_round: int) -> None:
        """Continue a checkpointed run: reload its rounds up to ``last_round``, drop later ones."""
        path = self.dir / "rounds.jsonl"
        lines = path.read_text().splitlines() if path.is_file() else []
        self.rounds = [r for r in (json.loads(line) for line in lines if line.strip()) if r["round"] <= last_round]
        path.write_text("".join(json.dumps(r) + "\n" for r in self.rounds))
        self.label_counts = {int(k): list(v) for k, v in state.get("label_counts", {}).items()}
        self.node_to_partition = {int(k): int(v) for k, v in state.get("node_to_partition", {}).items()}
        self.started -= float(state.get("elapsed_s", 0.0))

    def _log_progress(self, record: dict[str, Any]) -> None:
        spread = record["evaluate"]["summary"]
        train_loss = record["train"]["aggregated"].get("train-loss")
        parts = [f"[fedvq] round {record['round']}/{self.planned_rounds}"]
        if train_loss is not None:
            parts.append(f"train loss {train_loss:.4f}")
        if spread:
            parts.append(
                f"test acc mean {spread['mean_accuracy']:.4f} "
                f"(min {spread['min_accuracy']:.4f}, max {spread['max_accuracy']:.4f})"
            )
        own = client_spread(record["evaluate"]["clients"], "own-test-accuracy")
        if own:
            parts.append(f"own-test acc mean {own['mean_accuracy']:.4f}")
        if record["dropped"] or record["rejected"]:
            parts.append(f"dropped {len(record['dropped'])}, rejected {len(record['rejected'])}")
        parts.append(f"{record['wall_time_s']:.1f} s")
        log(INFO, " | ".join(parts))

    # ------------------------------------------------------------------ summary
    def summary(self, method_report: dict[str, Any] | None = None) -> dict[str, Any]:
        """Stable, machine-readable summary of the run."""
        evaluated = [r for r in self.rounds if r["evaluate"]["clients"]]
        final = _round_figures(evaluated[-1]) if evaluated else {}
        best_round = max(
            evaluated, key=lambda r: r["evaluate"]["summary"].get("mean_accuracy", -1.0), default=None
        )
        clients = set(self.label_counts) | {
            int(p) for r in self.rounds for p in r["evaluate"]["clients"]
        }
        summary = {
            "method": self.settings.method,
            "dataset": self.settings.dataset.name,
            "partition": self.settings.partition.kind,
            "num_clients": len(clients),
            "rounds": len(self.rounds),
            "wall_time_s": time.time() - self.started,
            "experiment_dir": str(self.dir),
            "final": final,
            "best": ({"round": best_round["round"], **_round_figures(best_round)} if best_round else {}),
            "dropped_total": sum(len(r["dropped"]) for r in self.rounds),
            "rejected_total": sum(len(r["rejected"]) for r in self.rounds),
        }
        if self.stopped_early:
            summary["stopped_early"] = self.stopped_early
        if method_report:
            method_report = dict(method_report)
            # a method without accuracies (k-means) names its headline figures at the top level
            summary.update(method_report.pop(TOP_LEVEL_KEY, {}))
            summary[self.settings.method] = method_report
        return _jsonable(summary)

    def finish(self, method_report: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write summary.json and the plots; log where everything is."""
        from fedvq_app.tracking import plots  # noqa: PLC0415 (matplotlib is slow to import)

        summary = self.summary(method_report)
        write_json(self.dir / "summary.json", summary)
        plots.standard_plots(self.dir, self.rounds, self.label_counts, summary)
        method_plots = get_method(self.settings.method).plots
        if method_plots is not None:
            method_plots(self.dir, self.rounds, summary)
        headline = (
            f"final mean test accuracy {summary['final']['accuracy']:.4f}"
            if summary["final"].get("accuracy") is not None
            else "finished"
        )
        log(INFO, "[fedvq] %s; results in %s", headline, self.dir)
        return summary


def client_spread(clients: dict[int, dict[str, Any]], key: str = "test-accuracy") -> dict[str, float]:
    """Mean/min/max of a per-client metric (empty when no client reported it)."""
    values = [float(m[key]) for m in clients.values() if key in m]
    if not values:
        return {}
    return {
        "mean_accuracy": sum(values) / len(values),
        "min_accuracy": min(values),
        "max_accuracy": max(values),
        "num_clients": len(values),
    }


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _round_figures(record: dict[str, Any]) -> dict[str, Any]:
    clients = record["evaluate"]["clients"]
    ordered = [clients[k] for k in sorted(clients, key=int)]
    per_client = [c.get("test-accuracy") for c in ordered]
    per_client_own = [c.get("own-test-accuracy") for c in ordered]
    return {
        "round": record["round"],
        "accuracy": _mean(per_client),
        "per_client_accuracy": per_client,
        "partition_ids": [int(k) for k in sorted(clients, key=int)],
        "min_client_accuracy": min(per_client) if per_client else None,
        "max_client_accuracy": max(per_client) if per_client else None,
        "macro_f1": _mean([c.get("test-macro-f1") for c in ordered]),
        "balanced_accuracy": _mean([c.get("test-balanced-accuracy") for c in ordered]),
        "val_accuracy": _mean([c.get("val-accuracy") for c in ordered]),
        "test_loss": _mean([c.get("test-loss") for c in ordered]),
        # each client's model on test rows drawn to its own label mix (and in its own shift domain)
        "own_test_accuracy": _mean(per_client_own),
        "per_client_own_test_accuracy": per_client_own,
        "min_client_own_test_accuracy": min((v for v in per_client_own if v is not None), default=None),
        "own_test_macro_f1": _mean([c.get("own-test-macro-f1") for c in ordered]),
    }
