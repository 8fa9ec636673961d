"""The experiment folder every run writes: config, per-round JSON, summary, plots.

Layout of ``<log-dir>/<experiment-name or method_dataset_timestamp>/``::

    config.json      resolved run config
    rounds.jsonl     one JSON object per round (per-client and aggregated metrics,
                     sampled/replied/dropped/rejected nodes, strategy statistics);
                     sampled nodes as id ranges ("1-10000"), and the per-client blocks
                     of training and traffic only up to tracking.per-client-limit
                     clients (above it: counts and id ranges)
    summary.json     stable keys for scripts (see :meth:`ExperimentTracker.summary`)
    *.png            plots (see fedvq_app.tracking.plots)
    events.out.tfevents.*  TensorBoard scalars per round (see fedvq_app.tracking.sinks)
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

from flwr.app import Message
from flwr.common.logger import log

from fedvq_app.config import ConfigError, Settings, resolve_log_root
from fedvq_app.protocol import SECAGG_CONTRIBUTORS, TOP_LEVEL_KEY
from fedvq_app.registry import get_method
from fedvq_app.tracking.communication import Traffic, TrafficMeter, run_communication
from fedvq_app.tracking.groups import DEFAULT_SHARES, head_medium_tail
from fedvq_app.tracking.groups import SUMMARY_KEY as GROUPS_KEY
from fedvq_app.tracking.idsets import ranges
from fedvq_app.tracking.sinks import SinkSet, open_sinks


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


def _client_metrics(
    replies: Iterable[Message], rejected: Iterable[tuple[int, str]] = (), keys: tuple[str, ...] | None = None
) -> dict[int, dict[str, Any]]:
    """partition-id -> that client's metric record (only ``keys`` of it when given), from replies that
    carry one and were not rejected."""
    out: dict[int, dict[str, Any]] = {}
    rejected_nodes = {node for node, _ in rejected}
    for msg in replies:
        if msg.has_error() or "metrics" not in msg.content.metric_records or msg.metadata.src_node_id in rejected_nodes:
            continue
        record = msg.content["metrics"]
        metrics = dict(record) if keys is None else {k: record[k] for k in keys if k in record}
        if "partition-id" in metrics:
            metrics["node-id"] = msg.metadata.src_node_id
            out[int(metrics["partition-id"])] = metrics
    return out


def secure_contributors(replies: Iterable[Message]) -> list[int]:
    """Nodes whose vectors are in a secure sum that one of ``replies`` carries (secagg.mode; else none)."""
    nodes: list[int] = []
    for msg in replies:
        if not msg.has_error() and SECAGG_CONTRIBUTORS in msg.content.config_records:
            nodes += [int(n) for n in msg.content.config_records[SECAGG_CONTRIBUTORS]["nodes"]]
    return sorted(nodes)


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
    #: the round's traffic when taken before it is recorded (a round whose evaluation came with
    #: the next round's messages); None = whatever the meter counted since the last round
    traffic: Traffic | None = None


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
        #: rounds shown in the header and the progress log: a method whose options carry its own
        #: round limit (k-means' ``max_rounds``) is announced with that limit
        self.planned_rounds = int(getattr(settings.method_options, "max_rounds", settings.num_server_rounds))
        #: why the round loop ended before the last planned round (None = it did not)
        self.stopped_early: dict[str, Any] | None = None
        #: named warnings about legal but suspicious input (fedvq_app.errors.warn)
        self.warnings: list[dict[str, str]] = []
        #: node id -> why that site could not take part (its replies carried a configuration error)
        self.excluded_sites: dict[int, str] = {}
        #: a resumed folder is written only once its checkpoint is accepted (load_state_dict)
        self.writable = new
        #: most clients a round may have for per-client records (0 = no limit); said once when exceeded
        self.per_client_limit = settings.tracking.per_client_limit
        self._said_per_client_off = False
        if new:
            write_json(self.dir / "config.json", settings.to_dict())

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

    def announce(self, nodes: int) -> None:
        """The run's header line: method, dataset, clients (``nodes`` connected now), rounds, folder."""
        log(INFO, "%s", header_line(self.settings, self.dir, nodes, self.planned_rounds))

    # ------------------------------------------------------------------ rounds
    def per_client_records(self, num_clients: int) -> bool:
        """Whether a round of ``num_clients`` clients keeps per-client records (logs one line the first time not)."""
        if not self.per_client_limit or num_clients <= self.per_client_limit:
            return True
        self.traffic.per_node = self.traffic.window.per_node = False  # totals only from now on
        if not self._said_per_client_off:
            self._said_per_client_off = True
            log(
                INFO,
                "[fedvq] %s clients > tracking.per-client-limit=%d: per-client records and logs are off "
                "(counts and id ranges only); set tracking.per-client-limit=0 to write them",
                f"{num_clients:,}",
                self.per_client_limit,
            )
        return False

    def record_round(self, outcome: RoundOutcome) -> dict[str, Any]:
        """Append one line to rounds.jsonl and log the headline figures."""
        detail = self.per_client_records(len(outcome.sampled_train))
        # above the limit only what the tracker keeps (partition of each node, label counts) is read
        slim = None if detail else ("partition-id", "label-counts")
        train_clients = _client_metrics(outcome.train_replies, outcome.train_rejected, slim)
        eval_clients = _client_metrics(outcome.evaluate_replies, outcome.evaluate_rejected)
        for pid, metrics in {**train_clients, **eval_clients}.items():
            self.node_to_partition[int(metrics["node-id"])] = pid
        for pid, metrics in train_clients.items():
            if "label-counts" in metrics:
                self.label_counts[pid] = list(metrics["label-counts"])
        replied = {m.metadata.src_node_id for m in outcome.train_replies if not m.has_error()}
        summed = secure_contributors(outcome.train_replies)  # secagg.mode: one reply stands for the sum
        replied |= set(summed)
        dropped = sorted(set(outcome.sampled_train) - replied)
        record = {
            "round": outcome.server_round,
            "wall_time_s": outcome.wall_time_s,
            "sampled_train": ranges(outcome.sampled_train),
            "num_sampled_train": len(set(outcome.sampled_train)),
            "dropped": dropped,
            "dropped_partitions": sorted(self.node_to_partition[n] for n in dropped if n in self.node_to_partition),
            "rejected": [{"node": n, "reason": r} for n, r in outcome.train_rejected],
            "evaluate_rejected": [{"node": n, "reason": r} for n, r in outcome.evaluate_rejected],
            "train": {
                "aggregated": outcome.train_metrics,
                "clients": {
                    pid: {k: v for k, v in m.items() if k != "label-counts"} for pid, m in sorted(train_clients.items())
                }
                if detail
                else {},
                "num_clients": len(train_clients),
                **({} if detail else {"partitions": ranges(train_clients)}),
            },
            "evaluate": {
                "aggregated": outcome.evaluate_metrics,
                "clients": dict(sorted(eval_clients.items())),
            },
            "strategy": outcome.strategy_report,
        }
        if summed:
            record["secure_aggregation"] = {"contributors": ranges(summed), "num_contributors": len(summed)}
        record["evaluate"]["summary"] = client_spread(eval_clients)
        traffic = outcome.traffic if outcome.traffic is not None else self.traffic.take()
        record["communication"] = traffic.report(self.node_to_partition, per_client=detail)
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
        log(INFO, progress_line(record, self.planned_rounds, self.round_seconds))

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
            **rejection_totals(self.rounds),
            "status": "stopped_early" if self.stopped_early else "completed",
        }
        if self.stopped_early:
            summary["stopped_early"] = self.stopped_early
        self.traffic_outside_rounds()
        summary["communication"] = run_communication(self.rounds, self.outside_rounds, self.node_to_partition)
        warnings = list(self.warnings)
        rejected = rejection_warning(self.rounds)
        if rejected is not None:
            warnings.append(rejected)
        if warnings:
            summary["warnings"] = warnings
        # what fedloge_plots' head/medium/tail table reads (computed here, never re-run from a folder)
        groups = head_medium_tail(self.rounds, self.label_counts, self._group_shares())
        if groups:
            summary[GROUPS_KEY] = groups
        if self.excluded_sites:
            summary["excluded_sites"] = [{"node": n, "reason": r} for n, r in sorted(self.excluded_sites.items())]
        if method_report:
            method_report = dict(method_report)
            # a method without accuracies (k-means) names its headline figures at the top level
            summary.update(method_report.pop(TOP_LEVEL_KEY, {}))
            summary[self.settings.method] = method_report
        return _jsonable(summary)

    def _group_shares(self) -> tuple[float, float]:
        """FedLoGe's head/medium shares of this run's config (every method's config carries them)."""
        raw = self.settings.raw
        return float(raw.get("fedloge.head-share", DEFAULT_SHARES[0])), float(
            raw.get("fedloge.medium-share", DEFAULT_SHARES[1])
        )

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
        rejected = rejection_warning(self.rounds)
        if rejected is not None:
            log(WARNING, "[fedvq] warning %s: %s", rejected["name"], rejected["message"])
        plots.standard_plots(self.dir, self.rounds, self.label_counts, summary)
        method_plots = get_method(self.settings.method).plots
        if method_plots is not None:
            method_plots(self.dir, self.rounds, summary)
        self.sinks.finish(summary, self.dir)
        headline = (
            f"final mean test accuracy {_percent(summary['final']['accuracy'])}"
            if summary["final"].get("accuracy") is not None
            else "finished"
        )
        log(INFO, "[fedvq] %s%s; results in %s", headline, self._excluded_text(summary["num_clients"]), self.dir)
        return summary


