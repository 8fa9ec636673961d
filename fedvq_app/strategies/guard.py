"""A mixin that screens replies before any strategy aggregates them.

Placed before a Flower strategy in the bases (``class X(ReplyGuard, FedAvg)``), it
remembers what each node was sent, drops replies that carry an error, miss or
reshape arrays, change dtypes, contain NaN/inf or lack a positive ``num-examples``,
logs why, and keeps the list in :attr:`rejections` for the experiment log. Records
other than ``arrays``/``metrics`` (method statistics) are set aside in
:attr:`extras` by node id, so the parent strategy sees the two records it expects.

Evaluate replies may carry a ``gradient`` record (``metrics.gradient-dissimilarity``):
the guard turns the accepted ones into the federation's gradient dissimilarity Gamma,
added to the aggregated evaluate metrics (rounds.jsonl) and to :meth:`final_report`
(summary.json). Each client names the model it was evaluated at (a digest in the
``gradient-at`` record), so nodes sent different models (clustered FL) are compared
only with the nodes sent the same model, however the strategy built its messages.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from logging import WARNING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import log

from fedvq_app.aggregation.dissimilarity import grouped_dissimilarity
from fedvq_app.aggregation.validation import (
    Schema,
    array_problem,
    array_schema,
    metric_problem,
)
from fedvq_app.protocol import ARRAYS, GRADIENT_AT_RECORD, GRADIENT_RECORD, METRICS, TOP_LEVEL_KEY
from fedvq_app.records import to_numpy
from fedvq_app.strategies.metrics import aggregate_scalar_metrics


class ReplyGuard:
    """Screens train/evaluate replies; subclasses call ``super()`` as usual.

    Implements :class:`~fedvq_app.strategies.contract.RoundStrategy` (with Flower's strategy
    after it in the bases): empty reports and state unless a subclass overrides them.
    """

    weighted_by_key = "num-examples"
    #: names of extra records a method's clients add to their train replies
    extra_record_names: tuple[str, ...] = ()

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("train_metrics_aggr_fn", aggregate_scalar_metrics)
        kwargs.setdefault("evaluate_metrics_aggr_fn", aggregate_scalar_metrics)
        super().__init__(*args, **kwargs)
        self.expected: dict[int, Schema] = {}
        self.rejections: list[tuple[int, str]] = []
        self.extras: dict[int, RecordDict] = {}
        self.accepted_nodes: list[int] = []
        self.last_dissimilarity: dict[str, float] = {}
        self._prescreened: list[Message] | None = None
        #: most examples a client can hold (the whole training pool, when the server knows it)
        self.max_num_examples: int | None = None

    # ---------------------------------------------------------------- sending
    def remember_sent(self, messages: Iterable[Message]) -> list[Message]:
        """Record the array schema each node was sent (its reply must match it)."""
        messages = list(messages)
        self.expected = {
            m.metadata.dst_node_id: array_schema(to_numpy(m.content[ARRAYS]))
            for m in messages
            if ARRAYS in m.content.array_records
        }
        return messages

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid):
        return self.remember_sent(super().configure_train(server_round, arrays, config, grid))

    # ---------------------------------------------------------------- screening
    def _problem(self, msg: Message, train: bool) -> str | None:
        if msg.has_error():
            return f"client error: {msg.error.reason}"
        content = msg.content
        metrics = content.metric_records.get(METRICS)
        if metrics is None:
            return "no 'metrics' record"
        problem = metric_problem(dict(metrics), self.weighted_by_key) or self._size_problem(dict(metrics))
        if problem or not train:
            return problem
        arrays = content.array_records.get(ARRAYS)
        if arrays is None:
            return "no 'arrays' record"
        expected = self.expected.get(msg.metadata.src_node_id)
        if expected is None:
            return "reply from a node that was not sent a train message"
        missing_extras = [n for n in self.extra_record_names if n not in content]
        if missing_extras:
            return f"missing records {missing_extras}"
        return array_problem(expected, to_numpy(arrays))

    def prescreen(self, replies: Iterable[Message]) -> list[Message]:
        """Screen train replies ahead of ``aggregate_train`` (for a wrapper that must see valid replies first).

        The wrapper may edit the returned messages in place (DP clipping) and hand them
        to ``aggregate_train``, which takes them as screened: rejections and extras stay
        those of the original replies.
        """
        accepted = self.screen(replies, train=True)
        self._prescreened = accepted
        return accepted

    def _size_problem(self, metrics: dict) -> str | None:
        """A client cannot train on more examples than the whole federation's training pool."""
        claimed = metrics.get(self.weighted_by_key)
        if self.max_num_examples is not None and claimed > self.max_num_examples:
            return (
                f"metric '{self.weighted_by_key}' is {claimed:g}, more than the {self.max_num_examples} "
                "training samples of the whole dataset"
            )
        return None

    def screen(self, replies: Iterable[Message], train: bool) -> list[Message]:
        """Valid replies, stripped to arrays+metrics; rejections logged and kept."""
        replies = list(replies)
        prescreened, self._prescreened = self._prescreened, None
        if train and prescreened is not None and {id(m) for m in replies} <= {id(m) for m in prescreened}:
            return replies
        self.rejections, self.extras, accepted = [], {}, []
        for msg in replies:
            problem = self._problem(msg, train)
            node = msg.metadata.src_node_id
            if problem is None:
                problem = self.method_problem(msg) if train else None
            if problem is not None:
                log(WARNING, "Rejected reply from node %s: %s", node, problem)
                self.rejections.append((node, problem))
                continue
            accepted.append(msg)
        if train:  # Flower's FedAvg aggregates train replies only when all name the same metrics
            accepted = self._consistent_metric_keys(accepted)
        self.accepted_nodes = [m.metadata.src_node_id for m in accepted]
        if train:
            self.extras = {
                m.metadata.src_node_id: RecordDict({k: v for k, v in m.content.items() if k not in (ARRAYS, METRICS)})
                for m in accepted
            }
        return [self._strip(m, train) for m in accepted]

    def method_problem(self, msg: Message) -> str | None:
        """Method-specific checks of a train reply (e.g. codebook size); None = fine."""
        return None

    def _consistent_metric_keys(self, accepted: list[Message]) -> list[Message]:
        """Train replies: keep those whose metric names match the majority (Flower's aggregate_train requires it).

        Evaluate replies are not held to it: a client may legitimately report a metric
        the others lack (fusedspace's ``test-reconstruction-unseen`` exists only on
        clients missing some class); :meth:`aggregate_evaluate` averages each metric
        over the clients that report it.
        """
        if not accepted:
            return accepted
        keysets = [frozenset(m.content[METRICS].keys()) for m in accepted]
        majority, _ = Counter(keysets).most_common(1)[0]
        kept = []
        for msg, keys in zip(accepted, keysets, strict=True):
            if keys != majority:
                node = msg.metadata.src_node_id
                reason = f"metric names differ from the other replies: {sorted(keys ^ majority)}"
                log(WARNING, "Rejected reply from node %s: %s", node, reason)
                self.rejections.append((node, reason))
            else:
                kept.append(msg)
        return kept

    @staticmethod
    def _strip(msg: Message, train: bool) -> Message:
        records = {METRICS: msg.content[METRICS]}
        if train:
            records[ARRAYS] = msg.content[ARRAYS]
        return Message(content=RecordDict(records), metadata=msg.metadata)

    # ---------------------------------------------------------------- aggregation
    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        accepted = self.screen(replies, train=True)
        if not accepted:
            return None, None
        return super().aggregate_train(server_round, accepted)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Screened evaluate replies, each metric averaged over the clients that report it.

        Flower's ``FedAvg.aggregate_evaluate`` is not called: its only addition,
        ``validate_message_reply_consistency``, refuses replies whose metric names
        differ, which the screening above already replaces (one metrics record with a
        positive ``num-examples``, finite values).
        """
        replies = list(replies)
        accepted = self.screen(replies, train=False)
        if not accepted:
            return None
        metrics = self.evaluate_metrics_aggr_fn([m.content for m in accepted], self.weighted_by_key)
        return self._add_dissimilarity(server_round, replies, metrics)

    # ---------------------------------------------------------------- gradient dissimilarity
    def _accepted_gradients(self, replies: list[Message]) -> tuple[dict, dict, dict]:
        """Finite gradients of the accepted evaluate replies, their data weights and model digests."""
        accepted = set(self.accepted_nodes)
        gradients, weights, models = {}, {}, {}
        for msg in replies:
            node = msg.metadata.src_node_id
            if node not in accepted or GRADIENT_RECORD not in msg.content.array_records:
                continue
            gradient = to_numpy(msg.content[GRADIENT_RECORD])
            if not gradient or not all(np.isfinite(v).all() for v in gradient.values()):
                log(WARNING, "Ignored the gradient of node %s: empty or not finite", node)
                continue
            gradients[node] = gradient
            weights[node] = float(msg.content[METRICS][self.weighted_by_key])
            at = msg.content.config_records.get(GRADIENT_AT_RECORD)
            if at is not None and "model" in at:
                models[node] = str(at["model"])
        return gradients, weights, models

    def _add_dissimilarity(self, server_round: int, replies: list[Message], metrics: MetricRecord | None):
        """Gamma of the accepted gradients, grouped by the model each node was evaluated at."""
        gradients, weights, models = self._accepted_gradients(replies)
        if not gradients:
            return metrics
        result = grouped_dissimilarity(gradients, weights, models)
        values = {
            "gradient-dissimilarity": result.gamma,
            "gradient-variance": result.variance,
            "gradient-groups": len(result.groups),
        }
        values = {k: v for k, v in values.items() if math.isfinite(v)}
        metrics = metrics if metrics is not None else MetricRecord()
        for key, value in values.items():
            metrics[key] = value
        self.last_dissimilarity = {"round": server_round, **values}
        return metrics

    # ---------------------------------------------------------------- the strategy contract's reports and state
    def round_report(self) -> dict:
        """The method's figures of the round just finished: none here (subclasses add theirs)."""
        return {}

    def state_dict(self) -> dict:
        """Nothing to keep across a resume here (subclasses with state override it)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ValueError(f"checkpoint holds strategy state {sorted(state)} that {type(self).__name__} cannot take")

    def final_report(self) -> dict:
        """Gamma of the last evaluated round, at the top level of summary.json (empty when off).

        A subclass with its own report should merge ``super().final_report()`` into it.
        """
        if not self.last_dissimilarity:
            return {}
        last = self.last_dissimilarity
        report = {
            "final": last.get("gradient-dissimilarity"),
            "variance": last.get("gradient-variance"),
            "groups": last.get("gradient-groups"),
            "round": last["round"],
        }
        return {TOP_LEVEL_KEY: {"gradient_dissimilarity": report}}
