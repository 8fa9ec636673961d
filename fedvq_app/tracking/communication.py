"""Communication cost: the bytes each message carries, counted where the server sends and receives.

:class:`MeteredGrid` wraps the run's grid (the SuperLink's in a simulation or a real
deployment, the in-process one in tests) and counts every message that goes out
and every reply that comes back with Flower's own byte counts of the records
(``ArrayRecord.count_bytes`` etc.: array payloads plus key names, without the
protobuf/gRPC framing). :class:`TrafficMeter` keeps them per node and per message
type; the tracker takes one window per round (:meth:`TrafficMeter.take`), so
``rounds.jsonl`` and ``summary.json`` say what each round and each client cost.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flwr.app import Message
from flwr.serverapp import Grid

from fedvq_app.grid_proxy import GridProxy
from fedvq_app.records import record_bytes

SENT, RECEIVED = "sent", "received"


def message_bytes(message: Message) -> int:
    """Bytes of all records a message carries (0 for an error reply without content)."""
    if not message.has_content():
        return 0
    return sum(record_bytes(record) for record in message.content.values())


def phase_of(message_type: str) -> str:
    """``train``, ``evaluate`` or ``query`` (Flower's message types, with a method's suffix dropped)."""
    return message_type.split(".", 1)[0]


@dataclass
class Traffic:
    """Bytes per (node, direction) and per (phase, direction) over some span of the run.

    Without ``per_node`` (more clients than tracking.per-client-limit) only the totals,
    the phases and the set of nodes are kept, not a row per node.
    """

    nodes: dict[int, dict[str, int]] = field(default_factory=dict)
    phases: dict[str, dict[str, int]] = field(default_factory=dict)
    messages: dict[str, int] = field(default_factory=lambda: {SENT: 0, RECEIVED: 0})
    per_node: bool = True
    totals: dict[str, int] = field(default_factory=lambda: {SENT: 0, RECEIVED: 0})
    #: nodes counted without a row of their own
    seen: set[int] = field(default_factory=set)

    def add(self, node: int, phase: str, direction: str, num_bytes: int) -> None:
        tables = ((self.nodes, node), (self.phases, phase)) if self.per_node else ((self.phases, phase),)
        for table, key in tables:
            row = table.setdefault(key, {SENT: 0, RECEIVED: 0})
            row[direction] += num_bytes
        if not self.per_node:
            self.seen.add(node)
        self.totals[direction] += num_bytes
        self.messages[direction] += 1

    def merge(self, other: Traffic) -> None:
        for table, theirs in ((self.nodes, other.nodes), (self.phases, other.phases)):
            for key, row in theirs.items():
                mine = table.setdefault(key, {SENT: 0, RECEIVED: 0})
                for direction, value in row.items():
                    mine[direction] += value
        for direction, value in other.messages.items():
            self.messages[direction] += value
        for direction, value in other.totals.items():
            self.totals[direction] += value
        self.seen |= other.seen

    def total(self, direction: str) -> int:
        return self.totals[direction]

    def report(self, node_to_partition: Mapping[int, int], per_client: bool = True) -> dict[str, Any]:
        """The JSON block of a round: totals, per-client means, per client (partition id) and per phase.

        Without ``per_client`` (more clients than tracking.per-client-limit) the ``clients``
        block is left out; the per-client largest figures stand in for it.
        """
        count = len(self.nodes.keys() | self.seen) if self.seen else len(self.nodes)
        sent, received = self.total(SENT), self.total(RECEIVED)
        block = {
            "sent_bytes": sent,
            "received_bytes": received,
            "total_bytes": sent + received,
            "num_clients": count,
            "per_client_mean_sent_bytes": sent / count if count else 0.0,
            "per_client_mean_received_bytes": received / count if count else 0.0,
            "per_client_max_sent_bytes": max((row[SENT] for row in self.nodes.values()), default=0),
            "per_client_max_received_bytes": max((row[RECEIVED] for row in self.nodes.values()), default=0),
            "messages": dict(self.messages),
            "phases": {k: dict(v) for k, v in sorted(self.phases.items())},
        }
        if per_client and self.per_node:
            clients = {_client_key(node, node_to_partition): dict(row) for node, row in self.nodes.items()}
            block["clients"] = dict(sorted(clients.items(), key=lambda kv: _sort_key(kv[0])))
        return block


def _client_key(node: int, node_to_partition: Mapping[int, int]) -> str:
    """Partition id as text (the key rounds.jsonl uses for clients), ``node-<id>`` when unknown."""
    return str(node_to_partition[node]) if node in node_to_partition else f"node-{node}"


def _sort_key(key: str) -> tuple[int, str]:
    return (0, f"{int(key):012d}") if key.isdigit() else (1, key)


class TrafficMeter:
    """Counts what the server sends and receives; :meth:`take` hands out the span since the last take."""

    def __init__(self) -> None:
        #: keep a row per node (off above tracking.per-client-limit clients)
        self.per_node = True
        self.window = Traffic()

    def count(self, messages: Iterable[Message], direction: str) -> None:
        for msg in messages:
            node = msg.metadata.dst_node_id if direction == SENT else msg.metadata.src_node_id
            self.window.add(int(node), phase_of(msg.metadata.message_type), direction, message_bytes(msg))

    def take(self) -> Traffic:
        window, self.window = self.window, Traffic(per_node=self.per_node)
        return window


class MeteredGrid(GridProxy):
    """The run's grid with every message that passes through it counted by ``meter``."""

    def __init__(self, grid: Grid, meter: TrafficMeter) -> None:
        super().__init__(grid)
        self.meter = meter

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        self.meter.count(messages, SENT)
        replies = list(super().send_and_receive(messages, timeout=timeout))
        self.meter.count(replies, RECEIVED)
        return replies

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        self.meter.count(messages, SENT)
        return super().push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = list(super().pull_messages(message_ids))
        self.meter.count(replies, RECEIVED)
        return replies


