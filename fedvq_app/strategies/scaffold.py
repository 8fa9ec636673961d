"""SCAFFOLD: FedAvg plus a server control variate sent with the model.

Clients correct every gradient by ``c - c_i`` and reply with their model and the
change of their own control variate (record ``scaffold-dc``); the server moves the
model by ``server_lr`` towards the weighted mean and ``c`` by the mean change
scaled by the participating fraction. ``c`` is part of the checkpointed state.
"""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord

from fedvq_app.aggregation.scaffold import control_update, server_step
from fedvq_app.protocol import SCAFFOLD_CONTROL as CONTROL
from fedvq_app.protocol import SCAFFOLD_CONTROL_DELTA as CONTROL_DELTA
from fedvq_app.protocol import SECAGG_CONTRIBUTORS
from fedvq_app.records import to_numpy, to_record
from fedvq_app.strategies.fedavg import FedAvgStrategy


class ScaffoldStrategy(FedAvgStrategy):
    """FedAvg with control variates (Karimireddy et al., 2020)."""

    extra_record_names = (CONTROL_DELTA,)

    def __init__(self, *args, server_lr: float = 1.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.server_lr = server_lr
        self.control: dict[str, np.ndarray] | None = None
        self.global_arrays: dict[str, np.ndarray] = {}
        self.num_nodes = 0

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid):
        self.global_arrays = to_numpy(arrays)
        if self.control is None:
            self.control = {k: np.zeros_like(v) for k, v in self.global_arrays.items()}
        self.num_nodes = len(list(grid.get_node_ids()))
        messages = super().configure_train(server_round, arrays, config, grid)
        for msg in messages:
            msg.content[CONTROL] = to_record(self.control)
        return messages

    def secure_summed_records(self, scale: float) -> dict[str, dict[str, float]]:
        """Under secure aggregation (fedvq_app/server/secure_sum.py) the control-variate changes are summed
        unweighted (bound 1 / scale: each entry travels as is, within secagg.clipping-range)."""
        return {CONTROL_DELTA: {name: 1.0 / scale for name in self.control or {}}}

    def _deltas(self) -> list[dict[str, np.ndarray]]:
        """Every accepted client's control change; a secure sum stands for its contributors' mean, once each."""
        deltas = []
        for node in self.accepted_nodes:
            delta = to_numpy(self.extras[node][CONTROL_DELTA])
            pooled = self.extras[node].config_records.get(SECAGG_CONTRIBUTORS)
            if pooled is None:
                deltas.append(delta)
                continue
            count = len(pooled["nodes"])
            deltas += [{k: v / count for k, v in delta.items()}] * count
        return deltas

    def method_problem(self, msg) -> str | None:
        delta = msg.content.array_records.get(CONTROL_DELTA)
        if delta is None or set(delta.keys()) != set(self.control or {}):
            return f"'{CONTROL_DELTA}' must carry one array per model array"
        for name, arr in delta.items():
            value = arr.numpy()
            if value.shape != self.control[name].shape or not np.isfinite(value).all():
                return f"'{CONTROL_DELTA}/{name}' has a wrong shape or non-finite values"
        return None

    def aggregate_train(self, server_round: int, replies):
        averaged, metrics = super().aggregate_train(server_round, replies)
        if averaged is None:
            return None, metrics
        deltas = self._deltas()
        participation = len(deltas) / max(self.num_nodes, len(deltas))
        self.control = control_update(self.control, deltas, participation)
        stepped = server_step(self.global_arrays, to_numpy(averaged), self.server_lr)
        return to_record(stepped), metrics

    def state_dict(self) -> dict[str, np.ndarray]:
        """What a checkpoint must keep besides the global model."""
        return {f"control/{k}": v for k, v in (self.control or {}).items()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.control = {k.split("/", 1)[1]: v for k, v in state.items() if k.startswith("control/")} or None
