"""Clustered Federated Learning (Sattler et al., 2020) as a Flower strategy.

The server keeps clusters of clients and one model per cluster. Every node is sent
its own cluster's model (train and evaluate); its update is ``reply - sent``. Per
cluster the server computes ||mean dW|| and max ||dW||; when the cluster has
converged jointly (mean < eps1) while some member still pulls away (max > eps2),
it is cut in two by complete-linkage clustering of the members' cosine
similarities, and each half continues from the pre-split model plus its own mean
update. The pre-split model is cached for the final cross-evaluation.

Identity: membership is keyed by the stable ``partition-id`` every reply carries
(node ids map to partition ids through the replies), never by list position.

* A partition joins the cluster whose model it trained from in its first accepted
  reply. A node whose partition is not known yet (never replied) is sent the
  model of the largest cluster, ties going to the lowest cluster id.
* Members that miss a round keep their membership. If their cluster splits while
  they are absent, they follow the larger half (ties: the half with the lowest id).
* Splits never reuse ids: the two halves get fresh cluster ids, the parent retires.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import log

from fedvq_app.aggregation.clustering import (
    SplitRule,
    apply_update,
    bipartition,
    cluster_purity,
    cross_similarity,
    flatten,
    mean_update,
    reference_norm,
    similarity_matrix,
    update_norms,
    weight_update,
)
from fedvq_app.options import WEIGHTINGS
from fedvq_app.records import to_numpy, to_record
from fedvq_app.strategies.fedavg import FedAvgStrategy

Arrays = dict[str, np.ndarray]
ROOT = 0


@dataclass
class ClientUpdate:
    """One accepted train reply, as the cluster step needs it."""

    partition: int
    delta: Arrays
    num_examples: int


def partition_of(metrics) -> int | None:
    """The reply's partition id, or None when it is missing or not a non-negative integer."""
    value = metrics.get("partition-id")
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0 or value != int(value):
        return None
    return int(value)


def _rounded(matrix: np.ndarray) -> list[list[float]]:
    return np.round(matrix, 4).tolist()


