"""Phase 1 of federated k-means: clients describe their data; the server checks it agrees."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from flwr.app import Message

from fedvq_app.config import ConfigError
from fedvq_app.strategies.kmeans_phase import HANDSHAKE, KMeansPhase, reply_metrics
from fedvq_app.tracking.idsets import NAMED_IDS


class HandshakeError(ConfigError):
    """The clients' data cannot be clustered together (one line naming the clients)."""


@dataclass(frozen=True)
class ClientInfo:
    """What a client reveals in the handshake: sizes only, never rows."""

    node_id: int
    partition_id: int
    num_samples: int
    num_features: int
    num_classes: int

    @property
    def name(self) -> str:
        return f"partition {self.partition_id} (node {self.node_id})"


@dataclass(frozen=True)
class Federation:
    """The clients that passed the handshake, by node id."""

    clients: dict[int, ClientInfo]

    @property
    def nodes(self) -> list[int]:
        return sorted(self.clients)

    @property
    def num_features(self) -> int:
        return next(iter(self.clients.values())).num_features

    @property
    def num_samples(self) -> int:
        return sum(c.num_samples for c in self.clients.values())

    @property
    def num_classes(self) -> int:
        """Label classes across clients; 0 when any client has no labels (no ARI then)."""
        classes = [c.num_classes for c in self.clients.values()]
        return 0 if min(classes) == 0 else max(classes)

    def partition_of(self, node_id: int) -> int:
        return self.clients[node_id].partition_id

    def restricted_to(self, nodes: Iterable[int]) -> Federation:
        """The clients among ``nodes`` (e.g. those whose replies some later phase accepted)."""
        keep = set(nodes)
        return Federation({n: c for n, c in self.clients.items() if n in keep})


def _describe(clients: Iterable[ClientInfo], limit: int = NAMED_IDS) -> str:
    """The first ``limit`` clients by name, then how many more (one line at any federation size)."""
    ordered = sorted(clients, key=lambda c: c.partition_id)
    shown = ", ".join(c.name for c in ordered[:limit])
    return shown + (f" ... and {len(ordered) - limit:,} more" if len(ordered) > limit else "")


def feature_mismatch(clients: list[ClientInfo]) -> str | None:
    """Why the clients' feature counts disagree (naming the odd ones out), or None."""
    groups: dict[int, list[ClientInfo]] = defaultdict(list)
    for client in clients:
        groups[client.num_features].append(client)
    if len(groups) <= 1:
        return None
    majority = max(groups, key=lambda f: (len(groups[f]), -f))
    odd = [c for f, members in groups.items() if f != majority for c in members]
    details = "; ".join(f"{f} features: {_describe(groups[f])}" for f in sorted(groups))
    return (
        f"clients disagree on the number of features ({details}); mismatching clients: {_describe(odd)} "
        f"(the majority has {majority}); every client must hold the same columns"
    )


class Handshake(KMeansPhase):
    """Collects metadata (samples, features, classes, partition id) and checks it agrees."""

    message_type = HANDSHAKE

    def method_problem(self, msg: Message) -> str | None:
        metrics = reply_metrics(msg)
        for key in ("num-features", "partition-id", "num-classes"):
            value = metrics.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                return f"metric '{key}' missing or not a non-negative integer"
        if metrics["num-features"] < 1:
            return "metric 'num-features' is 0"
        return None

    def aggregate(self, replies: Iterable[Message]) -> Federation:
        """The federation, or :class:`HandshakeError` naming the mismatching clients."""
        accepted = self.screen(replies)
        if not accepted:
            reasons = "; ".join(f"node {n}: {r}" for n, r in self.rejections[:3]) or "no replies"
            if len(self.rejections) > 3:
                reasons += f"; ... and {len(self.rejections) - 3:,} more rejected"
            raise HandshakeError(f"no client completed the k-means handshake ({reasons})")
        clients = []
        for msg in accepted:
            m = reply_metrics(msg)
            clients.append(
                ClientInfo(
                    node_id=msg.metadata.src_node_id,
                    partition_id=int(m["partition-id"]),
                    num_samples=int(m["num-examples"]),
                    num_features=int(m["num-features"]),
                    num_classes=int(m["num-classes"]),
                )
            )
        problem = feature_mismatch(clients)
        if problem:
            raise HandshakeError(problem)
        return Federation({c.node_id: c for c in clients})
