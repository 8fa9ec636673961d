"""The experiment folder every run writes: config, per-round JSON, summary, plots.

Layout of ``<log-dir>/<experiment-name or method_dataset_timestamp>/``::

    config.json      resolved run config
    rounds.jsonl     one JSON object per round (per-client and aggregated metrics,
                     sampled/replied/dropped/rejected nodes, strategy statistics)
    summary.json     stable keys for scripts (see :meth:`ExperimentTracker.summary`)
    *.png            plots (see fedvq_app.tracking.plots)
    events.out.tfevents.*  TensorBoard scalars per round (see fedvq_app.tracking.sinks)
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

from fedvq_app.config import ConfigError, Settings, resolve_log_root
from fedvq_app.registry import get_method
from fedvq_app.tracking.communication import Traffic, TrafficMeter, run_communication
from fedvq_app.tracking.sinks import SinkSet, open_sinks

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

    def __init__(self, settings: Settings, directory: Path, new: bool = True) -> None:
        # TensorBoard / MLflow; an unusable MLflow target stops the run here, before the folder exists
        self.sinks = SinkSet(open_sinks(settings, directory))
        #: counts the bytes of every message the server sends and receives (the grid is wrapped with it)
        self.traffic = TrafficMeter()
        #: traffic outside the rounds (k-means' set-up phases, CFL's final cross-evaluation)
        self.outside_rounds = Traffic()
        #: wall seconds of the rounds this process ran (progress line, ETA)
        self.round_seconds: list[float] = []
        self.settings = settings
        self.dir = directory
        try:
            self.dir.mkdir(parents=True, exist_ok=not new)
        except FileExistsError:
            raise ConfigError(
                f"config key 'experiment-name': experiment folder {str(directory)!r} exists already"
            ) from None
        except OSError as err:
            raise ConfigError(
                f"config key 'log-dir' has invalid value {settings.log_dir!r}: cannot create "
                f"{str(directory)!r} ({err.strerror or err})"
            ) from None
        self.started = time.time()
        self.rounds: list[dict[str, Any]] = []
        self.label_counts: dict[int, list[int]] = {}
        self.node_to_partition: dict[int, int] = {}
        #: rounds shown in the progress log (a workflow with its own limit may change it)
        self.planned_rounds = settings.num_server_rounds
        #: why the round loop ended before the last planned round (None = it did not)
        self.stopped_early: dict[str, Any] | None = None
        #: named warnings about legal but suspicious input (fedvq_app.errors.warn)
        self.warnings: list[dict[str, str]] = []
        #: node id -> why that site could not take part (its replies carried a configuration error)
        self.excluded_sites: dict[int, str] = {}
        #: a resumed folder is written only once its checkpoint is accepted (load_state_dict)
        self.writable = new
        if new:
            write_json(self.dir / "config.json", settings.to_dict())
        log(INFO, "[fedvq] experiment folder: %s", self.dir)

    @classmethod
    def create(cls, settings: Settings) -> ExperimentTracker:
        """New folder under the resolved ``log-dir`` (resumes reuse their folder)."""
        if settings.resume_from:  # checked by fedvq_app.server.preflight before anything is written
            return cls(settings, Path(settings.resume_from).expanduser().resolve(), new=False)
        root = resolve_log_root(settings.log_dir)
        spec = get_method(settings.method)
        data = spec.data_name(settings) if spec.data_name else settings.dataset.name
        name = settings.experiment_name or f"{settings.method}_{data}_{datetime.now():%Y%m%d-%H%M%S-%f}"
        if not settings.experiment_name:  # two runs in the same microsecond still get their own folders
            base, suffix = name, 1
            while (root / name).exists():
                name, suffix = f"{base}-{suffix}", suffix + 1
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
            "dropped_partitions": sorted(self.node_to_partition[n] for n in dropped if n in self.node_to_partition),
            "rejected": [{"node": n, "reason": r} for n, r in outcome.train_rejected],
            "evaluate_rejected": [{"node": n, "reason": r} for n, r in outcome.evaluate_rejected],
            "train": {
                "aggregated": outcome.train_metrics,
                "clients": {
                    pid: {k: v for k, v in m.items() if k != "label-counts"} for pid, m in sorted(train_clients.items())
                },
            },
            "evaluate": {
                "aggregated": outcome.evaluate_metrics,
                "clients": dict(sorted(eval_clients.items())),
            },
            "strategy": outcome.strategy_report,
        }
        record["evaluate"]["summary"] = client_spread(eval_clients)
        record["communication"] = self.traffic.take().report(self.node_to_partition)
        self.rounds.append(_jsonable(record))
        with (self.dir / "rounds.jsonl").open("a") as fh:
            fh.write(json.dumps(self.rounds[-1]) + "\n")
        self.round_seconds.append(float(outcome.wall_time_s))
        self._log_progress(record)
        self.sinks.log_round(self.rounds[-1])
        return record

    def traffic_outside_rounds(self) -> None:
        """File the bytes counted since the last round under 'outside the rounds' (set-up, final phases)."""
        self.outside_rounds.merge(self.traffic.take())

    def exclude_site(self, node: int, reason: str) -> None:
        """A site that cannot take part (named once, with its reason, in the log and summary.json)."""
        from fedvq_app.errors import warn  # noqa: PLC0415 (cycle)

        if node in self.excluded_sites:
            return
        self.excluded_sites[node] = reason
        warn(self.warnings, "site-excluded", f"node {node} is left out of the run: {reason}")

    def _excluded_text(self, num_clients: int) -> str:
        """'on 2 of 3 sites; 1 site excluded (node 7: <reason>)' for the final log line, or ''."""
        if not self.excluded_sites:
            return ""
        sites = "; ".join(f"node {node}: {reason}" for node, reason in sorted(self.excluded_sites.items()))
        count = len(self.excluded_sites)
        return (
            f" on {num_clients} of {num_clients + count} sites; {count} site{'s' if count > 1 else ''} "
            f"excluded ({sites})"
        )

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
        self.writable = True
        write_json(self.dir / "config.json", self.settings.to_dict())
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
        done, total = record["round"], self.planned_rounds
        parts = [f"[fedvq] round {done}/{total} ({100 * done / max(total, 1):.0f} %)"]
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
        traffic = record.get("communication") or {}
        if traffic.get("total_bytes"):
            parts.append(f"sent {_size(traffic['sent_bytes'])}, received {_size(traffic['received_bytes'])}")
        parts.append(progress_text(record["round"], self.planned_rounds, self.round_seconds))
        log(INFO, " | ".join(parts))

    # ------------------------------------------------------------------ summary
    def summary(self, method_report: dict[str, Any] | None = None) -> dict[str, Any]:
        """Stable, machine-readable summary of the run."""
        evaluated = [r for r in self.rounds if r["evaluate"]["clients"]]
        final = _round_figures(evaluated[-1]) if evaluated else {}
        best_round = max(evaluated, key=lambda r: r["evaluate"]["summary"].get("mean_accuracy", -1.0), default=None)
        clients = set(self.label_counts) | {int(p) for r in self.rounds for p in r["evaluate"]["clients"]}
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
            "status": "stopped_early" if self.stopped_early else "completed",
        }
        if self.stopped_early:
            summary["stopped_early"] = self.stopped_early
        self.traffic_outside_rounds()
        summary["communication"] = run_communication(self.rounds, self.outside_rounds, self.node_to_partition)
        if self.warnings:
            summary["warnings"] = list(self.warnings)
        if self.excluded_sites:
            summary["excluded_sites"] = [{"node": n, "reason": r} for n, r in sorted(self.excluded_sites.items())]
        if method_report:
            method_report = dict(method_report)
            # a method without accuracies (k-means) names its headline figures at the top level
            summary.update(method_report.pop(TOP_LEVEL_KEY, {}))
            summary[self.settings.method] = method_report
        return _jsonable(summary)

    def fail(self, reason: str) -> dict[str, Any]:
        """summary.json of a run that failed: what it did so far, ``status: failed`` and why.

        Also closes the TensorBoard file and marks the MLflow run FAILED.
        """
        summary = {**self.summary(), "status": "failed", "error": reason}
        if self.writable:  # a refused resume leaves the experiment as it was
            write_json(self.dir / "summary.json", summary)
        self.sinks.fail(reason)
        return summary

    def finish(self, method_report: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write summary.json and the plots; log where everything is."""
        from fedvq_app.tracking import plots  # noqa: PLC0415 (matplotlib is slow to import)

        summary = self.summary(method_report)
        write_json(self.dir / "summary.json", summary)
        plots.standard_plots(self.dir, self.rounds, self.label_counts, summary)
        method_plots = get_method(self.settings.method).plots
        if method_plots is not None:
            method_plots(self.dir, self.rounds, summary)
        self.sinks.finish(summary, self.dir)
        headline = (
            f"final mean test accuracy {summary['final']['accuracy']:.4f}"
            if summary["final"].get("accuracy") is not None
            else "finished"
        )
        log(INFO, "[fedvq] %s%s; results in %s", headline, self._excluded_text(summary["num_clients"]), self.dir)
        return summary


def _size(num_bytes: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if num_bytes >= scale:
            return f"{num_bytes / scale:.2f} {unit}"
    return f"{int(num_bytes)} B"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def progress_text(done: int, total: int, round_seconds: list[float]) -> str:
    """'12.3 s/round, ETA 1:02' from the mean duration of the rounds this process ran."""
    if not round_seconds:
        return "ETA unknown"
    per_round = sum(round_seconds) / len(round_seconds)
    remaining = max(total - done, 0)
    return f"{round_seconds[-1]:.1f} s (mean {per_round:.1f} s/round), ETA {_duration(remaining * per_round)}"


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
