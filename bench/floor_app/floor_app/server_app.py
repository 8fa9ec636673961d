"""Rounds of one train and one evaluate message per node, the FedAvg job's message pattern, timed.

Both messages carry ``payload-floats`` float32 values (the FedAvg model's size) down, the
train reply carries them back (as FedAvg's do); wall seconds per round go to ``result-file`` as JSON.
``messages-per-round = 1``: the train message only (the pattern of ``evaluate-with-train``).
"""

import json
import time
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


def _round(grid: Grid, nodes: list[int], arrays: ArrayRecord, server_round: int, messages: int) -> None:
    config = ConfigRecord({"server-round": server_round})
    for kind in ("train", "evaluate")[:messages]:
        content = RecordDict({"arrays": arrays, "config": config})
        messages = [Message(content=content, dst_node_id=node, message_type=kind) for node in nodes]
        replies = list(grid.send_and_receive(messages, timeout=600))
        failed = [r for r in replies if r.has_error()]
        if len(replies) != len(nodes) or failed:
            raise RuntimeError(f"{kind} round {server_round}: {len(replies)} replies, {len(failed)} errors")


@app.main()
def main(grid: Grid, context: Context) -> None:
    rounds = int(context.run_config["num-server-rounds"])
    arrays = ArrayRecord({"payload": Array(np.zeros(int(context.run_config["payload-floats"]), dtype=np.float32))})
    while len(nodes := list(grid.get_node_ids())) == 0:
        time.sleep(0.5)
    per_round = []
    for server_round in range(1, rounds + 1):
        started = time.time()
        _round(grid, nodes, arrays, server_round, int(context.run_config["messages-per-round"]))
        per_round.append(time.time() - started)
    target = str(context.run_config["result-file"])
    if target:
        Path(target).write_text(json.dumps({"per_round_s": per_round, "nodes": len(nodes)}))
