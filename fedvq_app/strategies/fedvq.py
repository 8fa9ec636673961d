"""FedVQ on the server: FedAvg for every shared array except the codebook.

The codebook is rebuilt each round by the aggregator named in
``codebook.aggregation``: ``lloyd`` (``fedvq_app.aggregation.codebook_lloyd``) from
the clients' per-code counts, sums and sums of squares only -- the clients' codebooks
do not travel -- or one of ``fedvq_app.aggregation.codebook`` from the clients'
codebooks, example counts and code-usage counts, under the alignment mode
``codebook.align``; projection, decoder and classifier are averaged weighted by
examples. The encoder schedule (``fedvq.encoder``) decides per round whether the
encoder is sent and whether it must come back; the reply guard expects exactly the
arrays the schedule asks back. The strategy keeps per-round aggregation statistics,
every client's best evaluation round and the last round's codes for the final
report's plots.
"""

from __future__ import annotations

import time
from logging import INFO
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.common.logger import log

from fedvq_app.aggregation.codebook import CodebookParams, aggregate_codebook, perplexity, used_codes
from fedvq_app.aggregation.codebook_lloyd import LLOYD, lloyd_codebook_heads
from fedvq_app.models.vq import CODEBOOK_KEY, encoder_travels, is_encoder
from fedvq_app.protocol import FEDVQ_ENCODER_UP_KEY as ENCODER_UP_KEY
from fedvq_app.protocol import FEDVQ_READY_KEY as READY_KEY
from fedvq_app.protocol import FEDVQ_USAGE_RECORD as USAGE_RECORD
from fedvq_app.records import to_numpy, to_record
from fedvq_app.strategies.fedavg import FedAvgStrategy

#: per-round statistics kept for the final report and the checkpoint
HISTORY_KEYS = ("round", "aggregation_s", "inertia", "usage_ratio", "drift", "codes_used", "perplexity")
#: decimals kept for the PCA coordinates in summary.json
PCA_DECIMALS = 4


def _pid(msg: Message) -> int:
    """The client's partition id (its node id if it did not say)."""
    return int(msg.content["metrics"].get("partition-id", msg.metadata.src_node_id))


def codebook_pca(global_codebook: np.ndarray, client_codebooks: dict[int, np.ndarray]) -> dict[str, Any]:
    """2D PCA of the global codebook together with every client's codes."""
    from sklearn.decomposition import PCA  # noqa: PLC0415 - start-up cost: scikit-learn, only on this path

    pids = sorted(client_codebooks)
    stacked = np.vstack([global_codebook, *[client_codebooks[p] for p in pids]])
    # codes narrower than 2 (e.g. 8 heads of a 8-d vector) or too few rows: fewer components, zero-padded
    n = min(2, stacked.shape[1], len(stacked))
    pca = PCA(n_components=n).fit(stacked)

    def project(x):
        coords = np.zeros((len(x), 2))
        coords[:, :n] = pca.transform(x)
        return np.round(coords, PCA_DECIMALS).tolist()

    ratio = [*pca.explained_variance_ratio_.tolist(), *[0.0] * (2 - n)]
    return {
        "explained_variance_ratio": ratio,
        "global": project(global_codebook),
        "clients": {str(p): project(client_codebooks[p]) for p in pids},
    }


