"""FedLoGe on the server: weighted FedAvg of backbone + global head, long-tail reporting.

Clients send only the backbone and the global head (SSE-C is rebuilt from the
seed on every node, local heads stay on the clients), so Flower's FedAvg over
the reply arrays is exactly FedLoGe's aggregation. The server also learns the
global class frequencies from the clients' ``label-counts`` (a statistic, never
data), cuts them into head/medium/tail groups, tells clients in the evaluate
config whether to apply GLA-FR this round, and turns the clients' per-class
correct/total counts into overall and per-group accuracy for every inference mode
(on the clients' own long-tailed test data, and ``<mode>-balanced`` on the global test set).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord

from fedvq_app.aggregation.etf import GROUPS, mode_summary, shot_groups
from fedvq_app.models.fedloge import REPORTED_MODES
from fedvq_app.protocol import LABEL_COUNTS
from fedvq_app.strategies.fedavg import FedAvgStrategy


class FedLoGeStrategy(FedAvgStrategy):
    """Guarded FedAvg + class-frequency bookkeeping + per-mode long-tail accuracies."""

    def __init__(
        self,
        *args,
        num_classes: int,
        num_rounds: int,
        realign_each_round: bool = True,
        head_share: float = 0.75,
        medium_share: float = 0.95,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.num_classes = num_classes
        self.num_rounds = num_rounds
        self.realign_each_round = realign_each_round
        self.head_share = head_share
        self.medium_share = medium_share
        #: partition id -> that client's latest training label counts
        self.label_counts: dict[int, np.ndarray] = {}
        self.last_round: dict = {}
        self.last_evaluated: dict = {}

    # ---------------------------------------------------------------- class frequencies
    def class_frequencies(self) -> np.ndarray:
        """Training samples per class over every client heard from so far."""
        if not self.label_counts:
            return np.zeros(self.num_classes, dtype=np.int64)
        return np.sum(list(self.label_counts.values()), axis=0)

    def groups(self) -> np.ndarray | None:
        """Head/medium/tail id per class (None before any label counts arrived)."""
        freq = self.class_frequencies()
        return shot_groups(freq, self.head_share, self.medium_share) if freq.sum() > 0 else None

    def method_problem(self, msg: Message) -> str | None:
        counts = msg.content["metrics"].get(LABEL_COUNTS)
        if not isinstance(counts, list) or len(counts) != self.num_classes:
            return f"'{LABEL_COUNTS}' must list {self.num_classes} per-class counts"
        if any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in counts):
            return f"'{LABEL_COUNTS}' must hold non-negative integers"
        if "partition-id" not in msg.content["metrics"]:
            return "no 'partition-id' metric"
        return None

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        replies = list(replies)
        arrays, metrics = super().aggregate_train(server_round, replies)
        accepted = set(self.accepted_nodes)
        for msg in replies:
            if msg.metadata.src_node_id in accepted:
                record = msg.content["metrics"]
                self.label_counts[int(record["partition-id"])] = np.asarray(record[LABEL_COUNTS], dtype=np.int64)
        return arrays, metrics

    # ---------------------------------------------------------------- evaluation
    def realign_in(self, server_round: int) -> bool:
        """GLA-FR every evaluation, or only after the last round."""
        return self.realign_each_round or server_round >= self.num_rounds

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid):
        config["realign"] = self.realign_in(server_round)
        return super().configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        replies = list(replies)
        aggregated = super().aggregate_evaluate(server_round, replies)
        groups = self.groups()
        accepted = set(self.accepted_nodes)
        records = [m.content["metrics"] for m in replies if m.metadata.src_node_id in accepted]
        if aggregated is None or groups is None or not records:
            self.last_round = {}
            return aggregated
        modes = {mode: self._mode(records, mode, groups) for mode in REPORTED_MODES}
        self.last_round = {"realigned": self.realign_in(server_round), "modes": modes}
        self.last_evaluated = {"round": server_round, **self.last_round}
        for mode, figures in modes.items():
            for key in ("overall", *GROUPS):
                if figures[key] is not None:
                    aggregated[f"{mode}-{key}-accuracy"] = figures[key]
        return aggregated

    def _mode(self, records: list, mode: str, groups: np.ndarray) -> dict:
        correct = [np.asarray(r[f"{mode}-class-correct"], dtype=np.int64) for r in records]
        total = [np.asarray(r[f"{mode}-class-total"], dtype=np.int64) for r in records]
        return mode_summary(correct, total, groups)

    # ---------------------------------------------------------------- reports
    def _group_table(self) -> dict:
        groups = self.groups()
        if groups is None:
            return {}
        return {name: np.flatnonzero(groups == gid).tolist() for gid, name in enumerate(GROUPS)}

    def round_report(self) -> dict:
        """Per-round: groups, and overall/head/medium/tail accuracy of every mode."""
        if not self.last_round:
            return {"groups": self._group_table()}
        modes = {m: {k: f[k] for k in ("overall", *GROUPS)} for m, f in self.last_round["modes"].items()}
        return {"groups": self._group_table(), "realigned": self.last_round["realigned"], "modes": modes}

    def final_report(self) -> dict:
        """summary.json['fedloge']: final per-mode figures, class frequencies and groups."""
        return {
            "class_frequencies": self.class_frequencies().tolist(),
            "groups": self._group_table(),
            "head_share": self.head_share,
            "medium_share": self.medium_share,
            "final_round": self.last_evaluated.get("round"),
            "realigned": self.last_evaluated.get("realigned"),
            "modes": self.last_evaluated.get("modes", {}),
        }

    # ---------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, np.ndarray]:
        """The label counts heard so far (the groups are recomputed from them)."""
        pids = sorted(self.label_counts)
        return {
            "label_counts/partition_ids": np.asarray(pids, dtype=np.int64),
            "label_counts/counts": np.asarray([self.label_counts[p] for p in pids], dtype=np.int64).reshape(
                len(pids), self.num_classes
            ),
        }

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        pids = np.asarray(state.get("label_counts/partition_ids", []), dtype=np.int64)
        counts = np.asarray(state.get("label_counts/counts", np.zeros((0, self.num_classes))), dtype=np.int64)
        self.label_counts = {int(p): c for p, c in zip(pids, counts, strict=True)}
