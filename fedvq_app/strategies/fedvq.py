"""FedVQ on the server: FedAvg for every shared array except the codebook.

The codebook is rebuilt each round by the aggregator named in
``codebook.aggregation`` (``fedvq_app.aggregation.codebook``) from the clients'
codebooks, example counts and code-usage counts, under the alignment mode
``codebook.align``; projection, decoder and classifier are averaged weighted by
examples. The strategy keeps per-round aggregation statistics, every client's
best evaluation round and the last round's codes for the final report's plots.
"""

from __future__ import annotations

import time
from logging import INFO
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.common.logger import log

from fedvq_app.aggregation.codebook import CodebookParams, aggregate_codebook, perplexity, used_codes
from fedvq_app.models.vq import CODEBOOK_KEY
from fedvq_app.records import to_numpy, to_record
from fedvq_app.strategies.fedavg import GuardedFedAvg

#: record of the train reply with the code counts ("counts") and used-code mask ("used")
USAGE_RECORD = "fedvq-usage"
#: per-round statistics kept for the final report and the checkpoint
HISTORY_KEYS = ("round", "aggregation_s", "inertia", "usage_ratio", "drift")
#: decimals kept for the PCA coordinates in summary.json
PCA_DECIMALS = 4


def _pid(msg: Message) -> int:
    """The client's partition id (its node id if it did not say)."""
    return int(msg.content["metrics"].get("partition-id", msg.metadata.src_node_id))


def codebook_pca(global_codebook: np.ndarray, client_codebooks: dict[int, np.ndarray]) -> dict[str, Any]:
    """2D PCA of the global codebook together with every client's codes."""
    from sklearn.decomposition import PCA  # noqa: PLC0415

    pids = sorted(client_codebooks)
    stacked = np.vstack([global_codebook, *[client_codebooks[p] for p in pids]])
    pca = PCA(n_components=2).fit(stacked)
    project = lambda x: np.round(pca.transform(x), PCA_DECIMALS).tolist()  # noqa: E731
    return {
        "explained_variance_ratio": pca.explained_variance_ratio_.tolist(),
        "global": project(global_codebook),
        "clients": {str(p): project(client_codebooks[p]) for p in pids},
    }