class FedVQStrategy(FedAvgStrategy):
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
        codebook_key: str = CODEBOOK_KEY,
        quantizer: str = "gumbel",
        encoder: str = "private",
        shared_encoder_rounds: int = 0,
        initial_encoder: dict[str, np.ndarray] | None = None,
        heads: int = 1,
        max_revived: int = -1,
        revive_after: int = 1,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        #: ema multi-head VQ: ``codebook_shape`` is (heads * K, D / heads), head by head
        self.heads = heads
        self.max_revived = max_revived
        self.revive_after = revive_after
        #: lloyd: consecutive rounds each code had no vector anywhere (revival waits for revive_after)
        self.dead_rounds = np.zeros(codebook_shape[0], dtype=np.int64)
        self.codebook_key = codebook_key
        self.quantizer = quantizer
        self.encoder = encoder
        self.shared_encoder_rounds = shared_encoder_rounds
        #: the latest global encoder (shared schedules); starts as every client's initial encoder
        self.encoder_global: dict[str, np.ndarray] = dict(initial_encoder or {})
        #: whether a global codebook exists; the ema quantizer initialises locally before that
        self.ready = quantizer != "ema"
        self._encoder_up = False
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
        """Send what the encoder schedule says; remember the codebook the clients start from."""
        down, self._encoder_up = encoder_travels(self.encoder, self.shared_encoder_rounds, server_round)
        values = {k: v for k, v in to_numpy(arrays).items() if not is_encoder(k)}
        if down:
            current = {k: v for k, v in to_numpy(arrays).items() if is_encoder(k)} or self.encoder_global
            values = {**current, **values}
        self.previous = values[self.codebook_key].astype(np.float64).reshape(self.codebook_shape)
        if self.experiment:
            config["experiment"] = self.experiment
        config[READY_KEY] = int(self.ready)
        config[ENCODER_UP_KEY] = int(self._encoder_up)
        return super().configure_train(server_round, to_record(values), config, grid)

    def remember_sent(self, messages):
        """The expected reply schema: what was sent, less what the client keeps this round."""
        messages = super().remember_sent(messages)
        for node, schema in self.expected.items():
            self.expected[node] = {k: v for k, v in schema.items() if self._comes_back(k)}
        return messages

    def secure_summed_records(self, scale: float) -> dict[str, dict[str, float]]:
        """Under secure aggregation (fedvq_app/server/secure_sum.py): the lloyd statistics are summed, not
        averaged; each array key's bound (entries / (scale x bound) should lie in the clipping range)."""
        if self.aggregation != LLOYD:
            return {}
        dim = float(self.codebook_shape[1])
        return {USAGE_RECORD: {"counts": 1.0, "used": 1.0 / scale, "sums": 1.0, "squares": dim}}

    def _comes_back(self, name: str) -> bool:
        if is_encoder(name):
            return self._encoder_up
        return not (name == self.codebook_key and self.aggregation == LLOYD)

    # ---------------------------------------------------------------- screening
    def method_problem(self, msg: Message) -> str | None:
        """Codebook of the configured size; usage counts: one finite count >= 0 per code (and the mask as many);
        with lloyd: per-code sums (K, D) and sums of squares (K,), finite, squares >= 0."""
        k, d = self.codebook_shape
        usage = msg.content.array_records[USAGE_RECORD]
        if self.aggregation == LLOYD:
            for name, shape in (("sums", (k, d)), ("squares", (k,))):
                if name not in usage:
                    return f"'{USAGE_RECORD}' has no '{name}'"
                value = usage[name].numpy()
                if value.shape != shape:
                    return f"usage {name} have shape {value.shape}, expected {shape}"
                if not np.isfinite(value.astype(np.float64)).all():
                    return f"usage {name} must be finite"
            if (usage["squares"].numpy() < 0).any():
                return "usage squares must be >= 0"
        else:
            book = msg.content["arrays"].get(self.codebook_key)
            if book is None:
                return f"no codebook '{self.codebook_key}' in the reply"
            if int(np.prod(book.shape)) != k * d or book.shape[-1] != d:
                return f"codebook has shape {tuple(book.shape)}, expected {self.codebook_shape}"
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
        weights = [float(m.content["metrics"]["num-examples"]) for m in accepted]
        usage = [self.extras[n][USAGE_RECORD] for n in self.accepted_nodes]
        counts = [u["counts"].numpy() for u in usage]
        rng = np.random.default_rng([self.seed, server_round])
        previous = self.previous if self.ready else None  # ema before any global codebook: clustered cold
        started = time.perf_counter()
        if self.aggregation == LLOYD:
            sums = [u["sums"].numpy() for u in usage]
            pooled = np.sum([np.asarray(c, dtype=np.int64) for c in counts], axis=0)
            self.dead_rounds = (
                np.where(pooled > 0, 0, self.dead_rounds + 1)
                if previous is not None
                else np.zeros_like(self.dead_rounds)
            )
            result = lloyd_codebook_heads(
                counts,
                sums,
                [u["squares"].numpy() for u in usage],
                previous,
                rng,
                self.heads,
                self.params.max_iter,
                eligible=self.dead_rounds >= self.revive_after,
                max_revived=self.max_revived,
            )
            if previous is not None:  # a revived code starts a fresh life
                self.dead_rounds[self._revived(previous, result.codebook, pooled)] = 0
            # what the plots show for a client: the local means of the codes it disclosed
            codebooks = [s[c > 0] / c[c > 0][:, None] for s, c in zip(sums, counts, strict=True)]
        else:
            codebooks = [m.content["arrays"][self.codebook_key].numpy().reshape(self.codebook_shape) for m in accepted]
            align = self.align if self.ready else "none"
            result = aggregate_codebook(self.aggregation, codebooks, weights, counts, previous, rng, align, self.params)
        elapsed = time.perf_counter() - started
        arrays = to_numpy(averaged)
        if self._encoder_up:
            self.encoder_global = {k: v for k, v in arrays.items() if is_encoder(k)}
        k_per_head = self.codebook_shape[0] // self.heads
        shape = (self.heads, k_per_head, self.codebook_shape[1]) if self.quantizer == "ema" else self.codebook_shape
        arrays[self.codebook_key] = result.codebook.reshape(shape).astype(np.float32)
        self.ready = True
        pids = [_pid(m) for m in accepted]
        self.last_codes = dict(zip(pids, codebooks, strict=True))
        self.last_usage = dict(zip(pids, counts, strict=True))
        self.last_global = arrays[self.codebook_key].reshape(self.codebook_shape)
        self._report = self._round_statistics(server_round, pids, weights, counts, result, elapsed)
        self.history.append({k: self._report[k] for k in HISTORY_KEYS if k in self._report})
        return to_record(arrays), metrics

    @staticmethod
    def _revived(previous: np.ndarray, book: np.ndarray, pooled: np.ndarray) -> np.ndarray:
        """Dead codes whose vector the revival changed."""
        return (pooled <= 0) & np.any(book != previous, axis=1)

    def _round_statistics(self, server_round, pids, weights, counts, result, elapsed) -> dict[str, Any]:
        total = sum(weights)
        used = [used_codes(c, self.params.usage_threshold) for c in counts]
        pooled = np.sum([np.asarray(c, dtype=np.float64) for c in counts], axis=0)
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
            # federation-wide: codes any vector chose (/ K) and the perplexity of the pooled counts
            "codes_used": int((pooled > 0).sum()),
            "codebook_size": int(len(pooled)),
            "perplexity": perplexity(pooled),
            "quantizer": self.quantizer,
            "encoder": "shared" if self._encoder_up else "private",
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
        last = self.history[-1] if self.history else {}
        report: dict[str, Any] = {
            "quantizer": self.quantizer,
            "encoder": self.encoder,
            "shared_encoder_rounds": self.shared_encoder_rounds,
            "aggregation": self.aggregation,
            "align": self.align,
            "final_codes_used": last.get("codes_used"),
            "final_perplexity": last.get("perplexity"),
            "codebook_shape": list(self.codebook_shape),
            "heads": self.heads,
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
        state: dict[str, Any] = {
            "history": self.history,
            "best_rounds": self.best_rounds,
            "ready": self.ready,
            "encoder_keys": sorted(self.encoder_global),
            "dead_rounds": self.dead_rounds,
        }
        if self.last_global is not None:
            state["last_global"] = np.asarray(self.last_global)
        for i, key in enumerate(sorted(self.encoder_global)):
            state[f"encoder_{i}"] = np.asarray(self.encoder_global[key])
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [dict(h) for h in state.get("history", [])]
        self.best_rounds = {str(k): dict(v) for k, v in state.get("best_rounds", {}).items()}
        last = state.get("last_global")
        self.last_global = None if last is None else np.asarray(last)
        self.ready = bool(state.get("ready", self.ready))
        if "dead_rounds" in state:
            self.dead_rounds = np.asarray(state["dead_rounds"], dtype=np.int64)
        keys = state.get("encoder_keys", [])
        if keys:
            self.encoder_global = {key: np.asarray(state[f"encoder_{i}"]) for i, key in enumerate(keys)}
