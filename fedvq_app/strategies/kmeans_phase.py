"""What every phase of federated k-means shares: message types, records, reply screening.

The k-means workflow is a sequence of message exchanges, each with its own Flower
message type (``query.kmeans_handshake`` ... ``evaluate.kmeans_evaluation``) and its
own small Strategy-like class: ``instructions`` builds the messages, ``screen``
rejects bad replies with a logged reason (client errors, missing or reshaped
arrays, NaN, a non-positive ``num-examples``, method checks), and ``aggregate``
turns the accepted replies into the phase's result. The constants below are the
protocol the ClientApp routes on (see ``fedvq_app/clients/kmeans.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from logging import WARNING
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common.logger import log

from fedvq_app import protocol
from fedvq_app.aggregation.kmeans import FeatureTransform
from fedvq_app.aggregation.validation import Schema, array_problem, metric_problem
from fedvq_app.kmeans_records import transform_record
from fedvq_app.records import to_numpy, to_record

# the message types live in fedvq_app.protocol, where the ClientApp reads them without importing k-means
HANDSHAKE = protocol.KMEANS_HANDSHAKE
NORMALIZATION = protocol.KMEANS_NORMALIZATION
PCA = protocol.KMEANS_PCA
INIT = protocol.KMEANS_INIT
STEP = protocol.KMEANS_STEP
EVALUATION = protocol.KMEANS_EVALUATION

ARRAYS, METRICS, CONFIG = protocol.ARRAYS, protocol.METRICS, protocol.CONFIG
TRANSFORM, CENTROIDS = protocol.KMEANS_TRANSFORM, protocol.KMEANS_CENTROIDS
CLIENT_LOGS_KEY = protocol.KMEANS_CLIENT_LOGS


class KMeansPhase:
    """Base of one exchange: build instructions, screen replies, aggregate."""

    message_type: str = ""
    #: reply metric that must be a positive number (every phase replies with it)
    weighted_by_key = "num-examples"

    def __init__(self) -> None:
        self.rejections: list[tuple[int, str]] = []
        self.accepted_nodes: list[int] = []

    # ---------------------------------------------------------------- sending
    def instructions(
        self,
        nodes: Iterable[int],
        config: Mapping[str, Any] | None = None,
        transform: FeatureTransform | None = None,
        arrays: Mapping[str, np.ndarray] | None = None,
        group: str = "",
    ) -> list[Message]:
        """The same content for every node: config, optional transform and arrays."""
        records: dict[str, Any] = {}
        config = dict(config or {})
        if transform is not None:
            records[TRANSFORM], space = transform_record(transform)
            config.update(space)
        records[CONFIG] = ConfigRecord(config)
        if arrays is not None:
            records[ARRAYS] = to_record(arrays)
        content = RecordDict(records)  # one payload for every node, as Flower's own strategies send it
        return [
            Message(
                content=content,
                dst_node_id=node,
                message_type=self.message_type,
                group_id=group or self.message_type,
            )
            for node in nodes
        ]

    # ---------------------------------------------------------------- screening
    def expected_arrays(self) -> Schema | None:
        """Name -> (shape, dtype) of the reply's ``arrays`` record; None = no arrays expected."""
        return None

    def method_problem(self, msg: Message) -> str | None:
        """Phase-specific checks of an otherwise well-formed reply; None = fine."""
        return None

    def _problem(self, msg: Message) -> str | None:
        if msg.has_error():
            return f"client error: {msg.error.reason}"
        content = msg.content
        metrics = content.metric_records.get(METRICS)
        if metrics is None:
            return "no 'metrics' record"
        problem = metric_problem(dict(metrics), self.weighted_by_key)
        if problem:
            return problem
        expected = self.expected_arrays()
        if expected is not None:
            if ARRAYS not in content.array_records:
                return "no 'arrays' record"
            problem = array_problem(expected, to_numpy(content[ARRAYS]))
            if problem:
                return problem
        return self.method_problem(msg)

    def screen(self, replies: Iterable[Message]) -> list[Message]:
        """The usable replies; the others are logged and kept in :attr:`rejections`."""
        self.rejections, accepted = [], []
        for msg in replies:
            problem = self._problem(msg)
            if problem is not None:
                node = msg.metadata.src_node_id
                log(WARNING, "[kmeans] %s: rejected reply from node %s: %s", self.message_type, node, problem)
                self.rejections.append((node, problem))
                continue
            accepted.append(msg)
        self.accepted_nodes = [m.metadata.src_node_id for m in accepted]
        return accepted


def reply_arrays(msg: Message) -> dict[str, np.ndarray]:
    return to_numpy(msg.content[ARRAYS])


def reply_metrics(msg: Message) -> dict[str, Any]:
    return dict(msg.content[METRICS])


def small_count_problem(counts: np.ndarray, threshold: int) -> str | None:
    """Server-side double check of the client's privacy guard on a reply's counts."""
    counts = np.asarray(counts)
    if (counts < 0).any():
        return "negative counts"
    small = counts[(counts > 0) & (counts < threshold)]
    if small.size:
        return f"local means built from {small.tolist()} rows, below kmeans.privacy-threshold {threshold}"
    return None
