"""One message per site per round (``evaluate-with-train``, issue 30).

A round's evaluation rides on the next round's train messages; the figures must be those
of separate evaluate messages, filed under the round whose model they measured.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict

from fedvq_app.client_app import app as client_app
from fedvq_app.local_grid import claim_server_identity, full_run_config, run_local
from fedvq_app.protocol import EVALUATE_CONFIG, EVALUATION_PREFIX
from fedvq_app.server.carried import attach_evaluation, same_arrays, split_evaluation
from fedvq_app.server_app import app as server_app

#: what legitimately differs between the two runs: wall time, bytes and a strategy's own timings
VOLATILE = ("wall_time_s", "communication")


def _run(tmp_path, name, method="fedavg", nodes=3, **extra):
    config = full_run_config(
        method=method,
        **{"num-server-rounds": 3, "train.local-epochs": 1, "log-dir": str(tmp_path), "experiment-name": name, **extra},
    )
    grid = run_local(server_app, client_app, nodes, config)
    folder = tmp_path / name
    rounds = [json.loads(line) for line in (folder / "rounds.jsonl").read_text().splitlines()]
    return grid, rounds, json.loads((folder / "summary.json").read_text())


def _figures(rounds):
    """Each round's record without what may differ (time, bytes, timings inside the strategy report)."""
    out = []
    for record in rounds:
        record = {k: v for k, v in record.items() if k not in VOLATILE}
        record["strategy"] = {k: v for k, v in record["strategy"].items() if not k.endswith("_s")}
        out.append(record)
    return out


def _messages(rounds):
    return [r["communication"]["messages"]["sent"] for r in rounds]


@pytest.mark.parametrize("method", ["fedavg", "scaffold", "cfl", "fedloge"])
def test_one_message_rounds_give_the_same_figures_with_half_the_messages(tmp_path, method):
    """Bit-identical figures: FedAvg, SCAFFOLD (extra records in its train messages), CFL (a model per
    cluster), FedLoGe (personalised heads refitted at every evaluation)."""
    _, one, one_summary = _run(tmp_path, "one", method)
    _, two, two_summary = _run(tmp_path, "two", method, **{"evaluate-with-train": False})
    assert _figures(one) == _figures(two)  # every round: train and evaluate figures, per client and aggregated
    assert one_summary["final"] == two_summary["final"]
    assert one_summary["best"] == two_summary["best"]
    # 3 sites: one message each in rounds 1-2; the last round adds the evaluate-only message
    assert _messages(one) == [3, 3, 6]
    assert _messages(two) == [6, 6, 6]
    # a steady round sends what the train messages of two-message rounds send (plus a small config),
    # and saves what their evaluate messages sent: the model once more (FedAvg: half the bytes)
    one_block, two_block = one[1]["communication"], two[1]["communication"]
    assert one_block["phases"].keys() == {"train"}
    assert one_block["sent_bytes"] == pytest.approx(two_block["phases"]["train"]["sent"], rel=0.01)
    assert two_block["sent_bytes"] - one_block["sent_bytes"] == pytest.approx(
        two_block["phases"]["evaluate"]["sent"], rel=0.01
    )


def test_evaluate_every_two_rounds_rides_on_the_next_train_message(tmp_path):
    extra = {"num-server-rounds": 4, "eval-every": 2}
    _, one, _ = _run(tmp_path, "one", **extra)
    _, two, _ = _run(tmp_path, "two", **extra, **{"evaluate-with-train": False})
    assert _figures(one) == _figures(two)
    assert [bool(r["evaluate"]["clients"]) for r in one] == [False, True, False, True]
    assert _messages(one) == [3, 3, 3, 6]
    assert _messages(two) == [3, 6, 3, 6]


def test_an_evaluation_sample_the_next_round_does_not_train_goes_out_on_its_own(tmp_path, caplog):
    """fraction-train < fraction-evaluate: some evaluated sites are not trained next round."""
    extra = {"fraction-train": 0.5, "min-train-nodes": 2, "num-server-rounds": 3}
    _, one, _ = _run(tmp_path, "one", nodes=4, **extra)
    _, two, _ = _run(tmp_path, "two", nodes=4, **extra, **{"evaluate-with-train": False})
    assert _figures(one) == _figures(two)
    assert _messages(one) == _messages(two) == [6, 6, 6]  # 2 train + 4 evaluate messages every round
    assert "evaluation sent in messages of its own" in caplog.text


