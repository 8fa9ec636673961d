"""bench/deployment.py's arithmetic and its no-op Flower app (the floor of Flower's per-message cost)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench" / "floor_app"))

from floor_app.client_app import evaluate, train  # noqa: E402

from bench.deployment import ClientAppCpu, _with_overhead  # noqa: E402
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
    run = {
        "checkout": "a",
        "epochs_0": {"completed": True, "steady_round_s": 30.0},
        "floor": {"completed": True, "steady_round_s": 10.0},
    }
    out = _with_overhead(dict(run))
    assert out["per_message_s"] == 15.0 and out["per_message_overhead_s"] == 10.0
    no_floor = _with_overhead({"checkout": "b", "epochs_0": {"completed": True, "steady_round_s": 30.0}})
    assert "per_message_overhead_s" not in no_floor and no_floor["per_message_s"] == 15.0


def test_the_report_states_the_ratio_against_the_target():
    machine = {"cores": 2, "cpu": "c", "memory_gib": 1, "python": "3", "torch": "t", "flwr": "f"}
    before = _with_overhead(
        {
            "checkout": "before",
            "epochs_0": {"completed": True, "steady_round_s": 50.0},
            "floor": {"completed": True, "steady_round_s": 26.0},
        }
    )
    record = {
        "date": "d",
        "machine": machine,
        "supernodes": 3,
        "rounds": 4,
        "checkouts": [before],
        "overhead_after_over_before": 0.4,
        "raw_per_message_after_over_before": 0.7,
    }
    text = "\n".join(deployment_section([record]))
    assert "| before | 50.0 | - | 26.0 | 25.00 | 12.00 |" in text
    assert "after / before = 0.40 (target <= 0.5: met)" in text


def test_the_cpu_overhead_is_the_clientapp_cpu_above_the_floor_and_its_ratio_is_reported():
    machine = {"cores": 2, "cpu": "c", "memory_gib": 1, "python": "3", "torch": "t", "flwr": "f"}
    runs = [
        _with_overhead(
            {
                "checkout": name,
                "epochs_0": {"completed": True, "steady_round_s": 40.0, "steady_cpu_per_message_s": cpu},
                "floor": {"completed": True, "steady_round_s": 20.0, "steady_cpu_per_message_s": 4.0},
            }
        )
        for name, cpu in (("before", 14.0), ("after", 7.0))
    ]
    assert [r["cpu_overhead_per_message_s"] for r in runs] == [10.0, 3.0]
    record = {
        "date": "d",
        "machine": machine,
        "supernodes": 3,
        "rounds": 4,
        "checkouts": runs,
        "overhead_after_over_before": 0.6,
        "cpu_overhead_after_over_before": 0.3,
    }
    text = "\n".join(deployment_section([record]))
    assert "| after | 40.0 | - | 20.0 | 20.00 | 10.00 | 7.00 / 4.00 | 3.00 |" in text
    assert "target <= 0.5: **MISSED**" in text and "CPU seconds after / before = 0.30 (target <= 0.5: met)" in text


def test_the_cpu_counter_counts_clientapp_processes_of_the_supernodes_groups_only(tmp_path):
    """A stand-in SuperNode (its own process group) starts a ``flwr-clientapp`` that burns CPU; one
    started outside that group (another job's) is not counted."""
    script = tmp_path / "flwr-clientapp"
    script.write_text(
        f"#!{sys.executable}\nimport time\nend = time.process_time() + 0.4\n"
        "while time.process_time() < end: pass\ntime.sleep(0.3)\n"
    )
    script.chmod(0o755)
    supernode = subprocess.Popen(["sh", "-c", f"sleep 0.3; {script}; {script} & sleep 0.2"], start_new_session=True)
    with ClientAppCpu([supernode.pid], interval_s=0.02) as cpu:
        other = subprocess.Popen([str(script)], start_new_session=True)  # a group of its own
        supernode.wait(timeout=30)
        other.wait(timeout=30)
    # the second ClientApp outlived its SuperNode's shell: leaving the counter waited for its end
    figures = cpu.figures(messages=2, first_round_messages=1)
    assert figures["clientapp_processes"] == 2 and other.pid not in [pid for pid, _ in cpu.cpu_s]
    assert all(0.3 <= s <= 0.6 for s in figures["clientapp_cpu_s"]), figures
    assert figures["cpu_per_message_s"] == sum(figures["clientapp_cpu_s"]) / 2
    assert figures["steady_cpu_per_message_s"] == figures["clientapp_cpu_s"][1] and os.sysconf("SC_CLK_TCK") > 0


def test_one_message_bench_takes_the_steady_rounds_and_the_transfer_at_the_link_rate():
    from bench.one_message import job_figures, steady_rounds, table  # noqa: PLC0415

    def record(rnd, wall, sent, received, messages):
        traffic = {"sent_bytes": sent, "received_bytes": received, "messages": {"sent": messages, "received": messages}}
        return {"round": rnd, "wall_time_s": wall, "communication": traffic}

    # round 1: start-up; round 4: the last, with its evaluate-only message; rounds 2-3 are steady
    records = [record(1, 90.0, 6e6, 3e6, 3), record(2, 20.0, 6e6, 3e6, 3), record(3, 22.0, 6e6, 3e6, 3)]
    records.append(record(4, 40.0, 12e6, 3e6, 6))
    assert [r["round"] for r in steady_rounds(records)] == [2, 3]
    assert [r["round"] for r in steady_rounds(records[:2])] == [2]  # two rounds: all but the first
    figures = job_figures(records, rate=2.0, sites=3)
    assert figures["round_s_steady"] == 21.0 and figures["messages_sent_per_round"] == 3
    # 9 MB per round over 3 sites = 3 MB each, down and up, at 2 Mbit/s = 12 s
    assert figures["transfer_s_per_site"] == 12.0
    assert job_figures(records, rate=0.0, sites=3)["transfer_s_per_site"] == 0.0
    row = {"method": "fedavg", "checkout": "/x/after", "commit": "abc", "link_mbit": 2.0, **figures}
    row.update(floor_s=9.0, app_and_compute_s=0.0)
    text = table([row])
    assert "| fedavg | after (abc) | 21.0 |" in text and "9.0 + 0.0 + 12.0" in text
