"""bench/deployment.py's arithmetic and its no-op Flower app (the floor of Flower's per-message cost)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench" / "floor_app"))

from floor_app.client_app import evaluate, train  # noqa: E402

from bench.deployment import _with_overhead  # noqa: E402
from bench.report import deployment_section  # noqa: E402


def _message(kind: str) -> Message:
    arrays = ArrayRecord({"payload": Array(np.arange(5, dtype=np.float32))})
    content = RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": 1})})
    return Message(content=content, dst_node_id=3, message_type=kind)


def test_the_floor_client_echoes_the_arrays_and_imports_no_application_code():
    context = Context(run_id=1, node_id=3, node_config={}, state=RecordDict(), run_config={})
    reply = train(_message("train"), context)
    assert reply.content["arrays"]["payload"].numpy().tolist() == [0, 1, 2, 3, 4]
    assert "arrays" not in evaluate(_message("evaluate"), context).content
    import floor_app.client_app as floor  # noqa: PLC0415

    assert "torch" not in floor.__dict__ and "fedvq_app" not in floor.__dict__


def test_clientapp_overhead_is_the_round_above_the_floor_per_message():
    run = {"checkout": "a", "epochs_0": {"completed": True, "steady_round_s": 30.0},
           "floor": {"completed": True, "steady_round_s": 10.0}}
    out = _with_overhead(dict(run))
    assert out["per_message_s"] == 15.0 and out["per_message_overhead_s"] == 10.0
    no_floor = _with_overhead({"checkout": "b", "epochs_0": {"completed": True, "steady_round_s": 30.0}})
    assert "per_message_overhead_s" not in no_floor and no_floor["per_message_s"] == 15.0


def test_the_report_states_the_ratio_against_the_target():
    machine = {"cores": 2, "cpu": "c", "memory_gib": 1, "python": "3", "torch": "t", "flwr": "f"}
    before = _with_overhead({"checkout": "before", "epochs_0": {"completed": True, "steady_round_s": 50.0},
                             "floor": {"completed": True, "steady_round_s": 26.0}})
    record = {"date": "d", "machine": machine, "supernodes": 3, "rounds": 4, "checkouts": [before],
              "overhead_after_over_before": 0.4, "raw_per_message_after_over_before": 0.7}
    text = "\n".join(deployment_section([record]))
    assert "| before | 50.0 | - | 26.0 | 25.00 | 12.00 |" in text
    assert "after / before = 0.40 (target <= 0.5: met)" in text
