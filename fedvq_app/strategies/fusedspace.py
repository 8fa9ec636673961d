"""Decoder-only aggregation (FusedSpaceFed): the shared decoder and classifier, never an encoder.

The global arrays the server holds and sends are exactly the parameters the
method registers as shared (``is_shared``). A reply that carries any private
(encoder) tensor, in any record, is rejected with its reason logged; the guard
already rejects replies whose arrays differ from what was sent. What remains is
averaged with Flower's FedAvg, weighted by ``num-examples``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message

from fedvq_app.protocol import FUSEDSPACE_STATS_RECORD as STATS_RECORD
from fedvq_app.strategies.fedavg import FedAvgStrategy


class FusedSpaceStrategy(FedAvgStrategy):
    """Example-weighted mean of the registered shared parameters only."""

    def __init__(self, *args, is_shared: Callable[[str], bool], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.is_shared = is_shared
        self.shared_names: tuple[str, ...] = ()
        self.stats: dict[str, float] = {}

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid):
        private = [k for k in arrays.keys() if not self.is_shared(k)]
        if private:
            raise ValueError(f"the global model must hold shared parameters only, got private {private[:3]}")
        self.shared_names = tuple(arrays.keys())
        return super().configure_train(server_round, arrays, config, grid)

    def method_problem(self, msg: Message) -> str | None:
        """Any private (encoder) tensor in any array record of the reply rejects it."""
        for record_name, record in msg.content.array_records.items():
            private = [k for k in record.keys() if not self.is_shared(k)]
            if private:
                return f"carries private encoder tensors in '{record_name}': {private[:3]}"
        return None

    def aggregate_train(self, server_round: int, replies):
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is not None and tuple(arrays.keys()) != self.shared_names:
            raise RuntimeError("aggregation produced arrays other than the registered shared parameters")
        self.stats = self._mean_stats()
        return arrays, metrics

    def _mean_stats(self) -> dict[str, float]:
        """Unweighted client mean of the scalar statistics clients sent (reconstruction losses)."""
        records = [dict(rec[STATS_RECORD]) for rec in self.extras.values() if STATS_RECORD in rec.metric_records]
        keys = set().union(*records) if records else set()
        return {k: float(np.mean([r[k] for r in records if k in r])) for k in sorted(keys)}

    def round_report(self) -> dict:
        """Per-round statistics for rounds.jsonl: what was averaged and how well clients reconstruct."""
        return {"shared-tensors": len(self.shared_names), **self.stats}

    def final_report(self) -> dict:
        return {"shared_tensors": list(self.shared_names), **self.stats, **super().final_report()}
