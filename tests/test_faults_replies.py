"""Malformed replies against every strategy: rejected with a reason, server state untouched.

(Also: every strategy's server state survives the checkpoint file, which resume relies on.)

For every registered neural method the method's real ClientApp produces the valid
train replies of one round (its extra records included); one reply is then broken
in one way, and the strategy must (a) reject that node with a logged reason and (b)
end exactly where it ends without that reply: the same aggregate and the same
``state_dict()``. Methods added to the registry are picked up automatically.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from functools import cache

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict

from fedvq_app.client_app import app as client_app
from fedvq_app.data.datasets import dataset_info
from fedvq_app.local_grid import LocalGrid, claim_server_identity, full_run_config, run_local
from fedvq_app.models.state import shared_arrays
from fedvq_app.records import to_numpy
from fedvq_app.registry import get_method, load_settings, method_names
from fedvq_app.server.checkpoint import (
    Checkpoint,
    capture_rng,
    load_checkpoint,
    load_strategy_state,
    save_checkpoint,
    strategy_state,
)
from fedvq_app.server.workflow import train_config
from fedvq_app.server_app import app as server_app

SMALL = {"train.local-epochs": 1, "partition.kind": "iid"}
#: methods with a neural model run through a Flower Strategy (k-means' phases have their own protocol tests)
NEURAL_METHODS = [m for m in method_names() if get_method(m).build_model is not None]
#: wall-clock measurements inside a strategy's state differ from call to call
TIMING_KEY = re.compile(r"(_s|_seconds|time)$")

Corruption = Callable[[Message], Message]


@cache
def _one_round(method: str):
    """(strategy after configure_train of round 1, the two nodes' real train replies)."""
    claim_server_identity()
    config = full_run_config(method=method, **SMALL)
    settings = load_settings(config)
    spec = get_method(method)
    info = dataset_info(settings.dataset, settings.seed)
    torch.manual_seed(settings.seed)
    arrays = shared_arrays(spec.build_model(settings, info), spec.is_shared)
    strategy = spec.build_strategy(settings, info)
    grid = LocalGrid(client_app, 2, config)
    messages = list(strategy.configure_train(1, arrays, ConfigRecord(train_config(settings)), grid))
    replies = list(grid.send_and_receive(messages))
    errors = [r.error.reason for r in replies if r.has_error()]
    assert len(replies) == 2 and not errors, errors
    return strategy, replies


# ---------------------------------------------------------------------------- building bad replies
def _with(msg: Message, **records) -> Message:
    """``msg`` with records replaced (None removes one)."""
    content = {k: v for k, v in msg.content.items() if k not in records}
    content.update({k: v for k, v in records.items() if v is not None})
    return Message(content=RecordDict(content), metadata=msg.metadata)


def _edit(record: ArrayRecord, name: str, edit) -> ArrayRecord:
    """Copy of ``record`` with array ``name`` replaced by ``edit(array)``."""
    return ArrayRecord(
        {k: Array(np.ascontiguousarray(edit(v.numpy().copy()) if k == name else v.numpy())) for k, v in record.items()}
    )


def _first_float(record: ArrayRecord) -> str:
    return next(k for k, v in record.items() if v.numpy().dtype.kind == "f" and v.numpy().size)


def _set_first(value: float):
    def edit(v):
        v.flat[0] = value
        return v

    return edit


def _one_more_row(v):
    """A first axis one longer: a codebook with one code too many, a layer with one unit too many."""
    return np.concatenate([v, v[:1]]) if v.ndim else np.stack([v, v])


def _arrays(msg: Message, edit, name: str | None = None) -> Message:
    record = msg.content["arrays"]
    return _with(msg, arrays=_edit(record, name or _first_float(record), edit))


def _metrics(msg: Message, **changes) -> Message:
    metrics = {k: v for k, v in dict(msg.content["metrics"]).items() if changes.get(k, 0) is not None}
    metrics.update({k: v for k, v in changes.items() if v is not None})
    return _with(msg, metrics=MetricRecord(metrics))


CORE: dict[str, dict[str, Corruption]] = {
    "records": {
        "client error": lambda m: Message(metadata=m.metadata, error=Error(code=0, reason="ValueError: boom")),
        "no arrays record": lambda m: _with(m, arrays=None),
        "no metrics record": lambda m: _with(m, metrics=None),
        "missing array": lambda m: _with(m, arrays=ArrayRecord(dict(list(m.content["arrays"].items())[1:]))),
        "unexpected array": lambda m: _with(
            m, arrays=ArrayRecord({**dict(m.content["arrays"].items()), "intruder": Array(np.zeros(2, np.float32))})
        ),
    },
    "values": {
        "NaN array": lambda m: _arrays(m, _set_first(np.nan)),
        "inf array": lambda m: _arrays(m, _set_first(np.inf)),
        "float64 array": lambda m: _arrays(m, lambda v: v.astype(np.float64)),
        "flattened array": lambda m: _arrays(m, lambda v: v.reshape(-1)[:-1]),
    },
    "metrics": {
        "no num-examples": lambda m: _metrics(m, **{"num-examples": None}),
        "zero num-examples": lambda m: _metrics(m, **{"num-examples": 0}),
        "negative num-examples": lambda m: _metrics(m, **{"num-examples": -5}),
        "NaN metric": lambda m: _metrics(m, **{"train-loss": float("nan")}),
    },
}


def _every_array_wrong_size(strategy, victim: Message) -> dict[str, Corruption]:
    """One case per shared array (the codebook among them): its first axis one too long."""
    return {
        f"wrong size of '{name}'": (lambda m, n=name: _arrays(m, _one_more_row, n))
        for name in victim.content["arrays"].keys()
    }


def _record_edit(record_name: str, array_name: str, edit) -> Corruption:
    return lambda m: _with(m, **{record_name: _edit(m.content[record_name], array_name, edit)})


def _extra_records(strategy, victim: Message) -> dict[str, Corruption]:
    """The method's own records: missing, NaN/inf inside, wrong size."""
    cases: dict[str, Corruption] = {}
    for record_name in getattr(strategy, "extra_record_names", ()):
        cases[f"no '{record_name}'"] = lambda m, r=record_name: _with(m, **{r: None})
        record = victim.content.get(record_name)
        if not isinstance(record, ArrayRecord):
            continue
        for array_name, arr in record.items():
            where = f"'{record_name}/{array_name}'"
            if arr.numpy().dtype.kind == "f":
                cases[f"NaN in {where}"] = _record_edit(record_name, array_name, _set_first(np.nan))
                cases[f"inf in {where}"] = _record_edit(record_name, array_name, _set_first(-np.inf))
            cases[f"wrong size of {where}"] = _record_edit(record_name, array_name, _one_more_row)
    return cases


GROUPS = {
    **{name: (lambda s, v, c=cases: c) for name, cases in CORE.items()},
    "every array": _every_array_wrong_size,
    "extras": _extra_records,
}


# ---------------------------------------------------------------------------- comparing server state
def _state(strategy) -> dict:
    hook = getattr(strategy, "state_dict", None)
    return dict(hook()) if callable(hook) else {}


def _assert_same(a, b, where: str) -> None:
    if isinstance(a, ArrayRecord):
        a, b = {k: v.numpy() for k, v in a.items()}, {k: v.numpy() for k, v in b.items()}
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), where
        for key in a:
            if not TIMING_KEY.search(str(key)):
                _assert_same(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b, equal_nan=True), where
    else:
        assert a == b or (a != a and b != b), f"{where}: {a!r} != {b!r}"


