"""The two adaptations to Flower 1.41's SecAgg+ (fail here if the pinned Flower changes underneath).

* fedvq_app/legacy_fitres.py: the client mod reads the vector from legacy ``fitres.*`` records;
* fedvq_app/server/secaggplus_legacy.py: the server stages driven through a ``LegacyContext``.
"""

from __future__ import annotations

import importlib
import inspect

import numpy as np
from flwr.app import ConfigRecord, RecordDict
from flwr.common import parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import SecAggPlusWorkflow, WorkflowState

from fedvq_app import protocol
from fedvq_app.legacy_fitres import MAX_WEIGHT, UNIT_WEIGHT, vector_as_fitres
from fedvq_app.server.secaggplus_legacy import STAGES, run_stages
from tests.secagg_toy import TOY_SECAGG, toy_grid, toy_instructions, toy_vectors

mod_module = importlib.import_module("flwr.client.mod.secure_aggregation.secaggplus_mod")


def test_the_mod_reads_the_vector_back_from_the_legacy_records():
    vector = [np.arange(6.0).reshape(2, 3), np.array([0.5])]
    fitres = compat.recorddict_to_fitres(vector_as_fitres(vector), keep_input=True)
    assert fitres.num_examples == UNIT_WEIGHT and UNIT_WEIGHT / MAX_WEIGHT == 1.0  # each ratio exactly 1
    got = parameters_to_ndarrays(fitres.parameters)
    assert [a.shape for a in got] == [(2, 3), (1,)]
    np.testing.assert_array_equal(got[0], vector[0])
    # the mod still takes its input this way, weighs it by num_examples / max_weight and clears the arrays
    source = inspect.getsource(mod_module.secaggplus_mod)
    assert "recorddict_to_fitres" in source and "arr_record.clear()" in source
    assert "num_examples / state.max_weight" in inspect.getsource(mod_module._collect_masked_vectors)


def test_the_workflow_still_has_the_stages_and_state_the_bridge_drives():
    for stage in STAGES:
        params = list(inspect.signature(getattr(SecAggPlusWorkflow, stage)).parameters)
        assert params == ["self", "grid", "context", "state"], stage
    state = WorkflowState()
    for name in ("nid_to_fitins", "active_node_ids", "threshold", "num_shares", "sampled_node_ids"):
        assert hasattr(state, name), name
    assert "max_weight" in inspect.signature(SecAggPlusWorkflow).parameters


def test_the_stages_return_the_sum_of_the_clients_vectors():
    vectors = toy_vectors(4)
    grid = toy_grid(vectors)
    contents = {
        node: RecordDict(
            {"config": ConfigRecord({"server-round": 1}), protocol.SECAGG_RECORD: toy_instructions(clip=4.0)}
        )
        for node in vectors
    }
    params = {
        "num_shares": 1.0,
        "reconstruction_threshold": 0.6,
        "clipping_range": 4.0,
        "quantization_range": TOY_SECAGG.quantization_range,
    }
    outcome = run_stages(grid, contents, 1, params, timeout=None)
    assert outcome.halted_at is None and outcome.contributors == [1, 2, 3, 4] and outcome.keyed == [1, 2, 3, 4]
    exact = sum(vectors.values())
    bound = 4 * 2 * 4.0 / TOY_SECAGG.quantization_range
    assert np.abs(outcome.total[0] - exact).max() <= bound
    # the handler saw the project's own content (the bridge replaced Flower's legacy FitIns)
    assert len(grid.seen) == 4 and all(m.content.config_records["config"]["server-round"] == 1 for m in grid.seen)
