"""An in-process Grid: the real ServerApp and ClientApp without Ray or a SuperLink.

Tests and benchmarks use it to run a whole job in one process in seconds: every
node is a ``Context`` (with its own persistent ``state``) and a message is
delivered by calling the ClientApp directly. Nodes can be told to drop out
(``fail_nodes``) or have their replies rewritten (``tamper``) to test faults.
As on separate machines, what a client does to the process-wide random generators
(``random``, numpy's, torch's: clients seed them for their local training) does not
reach the server: they are restored after every delivery, so the server's node
sampling follows its own seed whatever its clients did.
``flwr run`` (simulation) and real SuperNodes use Flower's own grids.
"""

from __future__ import annotations

import random
import sys
import time
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.config import flatten_dict
from flwr.serverapp import Grid, ServerApp

from fedvq_app.records import record_bytes


def claim_server_identity(run_id: int = 1) -> None:
    """Give this process the identity Flower's ServerApp process has (Message needs it)."""
    from flwr.supercore.task_identity import TaskIdentity  # noqa: PLC0415 - start-up cost: Flower's server internals, only on this path

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, 0, 0


Tamper = Callable[[int, Message], Message | None]


@dataclass
class LocalGrid(Grid):
    """Delivers messages to in-process ClientApp instances, one per node."""

    client_app: ClientApp
    num_nodes: int
    run_config: dict
    node_configs: dict[int, dict] = field(default_factory=dict)
    fail_nodes: set[int] = field(default_factory=set)
    tamper: Tamper | None = None

    def __post_init__(self) -> None:
        # one run config for every node, as a SuperLink hands out one per run (a copy per node
        # cost 3 kB x nodes: 32 MB at 10,000 in-process clients)
        run_config = dict(self.run_config)
        self.contexts = {
            node_id: Context(
                run_id=1,
                node_id=node_id,
                node_config={
                    "partition-id": node_id - 1,
                    "num-partitions": self.num_nodes,
                    **self.node_configs.get(node_id, {}),
                },
                state=RecordDict(),
                run_config=run_config,
            )
            for node_id in range(1, self.num_nodes + 1)
        }
        self._run = None
        #: bytes of every record each node sent back (Flower's own count_bytes)
        self.reply_bytes = {node_id: 0 for node_id in self.contexts}
        claim_server_identity()

    # The Grid interface ---------------------------------------------------
    def set_run(self, run) -> None:
        self._run = run

    @property
    def run(self):
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return Message(content=content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError("LocalGrid delivers synchronously; use send_and_receive")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError("LocalGrid delivers synchronously; use send_and_receive")

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        replies = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            if node in self.fail_nodes:
                continue  # the node dropped out: no reply arrives
            torch = sys.modules.get("torch")  # k-means jobs never import it: neither does the grid
            generators = random.getstate(), np.random.get_state(), torch.get_rng_state() if torch else None
            # each node gets its own config records, as over a wire (Flower's SecAgg+ mod edits its config
            # record in place); arrays stay shared, read-only; the server's message keeps its content
            sent = msg.content
            msg.content = RecordDict(
                {
                    name: ConfigRecord(dict(record)) if isinstance(record, ConfigRecord) else record
                    for name, record in sent.items()
                }
            )
            try:
                reply = self.client_app(msg, self.contexts[node])
            except Exception as err:  # noqa: BLE001 - a client crash becomes an error reply
                reply = Message(Error(code=0, reason=f"{type(err).__name__}: {err}"), reply_to=msg)
            finally:  # the server's generators are its own (a client is another process in a deployment)
                msg.content = sent
                random.setstate(generators[0])
                np.random.set_state(generators[1])
                if torch is not None and generators[2] is not None:
                    torch.set_rng_state(generators[2])
            if self.tamper is not None:
                reply = self.tamper(node, reply)
                if reply is None:
                    continue
            if not reply.has_error():
                self.reply_bytes[node] += sum(record_bytes(record) for record in reply.content.values())
            replies.append(reply)
        return replies


def run_local(
    server_app: ServerApp,
    client_app: ClientApp,
    num_nodes: int,
    run_config: dict,
    **grid_kwargs,
) -> LocalGrid:
    """Run a ServerApp against ``num_nodes`` in-process clients; returns the grid."""
    grid = LocalGrid(client_app, num_nodes, run_config, **grid_kwargs)
    server_context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=dict(run_config))
    started = time.time()
    server_app(grid=grid, context=server_context)
    grid.elapsed_s = time.time() - started
    return grid


def full_run_config(**overrides) -> dict:
    """The pyproject defaults with ``overrides`` (keys in kebab-case as in the TOML)."""
    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    if pyproject.is_file():
        config = flatten_dict(tomllib.loads(pyproject.read_text())["tool"]["flwr"]["app"]["config"])
    else:  # installed without the source tree: every option's own default
        from fedvq_app.registry import all_option_keys  # noqa: PLC0415 - start-up cost: every method (torch, scikit-learn), only on this path

        config = dict(all_option_keys())
    unknown = sorted(set(overrides) - set(config))
    if unknown:
        raise KeyError(f"unknown run-config keys {unknown}")
    config.update(overrides)
    return config