def rejection_totals(rounds: list[dict[str, Any]]) -> dict[str, int]:
    """summary.json's counts of rejected replies: every phase (``rejected_total``) and evaluation alone."""
    train = sum(len(r["rejected"]) for r in rounds)
    evaluate = sum(len(r.get("evaluate_rejected", [])) for r in rounds)
    return {"rejected_total": train + evaluate, "rejected_evaluate_total": evaluate}


def rejection_warning(rounds: list[dict[str, Any]]) -> dict[str, str] | None:
    """The ``rejected-replies`` warning of summary.json: how many replies the guard refused, and the commonest why."""
    reasons = Counter(
        r["reason"] for rnd in rounds for phase in ("rejected", "evaluate_rejected") for r in rnd.get(phase, [])
    )
    if not reasons:
        return None
    totals = rejection_totals(rounds)
    train = totals["rejected_total"] - totals["rejected_evaluate_total"]
    reason, count = reasons.most_common(1)[0]
    return {
        "name": "rejected-replies",
        "message": (
            f"{totals['rejected_total']} replies rejected ({train} train, {totals['rejected_evaluate_total']} "
            f"evaluate) over {len(rounds)} rounds; most common reason ({count}x): {reason}"
        ),
    }


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
    """'4.0 s/round, ETA 0:32' from the mean duration of the rounds this process ran."""
    if not round_seconds:
        return "ETA unknown"
    per_round = sum(round_seconds) / len(round_seconds)
    remaining = max(total - done, 0)
    return f"{per_round:.1f} s/round, ETA {_duration(remaining * per_round)}"