def metered(grid: Grid, meter: TrafficMeter) -> Grid:
    """``grid`` counted by ``meter`` (unchanged when it already is)."""
    if isinstance(grid, MeteredGrid) and grid.meter is meter:
        return grid
    return MeteredGrid(grid, meter)


def run_communication(rounds: list[dict[str, Any]], outside: Traffic, node_to_partition: Mapping[int, int]) -> dict:
    """summary.json ``communication``: totals over the rounds, means per round and per client, per client totals.

    ``outside`` is what went over the wire outside the rounds (k-means' set-up
    phases, CFL's final cross-evaluation); it counts in ``all_phases_*`` only.
    """
    blocks = [r["communication"] for r in rounds if r.get("communication")]
    sent = sum(b["sent_bytes"] for b in blocks)
    received = sum(b["received_bytes"] for b in blocks)
    clients: dict[str, dict[str, int]] = {}
    for block in blocks:
        for key, row in block.get("clients", {}).items():
            mine = clients.setdefault(key, {SENT: 0, RECEIVED: 0})
            mine[SENT] += row[SENT]
            mine[RECEIVED] += row[RECEIVED]
    n_rounds = len(blocks)
    per_round = [b["total_bytes"] for b in blocks]
    outside_sent, outside_received = outside.total(SENT), outside.total(RECEIVED)
    return {
        "unit": "bytes (Flower's count_bytes of the records: array payloads + keys, no protobuf/gRPC framing)",
        "rounds": n_rounds,
        "sent_bytes": sent,
        "received_bytes": received,
        "total_bytes": sent + received,
        "mean_sent_bytes_per_round": sent / n_rounds if n_rounds else 0.0,
        "mean_received_bytes_per_round": received / n_rounds if n_rounds else 0.0,
        "mean_bytes_per_round": (sent + received) / n_rounds if n_rounds else 0.0,
        "max_bytes_per_round": max(per_round, default=0),
        "per_client_mean_sent_bytes_per_round": _mean([b["per_client_mean_sent_bytes"] for b in blocks]),
        "per_client_mean_received_bytes_per_round": _mean([b["per_client_mean_received_bytes"] for b in blocks]),
        "outside_rounds": {
            "sent_bytes": outside_sent,
            "received_bytes": outside_received,
            "phases": {k: dict(v) for k, v in sorted(outside.phases.items())},
        },
        "all_phases_sent_bytes": sent + outside_sent,
        "all_phases_received_bytes": received + outside_received,
        # per client only from the rounds small enough to keep them (tracking.per-client-limit)
        "rounds_without_per_client_blocks": sum(1 for b in blocks if "clients" not in b),
        "clients": dict(sorted(clients.items(), key=lambda kv: _sort_key(kv[0]))),
    }


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0
