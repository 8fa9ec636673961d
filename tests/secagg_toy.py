"""A toy federation for the secure-aggregation tests: each node's train handler returns a known vector."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedvq_app import protocol
from fedvq_app.clients.secure_sum import secure_sum_mod
from fedvq_app.config import SecAggSettings
from fedvq_app.local_grid import LocalGrid

TOY_SECAGG = SecAggSettings(mode="secaggplus", quantization_range=2**22)


def toy_vectors(nodes: int, size: int = 5, seed: int = 0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {node: rng.uniform(-2, 2, size) for node in range(1, nodes + 1)}


def toy_instructions(clip: float, scale: float = 1.0) -> ConfigRecord:
    """What the server adds to a plain-sum exchange (fedvq_app/server/secure_sum.py does it in the app)."""
    return ConfigRecord({"handler": "train", "summand": protocol.SUMMAND_SUM, "scale": scale, "clipping-range": clip})


def toy_grid(vectors: dict[int, np.ndarray], tamper=None) -> LocalGrid:
    """An in-process grid whose nodes answer a secure ``sum`` exchange with their vector (``grid.seen``: what
    the handlers received)."""
    app = ClientApp(mods=[secure_sum_mod])
    seen: list[Message] = []

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        seen.append(msg)
        content = RecordDict(
            {
                "arrays": ArrayRecord({"v": Array(np.asarray(vectors[context.node_id]))}),
                "metrics": MetricRecord({"num-examples": 10}),
            }
        )
        return Message(content, reply_to=msg)

    grid = LocalGrid(app, len(vectors), {"secagg.mode": "secaggplus"}, tamper=tamper)
    grid.seen = seen
    return grid