@pytest.mark.parametrize("group", list(GROUPS))
@pytest.mark.parametrize("method", NEURAL_METHODS)
def test_a_malformed_reply_is_rejected_and_leaves_the_server_state_unchanged(method, group):
    strategy, (good, victim) = _one_round(method)
    cases = GROUPS[group](strategy, victim)
    if not cases:
        pytest.skip(f"{method} sends no extra records")
    clean = copy.deepcopy(strategy)
    clean_result = clean.aggregate_train(1, [good])
    node = victim.metadata.src_node_id
    for case, corrupt in cases.items():
        tried = copy.deepcopy(strategy)
        result = tried.aggregate_train(1, [good, corrupt(victim)])
        reasons = dict(tried.rejections)
        assert reasons.get(node), f"{method}: {case} was not rejected"
        assert tried.accepted_nodes == clean.accepted_nodes == [good.metadata.src_node_id], f"{method}: {case}"
        _assert_same(result[0], clean_result[0], f"{method}: {case} changed the aggregate")
        _assert_same(_state(tried), _state(clean), f"{method}: {case} changed the server state")


@pytest.mark.parametrize("method", NEURAL_METHODS)
def test_the_untouched_replies_of_every_method_are_accepted(method):
    """The baseline of the cases above: valid replies all enter aggregation."""
    strategy, replies = _one_round(method)
    strategy = copy.deepcopy(strategy)
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None and strategy.rejections == []
    assert sorted(strategy.accepted_nodes) == sorted(r.metadata.src_node_id for r in replies)


def test_a_nan_evaluate_metric_is_rejected(tmp_path):
    def poison(node, msg):
        if node == 2 and "arrays" not in msg.content.array_records and "metrics" in msg.content.metric_records:
            return _metrics(msg, **{"test-accuracy": float("nan")})
        return msg

    config = full_run_config(**{**SMALL, "num-server-rounds": 1, "log-dir": str(tmp_path), "experiment-name": "e"})
    run_local(server_app, client_app, 3, config, tamper=poison)
    (record,) = [json.loads(x) for x in (tmp_path / "e" / "rounds.jsonl").read_text().splitlines()]
    assert [r["node"] for r in record["evaluate_rejected"]] == [2]
    assert "NaN" in record["evaluate_rejected"][0]["reason"]
    assert sorted(record["evaluate"]["clients"]) == ["0", "2"]  # the rejected client's figures are not kept
    summary = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert summary["final"]["partition_ids"] == [0, 2] and None not in summary["final"]["per_client_accuracy"]
    assert record["evaluate"]["aggregated"]["test-accuracy"] > 0.1  # from the two valid replies


@pytest.mark.parametrize("method", NEURAL_METHODS)
def test_the_server_state_survives_the_checkpoint_file(tmp_path, method):
    """Resume needs it: state_dict -> checkpoint.npz -> a fresh strategy's load_state_dict is lossless."""
    strategy, replies = _one_round(method)
    strategy = copy.deepcopy(strategy)
    arrays, _ = strategy.aggregate_train(1, replies)
    state = strategy_state(strategy)
    save_checkpoint(tmp_path, Checkpoint(1, to_numpy(arrays), state, capture_rng()))

    settings = load_settings(full_run_config(method=method, **SMALL))
    fresh = get_method(method).build_strategy(settings, dataset_info(settings.dataset, settings.seed))
    load_strategy_state(fresh, load_checkpoint(tmp_path).strategy_state)
    _assert_same(strategy_state(fresh), state, f"{method}: server state after the checkpoint round trip")