def test_a_carried_evaluation_that_is_malformed_is_rejected_and_the_training_kept(tmp_path):
    def tamper(node, reply):
        if node == 2 and f"{EVALUATION_PREFIX}metrics" in reply.content:
            reply.content[f"{EVALUATION_PREFIX}metrics"]["num-examples"] = -5
        return reply

    config = full_run_config(
        **{"num-server-rounds": 3, "train.local-epochs": 1, "log-dir": str(tmp_path), "experiment-name": "t"}
    )
    run_local(server_app, client_app, 3, config, tamper=tamper)
    rounds = [json.loads(line) for line in (tmp_path / "t" / "rounds.jsonl").read_text().splitlines()]
    # rounds 1 and 2 were evaluated through round 2's and 3's train replies: node 2's evaluation refused ...
    for record in rounds[:2]:
        assert [r["node"] for r in record["evaluate_rejected"]] == [2]
        assert set(record["evaluate"]["clients"]) == {"0", "2"}
    # ... its training accepted; the last round's evaluate-only message is not tampered with
    assert all(r["rejected"] == [] and r["train"]["num_clients"] == 3 for r in rounds)
    assert set(rounds[2]["evaluate"]["clients"]) == {"0", "1", "2"}
    summary = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert summary["rejected_evaluate_total"] == 2


# --------------------------------------------------------------------------- the helpers, message by message
def _message(node, arrays, config=None, message_type="train"):
    content = RecordDict({"arrays": ArrayRecord([np.asarray(a) for a in arrays]), "config": ConfigRecord(config or {})})
    return Message(content=content, dst_node_id=node, message_type=message_type)


def test_attach_evaluation_adds_each_node_its_evaluate_config_without_touching_the_shared_content():
    claim_server_identity()
    shared = RecordDict({"arrays": ArrayRecord([np.arange(3.0)]), "config": ConfigRecord({"lr": 0.1})})
    train = [Message(content=shared, dst_node_id=n, message_type="train") for n in (1, 2, 3)]
    evaluate = [_message(n, [np.arange(3.0)], {"server-round": 4, "node": n}, "evaluate") for n in (1, 2)]
    carrying, reason = attach_evaluation(train, evaluate)
    assert reason is None
    assert [m.metadata.dst_node_id for m in carrying] == [1, 2, 3]
    assert carrying[0].content[EVALUATE_CONFIG]["node"] == 1 and carrying[1].content[EVALUATE_CONFIG]["node"] == 2
    assert EVALUATE_CONFIG not in carrying[2].content  # a trained node the strategy did not evaluate
    assert EVALUATE_CONFIG not in shared  # Flower's messages share one RecordDict: it stays as it was
    assert carrying[0].content["config"]["lr"] == 0.1


def test_attach_evaluation_refuses_other_arrays_and_nodes_not_trained_next():
    claim_server_identity()
    train = [_message(n, [np.arange(3.0)]) for n in (1, 2)]
    other = [_message(1, [np.arange(3.0)], message_type="evaluate"), _message(2, [np.arange(3.0) + 1e-9])]
    carrying, reason = attach_evaluation(train, other)
    assert carrying is train and reason == "node 2 is to evaluate other arrays than it trains next"
    absent = [_message(n, [np.arange(3.0)], message_type="evaluate") for n in (1, 2, 7)]
    carrying, reason = attach_evaluation(train, absent)
    assert carrying is train and reason == "1 evaluated node(s) are not trained next (e.g. node 7)"


def test_same_arrays_compares_names_dtypes_shapes_and_bytes():
    a = ArrayRecord([np.zeros((2, 3), dtype=np.float32)])
    assert same_arrays(a, ArrayRecord([np.zeros((2, 3), dtype=np.float32)]))
    assert not same_arrays(a, ArrayRecord([np.zeros((3, 2), dtype=np.float32)]))
    assert not same_arrays(a, ArrayRecord([np.zeros((2, 3), dtype=np.float64)]))
    assert not same_arrays(a, ArrayRecord([np.zeros((2, 3), dtype=np.float32), np.zeros(1)]))


def test_split_evaluation_turns_the_carried_records_into_evaluate_replies():
    claim_server_identity()
    sent = [_message(n, [np.zeros(2)]) for n in (1, 2, 3)]
    carried = Message(
        RecordDict(
            {
                "arrays": ArrayRecord([np.ones(2)]),
                "metrics": MetricRecord({"num-examples": 5}),
                f"{EVALUATION_PREFIX}metrics": MetricRecord({"num-examples": 4, "test-accuracy": 0.5}),
            }
        ),
        reply_to=sent[0],
    )
    plain = Message(RecordDict({"metrics": MetricRecord({"num-examples": 5})}), reply_to=sent[1])
    failed = Message(Error(code=0, reason="boom"), reply_to=sent[2])
    train, evaluation = split_evaluation([carried, plain, failed])
    assert [m.metadata.src_node_id for m in train] == [1, 2, 3]
    assert set(train[0].content.keys()) == {"arrays", "metrics"}
    assert train[1] is plain and train[2] is failed
    assert len(evaluation) == 1 and evaluation[0].metadata.src_node_id == 1
    assert dict(evaluation[0].content["metrics"]) == {"num-examples": 4, "test-accuracy": 0.5}