def _percent(value: float, digits: int = 2) -> str:
    return f"{100 * value:.{digits}f} %"


def spread_text(spread: dict[str, float]) -> str:
    """'66.11 %', or '66.11 % (min 60.0, max 70.1)' when the clients differ."""
    text = _percent(spread["mean_accuracy"])
    if spread["max_accuracy"] - spread["min_accuracy"] > 1e-12:
        text += f" (min {100 * spread['min_accuracy']:.1f}, max {100 * spread['max_accuracy']:.1f})"
    return text


def progress_line(record: dict[str, Any], total: int, round_seconds: list[float]) -> str:
    """One round in one line of about 100 characters:

    ``[fedvq] round 2/10 (20 %) | loss 1.831 | acc 66.11 % (min 60.0, max 70.1) | own 67.19 % | 1.92 MB |
    0.8 s/round, ETA 0:07``: train loss (weighted), mean global-test accuracy over the clients
    (min/max only when they differ), mean own-distribution accuracy, bytes sent + received this
    round, time. Dropped or rejected clients are named only in rounds that have them.
    """
    done = record["round"]
    parts = [f"[fedvq] round {done}/{total} ({100 * done / max(total, 1):.0f} %)"]
    train_loss = record["train"]["aggregated"].get("train-loss")
    if train_loss is not None:
        parts.append(f"loss {train_loss:.3f}")
    spread = record["evaluate"]["summary"]
    if spread:
        parts.append(f"acc {spread_text(spread)}")
    own = client_spread(record["evaluate"]["clients"], "own-test-accuracy")
    if own:
        parts.append(f"own {_percent(own['mean_accuracy'])}")
    rejected = len(record["rejected"]) + len(record.get("evaluate_rejected") or [])
    if record["dropped"] or rejected:
        parts.append(f"dropped {len(record['dropped'])}, rejected {rejected}")
    traffic = record.get("communication") or {}
    if traffic.get("total_bytes"):
        parts.append(_size(traffic["total_bytes"]))
    parts.append(progress_text(done, total, round_seconds))
    return " | ".join(parts)


def header_line(settings: Settings, directory: Path, nodes: int, rounds: int) -> str:
    """'[fedvq] fedavg on digits, 3 clients, 10 rounds -> /abs/logs/fedavg_digits_...' (the run's first line)."""
    spec = get_method(settings.method)
    data = spec.data_name(settings) if spec.data_name else settings.dataset.name
    clients = f"{nodes} client{'s' if nodes != 1 else ''}" if nodes else "clients: none connected yet"
    return f"[fedvq] {settings.method} on {data}, {clients}, {rounds} rounds -> experiment folder {directory}"


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
