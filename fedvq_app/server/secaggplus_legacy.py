"""Bridge: Flower's ``SecAggPlusWorkflow`` stages driven for one exchange of the Message-API loop.

Flower 1.41's server side of SecAgg+ (``flwr.server.workflow.secure_aggregation``)
is written for the legacy strategy API: its four stages read the round and the
instructions from a ``LegacyContext``, ask ``context.strategy.configure_fit`` whom to
sample, and hand the unmasked mean to ``context.strategy.aggregate_fit``. This module
is the one place that speaks that API:

* a :class:`_Collector` legacy strategy "samples" exactly the nodes the project's
  strategy already chose and keeps what ``aggregate_fit`` receives;
* the stages run one by one on Flower's ``WorkflowState``; after ``setup`` the
  legacy ``FitIns`` records are replaced by the project's own message content, so a
  client's handler receives what the project's strategy built;
* Flower's masking, key agreement, Shamir shares, dropout recovery and
  (de)quantization run unchanged; nothing here is cryptography.

``tests/test_secagg_bridges.py`` fails if the pinned Flower changes the stage names,
the ``WorkflowState`` fields or the ``LegacyContext`` records this relies on.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common import FitIns, Parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import Strategy as LegacyStrategy
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import SecAggPlusWorkflow, WorkflowState
from flwr.serverapp import Grid

from fedvq_app.grid_proxy import GridProxy
from fedvq_app.legacy_fitres import MAX_WEIGHT

#: Flower's stage methods, in protocol order
STAGES = ("setup_stage", "share_keys_stage", "collect_masked_vectors_stage", "unmask_stage")


class _Collector(LegacyStrategy):
    """The legacy strategy the workflow drives: samples the given nodes, keeps the unmasked mean."""

    def __init__(self, grid: Grid, nodes: Iterable[int]) -> None:
        self.proxies = [GridClientProxy(node, grid, 0) for node in nodes]
        self.mean: list[np.ndarray] | None = None
        self.num_results = 0

    def initialize_parameters(self, client_manager):
        return None

    def configure_fit(self, server_round, parameters, client_manager):
        return [(proxy, FitIns(Parameters(tensors=[], tensor_type=""), {})) for proxy in self.proxies]

    def aggregate_fit(self, server_round, results, failures):
        self.num_results = len(results)
        if results:  # Flower sets every result's parameters to the same unmasked mean
            self.mean = parameters_to_ndarrays(results[0][1].parameters)
        return None, {}

    def configure_evaluate(self, server_round, parameters, client_manager):
        return []

    def aggregate_evaluate(self, server_round, results, failures):
        return None, {}

    def evaluate(self, server_round, parameters):
        return None


class _Recorder(GridProxy):
    """Keeps every reply of the masked-vector stage (their other records: the clients' layouts)."""

    def __init__(self, grid: Grid) -> None:
        super().__init__(grid)
        self.masked: dict[int, Message] = {}

    def send_and_receive(self, messages, *, timeout=None):
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        for reply in replies:
            if reply.has_error():
                continue
            configs = reply.content.config_records.get(RECORD_KEY_CONFIGS)
            if configs is not None and Key.MASKED_PARAMETERS in configs:
                self.masked[reply.metadata.src_node_id] = reply
        return replies


@dataclass
class StagesOutcome:
    """What one run of the four stages gave."""

    #: sum over the contributors of their vectors (None: the protocol halted)
    total: list[np.ndarray] | None
    #: nodes whose masked vector is in the sum
    contributors: list[int] = field(default_factory=list)
    #: nodes that sent a public key (the key exchange)
    keyed: list[int] = field(default_factory=list)
    #: the stage that halted, if any
    halted_at: str | None = None
    #: each contributor's reply to the masked-vector stage (masked arrays cleared by the mod)
    replies: dict[int, Message] = field(default_factory=dict)
    threshold: int = 0
    num_shares: int = 0


def run_stages(
    grid: Grid,
    contents: dict[int, RecordDict],
    server_round: int,
    params: dict[str, Any],
    timeout: float | None,
) -> StagesOutcome:
    """Run SecAgg+ for the nodes in ``contents`` (node id -> the project's message content).

    ``params``: ``num_shares``, ``reconstruction_threshold``, ``clipping_range``,
    ``quantization_range`` as Flower's ``SecAggPlusWorkflow`` takes them.
    """
    workflow = SecAggPlusWorkflow(max_weight=MAX_WEIGHT, timeout=timeout, **params)
    recorder = _Recorder(grid)
    collector = _Collector(recorder, contents)
    server_context = Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={})
    context = LegacyContext(server_context, strategy=collector)
    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: server_round})
    context.state.array_records[MAIN_PARAMS_RECORD] = ArrayRecord()
    state = WorkflowState()
    outcome = StagesOutcome(total=None)
    for stage in STAGES:
        proceed = getattr(workflow, stage)(recorder, context, state)
        if stage == "setup_stage":
            outcome.keyed = sorted(state.active_node_ids)
            outcome.threshold, outcome.num_shares = state.threshold, state.num_shares
            # the clients' handlers get the project's content, not the legacy FitIns
            state.nid_to_fitins = {node: contents[node] for node in state.nid_to_fitins}
        if not proceed:
            outcome.halted_at = stage.removesuffix("_stage").replace("_", " ")
            outcome.contributors = sorted(recorder.masked)  # who sent a masked vector before the halt
            return outcome
    if collector.mean is None:
        outcome.halted_at = "unmask"
        return outcome
    outcome.contributors = sorted(recorder.masked)
    outcome.replies = recorder.masked
    outcome.total = [np.asarray(a, dtype=np.float64) * collector.num_results for a in collector.mean]
    return outcome