class FedVQStrategy(GuardedFedAvg):
    """Guarded FedAvg whose codebook goes through a codebook aggregator."""

    extra_record_names = (USAGE_RECORD,)

    def __init__(
        self,
        *args,
        aggregation: str,
        align: str,
        codebook_shape: tuple[int, int],
        params: CodebookParams = CodebookParams(),
        seed: int = 0,
        experiment: str = "",
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.aggregation = aggregation
        self.align = align
        self.codebook_shape = tuple(codebook_shape)
        self.params = params
        self.seed = seed
        self.experiment = experiment
        self.previous: np.ndarray | None = None
        self.history: list[dict[str, Any]] = []
        self.best_rounds: dict[str, dict[str, float]] = {}
        self.last_codes: dict[int, np.ndarray] = {}
        self.last_usage: dict[int, np.ndarray] = {}
        self.last_global: np.ndarray | None = None
        self._report: dict[str, Any] = {}

    # ---------------------------------------------------------------- sending
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid):
        """Remember the codebook the clients start from (the alignment reference)."""
        self.previous = arrays[CODEBOOK_KEY].numpy().astype(np.float64)
        if self.experiment:
            config["experiment"] = self.experiment
        return super().configure_train(server_round, arrays, config, grid)

    # ---------------------------------------------------------------- screening
    def method_problem(self, msg: Message) -> str | None:
        """Codebook of the configured size; usage counts: one finite count >= 0 per code (and the mask as many)."""
        book = msg.content["arrays"].get(CODEBOOK_KEY)
        if book is None:
            return f"no codebook '{CODEBOOK_KEY}' in the reply"
        if tuple(book.shape) != self.codebook_shape:
            return f"codebook has shape {tuple(book.shape)}, expected {self.codebook_shape}"
        usage = msg.content.array_records[USAGE_RECORD]
        if "counts" not in usage:
            return f"'{USAGE_RECORD}' has no 'counts'"
        counts = usage["counts"].numpy()
        if counts.shape != (self.codebook_shape[0],):
            return f"usage counts have shape {counts.shape}, expected ({self.codebook_shape[0]},)"
        if not np.isfinite(counts.astype(np.float64)).all() or (counts < 0).any():
            return "usage counts must be finite and >= 0"
        if "used" in usage and usage["used"].numpy().shape != counts.shape:
            return f"used-code mask has shape {usage['used'].numpy().shape}, expected {counts.shape}"
        return None

    # ---------------------------------------------------------------- aggregation
    def aggregate_train(self, server_round: int, replies):
        replies = list(replies)
        averaged, metrics = super().aggregate_train(server_round, replies)
        if averaged is None:
            self._report = {"aggregation": self.aggregation, "align": self.align, "skipped": True}
            return None, metrics
        by_node = {m.metadata.src_node_id: m for m in replies if not m.has_error()}
        accepted = [by_node[n] for n in self.accepted_nodes]
        codebooks = [m.content["arrays"][CODEBOOK_KEY].numpy() for m in accepted]
        weights = [float(m.content["metrics"]["num-examples"]) for m in accepted]
        counts = [self.extras[n][USAGE_RECORD]["counts"].numpy() for n in self.accepted_nodes]
        started = time.perf_counter()
        result = aggregate_codebook(
            self.aggregation,
            codebooks,
            weights,
            counts,
            self.previous,
            np.random.default_rng([self.seed, server_round]),
            self.align,
            self.params,
        )
        elapsed = time.perf_counter() - started
        arrays = to_numpy(averaged)
        arrays[CODEBOOK_KEY] = result.codebook.astype(arrays[CODEBOOK_KEY].dtype)
        pids = [_pid(m) for m in accepted]
        self.last_codes = dict(zip(pids, codebooks, strict=True))
        self.last_usage = dict(zip(pids, counts, strict=True))
        self.last_global = arrays[CODEBOOK_KEY]
        self._report = self._round_statistics(server_round, pids, weights, counts, result, elapsed)
        self.history.append({k: self._report[k] for k in HISTORY_KEYS if k in self._report})
        return to_record(arrays), metrics

    def _round_statistics(self, server_round, pids, weights, counts, result, elapsed) -> dict[str, Any]:
        total = sum(weights)
        used = [used_codes(c, self.params.usage_threshold) for c in counts]
        clients = {
            str(pid): {
                "share": w / total,
                "used": int(u.sum()),
                "codebook_size": int(len(c)),
                "perplexity": perplexity(c),
            }
            for pid, w, c, u in zip(pids, weights, counts, used, strict=True)
        }
        return {
            "round": server_round,
            "aggregation": self.aggregation,
            "align": self.align,
            "aggregation_s": elapsed,
            "inertia": result.inertia,
            "usage_ratio": float(np.logical_or.reduce(used).mean()),
            **{k: v for k, v in result.stats.items() if k not in ("usage_ratio",)},
            "clients": clients,
        }

    # ---------------------------------------------------------------- evaluation
    def aggregate_evaluate(self, server_round: int, replies):
        replies = list(replies)
        aggregated = super().aggregate_evaluate(server_round, replies)
        rows = {}
        for msg in replies:
            metrics = None if msg.has_error() else msg.content.metric_records.get("metrics")
            if metrics is None or "test-accuracy" not in metrics:
                continue
            pid, acc = str(_pid(msg)), float(metrics["test-accuracy"])
            rows[pid] = acc
            if pid not in self.best_rounds or acc > self.best_rounds[pid]["accuracy"]:
                self.best_rounds[pid] = {"round": server_round, "accuracy": acc}
        self._log_table(server_round, rows)
        return aggregated

    def _log_table(self, server_round: int, accuracies: dict[str, float]) -> None:
        """The seed's per-round client table in the log: share, accuracy, best round, usage."""
        clients = self._report.get("clients", {})
        lines = [f"[fedvq] round {server_round} | client | share | test acc | best (round) | used/K | perplexity"]
        for pid in sorted(accuracies, key=int):
            c, best = clients.get(pid, {}), self.best_rounds[pid]
            lines.append(
                f"[fedvq]   {pid:>4} | {100 * c.get('share', 0):5.1f} % | {accuracies[pid]:.4f} | "
                f"{best['accuracy']:.4f} ({best['round']}) | {c.get('used', '-')}/{c.get('codebook_size', '-')} | "
                f"{c.get('perplexity', float('nan')):.2f}"
            )
        log(INFO, "\n".join(lines))

    # ---------------------------------------------------------------- reports
    def round_report(self) -> dict[str, Any]:
        """This round's aggregation statistics and per-client usage (rounds.jsonl 'strategy')."""
        return dict(self._report)

    def final_report(self) -> dict[str, Any]:
        """summary.json['fedvq']: timings, last statistics, best rounds, usage, codebook PCA."""
        seconds = [h["aggregation_s"] for h in self.history]
        report: dict[str, Any] = {
            "aggregation": self.aggregation,
            "align": self.align,
            "codebook_shape": list(self.codebook_shape),
            "aggregation_s_mean": float(np.mean(seconds)) if seconds else None,
            "aggregation_s_total": float(np.sum(seconds)),
            "final_inertia": self.history[-1]["inertia"] if self.history else None,
            "final_usage_ratio": self.history[-1]["usage_ratio"] if self.history else None,
            "best_round_per_client": self.best_rounds,
            "usage": {str(p): c.tolist() for p, c in sorted(self.last_usage.items())},
        }
        if self.last_global is not None and self.last_codes:
            report["pca"] = codebook_pca(self.last_global, self.last_codes)
        return report

    def state_dict(self) -> dict[str, Any]:
        """Server state beyond the global arrays: statistics history and best rounds."""
        state: dict[str, Any] = {"history": self.history, "best_rounds": self.best_rounds}
        if self.last_global is not None:
            state["last_global"] = np.asarray(self.last_global)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [dict(h) for h in state.get("history", [])]
        self.best_rounds = {str(k): dict(v) for k, v in state.get("best_rounds", {}).items()}
        last = state.get("last_global")
        self.last_global = None if last is None else np.asarray(last)