class CFLStrategy(FedAvgStrategy):
    """Per-cluster FedAvg of updates with CFL's norm-triggered bipartitions."""

    def __init__(
        self,
        *args,
        rule: SplitRule,
        trainable: Sequence[str] | None = None,
        weighting: str = "uniform",
        rotation_active: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}")
        self.rule = rule
        self.trainable = list(trainable) if trainable is not None else None
        self.weighting = weighting
        self.rotation_active = rotation_active
        self.models: dict[int, Arrays] = {}
        self.membership: dict[int, int] = {}
        self.next_cluster_id = ROOT
        self.node_partition: dict[int, int] = {}
        self.groups: dict[int, int] = {}
        self.history: list[dict[str, Any]] = []
        self.pre_split_models: dict[int, Arrays] = {}
        self.sent: dict[int, int] = {}
        self._round: dict[str, Any] = {}
        #: the relative split rule's unit: the largest mean client update norm any cluster has shown so far
        self.reference: float | None = None

    # ---------------------------------------------------------------- clusters
    def members(self, cluster: int) -> list[int]:
        """Partition ids of one cluster, sorted."""
        return sorted(p for p, c in self.membership.items() if c == cluster)

    def clusters(self) -> dict[int, list[int]]:
        """Cluster id -> sorted partition ids, for every live cluster."""
        return {cid: self.members(cid) for cid in sorted(self.models)}

    def default_cluster(self) -> int:
        """Where an unknown node goes: the largest cluster, ties to the lowest id."""
        return max(sorted(self.models), key=lambda cid: len(self.members(cid)))

    def cluster_of_node(self, node_id: int) -> int:
        partition = self.node_partition.get(node_id)
        if partition is not None and partition in self.membership:
            return self.membership[partition]
        return self.default_cluster()

    def _new_cluster(self, model: Arrays) -> int:
        cid = self.next_cluster_id
        self.next_cluster_id += 1
        self.models[cid] = model
        return cid

    # ---------------------------------------------------------------- sending
    def _personalise(self, messages: Iterable[Message]) -> list[Message]:
        """Replace the one shared payload by each node's own cluster model."""
        records: dict[int, ArrayRecord] = {}
        out = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            cid = self.cluster_of_node(node)
            if cid not in records:
                records[cid] = to_record(self.models[cid])
            content = RecordDict({self.arrayrecord_key: records[cid], self.configrecord_key: msg.content["config"]})
            out.append(Message(content=content, dst_node_id=node, message_type=msg.metadata.message_type))
        return out

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid):
        if not self.models:
            self._new_cluster(to_numpy(arrays))
        messages = self._personalise(super().configure_train(server_round, arrays, config, grid))
        self.sent = {m.metadata.dst_node_id: self.cluster_of_node(m.metadata.dst_node_id) for m in messages}
        return self.remember_sent(messages)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid):
        if not self.models:
            self._new_cluster(to_numpy(arrays))
        return self._personalise(super().configure_evaluate(server_round, arrays, config, grid))

    # ---------------------------------------------------------------- screening
    def _problem(self, msg: Message, train: bool) -> str | None:
        """The guard's checks, then: train *and* evaluate replies must name their partition.

        Membership, routing and the per-client tables are keyed by partition id, so an
        evaluate reply without a usable one is rejected too (the guard checks method
        specifics on train replies only).
        """
        problem = super()._problem(msg, train)
        if problem is None and partition_of(msg.content["metrics"]) is None:
            return "no valid 'partition-id' in the metrics (cluster membership is keyed by it)"
        return problem

    def _learn_partitions(self, accepted: Iterable[Message]) -> None:
        """node -> partition (and partition -> shift domain) from replies the guard accepted."""
        for msg in accepted:
            metrics = msg.content["metrics"]
            partition = partition_of(metrics)
            if partition is None:
                continue
            self.node_partition[msg.metadata.src_node_id] = partition
            domain = metrics.get("domain", metrics.get("rotated"))
            valid = isinstance(domain, int | float) and not isinstance(domain, bool)
            if valid and domain >= 0 and domain == int(domain):
                self.groups[partition] = int(domain)

    # ---------------------------------------------------------------- aggregation
    def _collect(self, accepted: list[Message]) -> dict[int, list[ClientUpdate]]:
        """Updates grouped by the cluster whose model each node trained from."""
        self._learn_partitions(accepted)
        by_cluster: dict[int, list[ClientUpdate]] = {}
        seen: set[int] = set()
        for msg in accepted:
            node = msg.metadata.src_node_id
            metrics = msg.content["metrics"]
            partition, sent_to = int(metrics["partition-id"]), self.sent[node]
            if partition in seen:
                log(WARNING, "[cfl] partition %s replied twice in one round; node %s ignored", partition, node)
                continue
            seen.add(partition)
            cluster = self.membership.setdefault(partition, sent_to)
            if cluster != sent_to:  # a partition that came back under a new node id before its node was known
                log(
                    WARNING,
                    "[cfl] partition %s trained cluster %s's model but belongs to %s",
                    partition,
                    sent_to,
                    cluster,
                )
                continue
            delta = weight_update(to_numpy(msg.content["arrays"]), self.models[cluster])
            by_cluster.setdefault(cluster, []).append(ClientUpdate(partition, delta, int(metrics["num-examples"])))
        return {cid: sorted(updates, key=lambda u: u.partition) for cid, updates in sorted(by_cluster.items())}

    def _mean(self, updates: Sequence[ClientUpdate]) -> Arrays:
        weights = [u.num_examples for u in updates] if self.weighting == "num-examples" else None
        return mean_update([u.delta for u in updates], weights)

    def _vectors(self, updates: Sequence[ClientUpdate]) -> np.ndarray:
        names = self.trainable if self.trainable is not None else list(updates[0].delta)
        return np.stack([flatten(u.delta, names) for u in updates])

    def _step_cluster(self, server_round: int, cluster: int, updates: list[ClientUpdate]) -> dict[str, Any]:
        """Norms, split decision and aggregation of one cluster; returns its round log."""
        ids = [u.partition for u in updates]
        vectors = self._vectors(updates)
        mean_norm, max_norm = update_norms(vectors)
        self.reference = max(self.reference or 0.0, reference_norm(vectors))
        similarity = similarity_matrix(vectors)
        split, reason = self.rule.decide(server_round, mean_norm, max_norm, len(ids), self.reference)
        halves: tuple[list[int], list[int]] | None = None
        cross: float | None = None
        if split:
            halves = bipartition(similarity, ids)
            cross = cross_similarity(similarity, ids, halves)
            if not self.rule.children_ok(halves):
                split, reason = False, f"unbalanced split {[len(h) for h in halves]} (min {self.rule.min_cluster_size})"
            elif not self.rule.halves_apart(cross):
                bound = self.rule.max_cross_similarity
                split, reason = False, f"halves do not pull apart (mean cross similarity {cross:.3f} >= {bound:g})"
        log(
            INFO,
            "[cfl] round %s, cluster %s (%d of %d members): ||mean dW|| %.3f, max ||dW|| %.3f -> %s",
            server_round,
            cluster,
            len(ids),
            len(self.members(cluster)),
            mean_norm,
            max_norm,
            "split" if split else f"no split: {reason}",
        )
        stats = {
            "members": self.members(cluster),
            "participants": ids,
            "mean_norm": mean_norm,
            "max_norm": max_norm,
            "client_norms": dict(zip(ids, np.linalg.norm(vectors, axis=1).tolist(), strict=True)),
            "split": split,
            "reason": reason,
            "reference_norm": self.reference,
            "cross_similarity": cross,
            "similarity": _rounded(similarity),
        }
        if split and halves is not None:
            stats["children"] = self._split(server_round, cluster, halves, updates, stats)
        else:
            self.models[cluster] = apply_update(self.models[cluster], self._mean(updates))
        return stats

    def _split(self, server_round: int, parent: int, halves: tuple[list[int], list[int]], updates, stats) -> list[int]:
        """Retire ``parent``; each half starts from its model plus the half's mean update."""
        model = self.models.pop(parent)
        members = self.members(parent)
        self.pre_split_models[parent] = model
        larger = 0 if len(halves[0]) >= len(halves[1]) else 1
        absent = [p for p in members if p not in stats["participants"]]
        groups = [list(halves[0]), list(halves[1])]
        groups[larger] = sorted(groups[larger] + absent)
        children = []
        for group, half in zip(groups, halves, strict=True):
            child = self._new_cluster(apply_update(model, self._mean([u for u in updates if u.partition in half])))
            for partition in group:
                self.membership[partition] = child
            children.append(child)
        self.history.append(
            {
                "round": server_round,
                "parent": parent,
                "children": children,
                "members": groups,
                "absent": absent,
                "mean_norm": stats["mean_norm"],
                "max_norm": stats["max_norm"],
                "similarity_ids": stats["participants"],
                "similarity": stats["similarity"],
            }
        )
        log(
            INFO,
            "[cfl] round %s: cluster %s split into %s %s and %s %s",
            server_round,
            parent,
            children[0],
            groups[0],
            children[1],
            groups[1],
        )
        return children

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        accepted = self.screen(replies, train=True)
        self._round = {"round": server_round, "cluster_stats": {}}
        if not accepted:
            self._round["clusters"] = self.clusters()
            return None, None
        metrics = self.train_metrics_aggr_fn([m.content for m in accepted], self.weighted_by_key)
        for cluster, updates in self._collect(accepted).items():
            self._round["cluster_stats"][cluster] = self._step_cluster(server_round, cluster, updates)
        self._round["clusters"] = self.clusters()
        return to_record(self.models[self.default_cluster()]), metrics

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        replies = list(replies)
        metrics = super().aggregate_evaluate(server_round, replies)
        accepted = set(self.accepted_nodes)
        self._learn_partitions(m for m in replies if m.metadata.src_node_id in accepted)
        return metrics

    # ---------------------------------------------------------------- reports
    def round_report(self) -> dict[str, Any]:
        """rounds.jsonl 'strategy': clusters, per-cluster norms, split decisions, similarities."""
        stats = self._round.get("cluster_stats", {})
        return {
            "clusters": self._round.get("clusters", self.clusters()),
            "num_clusters": len(self.models),
            "split": any(s["split"] for s in stats.values()),
            "cluster_stats": stats,
            **self._thresholds(),
        }

    def _thresholds(self) -> dict[str, Any]:
        """eps1 / eps2 as norms (None while a relative rule has no reference yet), the options as set,
        the scale and the reference norm."""
        known = self.rule.scale == "absolute" or self.reference is not None
        eps1, eps2 = self.rule.thresholds(self.reference) if known else (None, None)
        return {
            "eps1": eps1,
            "eps2": eps2,
            "threshold_scale": self.rule.scale,
            "eps1_option": self.rule.eps1,
            "eps2_option": self.rule.eps2,
            "reference_norm": self.reference,
            "max_cross_similarity": self.rule.max_cross_similarity,
        }

    def purity(self) -> float | None:
        return cluster_purity(list(self.clusters().values()), self.groups)

    def final_report(self) -> dict[str, Any]:
        """summary.json 'cfl': clusters as partition ids, split rounds, purity, split log."""
        report: dict[str, Any] = {
            "clusters": list(self.clusters().values()),
            "cluster_ids": sorted(self.models),
            "split_rounds": [h["round"] for h in self.history],
            "splits": self.history,
            **self._thresholds(),
        }
        if self.rotation_active:
            report["cluster_purity"] = self.purity()
            report["rotation_groups"] = {p: self.groups[p] for p in sorted(self.groups)}
        return report

    def evaluation_models(self) -> list[tuple[str, list[int], Arrays]]:
        """(label, members, model) of every pre-split model, then of every live cluster."""
        models = []
        for event in self.history:
            parent = event["parent"]
            label = "FL model (before split)" if parent == ROOT else f"cluster {parent} (before split)"
            members = sorted(p for group in event["members"] for p in group)
            models.append((label, members, self.pre_split_models[parent]))
        models += [(f"cluster {cid}", members, self.models[cid]) for cid, members in self.clusters().items()]
        return models

    # ---------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: cluster models, cached pre-split models, membership, history."""
        state: dict[str, Any] = {}
        for prefix, models in (("model", self.models), ("pre-split", self.pre_split_models)):
            for cid, arrays in models.items():
                state.update({f"{prefix}/{cid}/{name}": value for name, value in arrays.items()})
        state["meta"] = {
            "membership": sorted(self.membership.items()),
            "node_partition": sorted(self.node_partition.items()),
            "groups": sorted(self.groups.items()),
            "next_cluster_id": self.next_cluster_id,
            "history": self.history,
            "reference": self.reference,
        }
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        models: dict[str, dict[int, Arrays]] = {"model": {}, "pre-split": {}}
        for key, value in state.items():
            if key == "meta":
                continue
            prefix, cid, name = key.split("/", 2)
            models[prefix].setdefault(int(cid), {})[name] = np.asarray(value)
        meta = state["meta"]
        self.models, self.pre_split_models = models["model"], models["pre-split"]
        self.membership = {int(p): int(c) for p, c in meta["membership"]}
        self.node_partition = {int(n): int(p) for n, p in meta["node_partition"]}
        self.groups = {int(p): int(g) for p, g in meta["groups"]}
        self.next_cluster_id = int(meta["next_cluster_id"])
        self.history = list(meta["history"])
        reference = meta.get("reference")
        self.reference = None if reference is None else float(reference)
