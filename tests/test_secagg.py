"""Secure aggregation (secagg.mode=secaggplus): what the server holds, dropouts, refusals, same results."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common import bytes_to_ndarray
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

from fedvq_app import protocol
from fedvq_app.config import ConfigError
from fedvq_app.registry import load_settings
from fedvq_app.server.secure_sum import secure_sum
from tests.secagg_toy import TOY_SECAGG, toy_grid, toy_vectors

CLIP = 4.0


def _messages(nodes):
    return [
        Message(
            RecordDict({"config": ConfigRecord({"server-round": 1})}),
            dst_node_id=node,
            message_type="train",
            group_id="1",
        )
        for node in nodes
    ]


def _sum(grid, nodes, secagg=TOY_SECAGG):
    return secure_sum(
        grid,
        _messages(nodes),
        secagg,
        handler="train",
        summand=protocol.SUMMAND_SUM,
        server_round=1,
        timeout=None,
        clipping_range=CLIP,
        extra={"scale": 1.0},
    )


def _is_masked_vector_reply(reply: Message) -> bool:
    configs = reply.content.config_records.get(RECORD_KEY_CONFIGS)
    return configs is not None and Key.MASKED_PARAMETERS in configs


def test_no_reply_carries_a_clients_vector_and_the_sum_is_exact_within_the_bound():
    vectors = toy_vectors(5, size=50)
    replies: list[tuple[int, Message]] = []

    def intercept(node, reply):
        replies.append((node, reply))
        return reply

    result = _sum(toy_grid(vectors, tamper=intercept), list(vectors))
    assert result is not None and result.contributors == [1, 2, 3, 4, 5]
    # 4 stages x 5 nodes, every reply seen by the interceptor
    assert len(replies) == 20
    masked = 0
    for node, reply in replies:
        assert not reply.has_error()
        # no array record carries anything (the mod clears the reply's arrays), no metric is the client's own
        assert all(len(record) == 0 for record in reply.content.array_records.values())
        for record in reply.content.metric_records.values():
            assert set(record) <= {"num_examples"} and all(v == 1 for v in record.values())
        if _is_masked_vector_reply(reply):
            masked += 1
            sent = [
                bytes_to_ndarray(b) for b in reply.content.config_records[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS]
            ]
            true = vectors[node]
            # Flower's layout: [weight factor, vector..., tail (1 / scale)]; the vector part is masked
            body = sent[1]
            quantized = (np.clip(true, -CLIP, CLIP) + CLIP) * TOY_SECAGG.quantization_range / (2 * CLIP)
            assert body.shape == true.shape
            assert np.abs(body - quantized).max() > 1e3  # not the quantized vector: masked uniformly mod 2**32
            assert not np.allclose(body, true)
            assert np.mean(np.abs(body - quantized) < 2) < 0.05  # no entry left in the clear
    assert masked == 5
    exact = sum(vectors.values())
    bound = TOY_SECAGG.sum_error_bound(5, CLIP)
    assert bound == pytest.approx(5 * 2 * CLIP / 2**22)
    error = np.abs(result.total[0] - exact).max()
    assert error <= bound, (error, bound)
    assert result.error_bound == pytest.approx(bound)
    np.testing.assert_allclose(result.total[1], [5.0])  # the tail: each client adds 1 / scale


def test_a_client_lost_after_the_key_exchange_is_recovered_and_the_others_are_summed_exactly(caplog):
    vectors = toy_vectors(5, size=20, seed=3)
    stages_seen = []

    def lose_node_3_before_its_masked_upload(node, reply):
        if _is_masked_vector_reply(reply):
            stages_seen.append(node)
            if node == 3:
                return None  # the node is gone: its masked vector never arrives
        return reply

    with caplog.at_level(logging.WARNING):
        result = _sum(toy_grid(vectors, tamper=lose_node_3_before_its_masked_upload), list(vectors))
    assert sorted(stages_seen) == [1, 2, 3, 4, 5]  # node 3 took part in the key exchange
    assert result is not None and result.contributors == [1, 2, 4, 5]
    exact = sum(v for node, v in vectors.items() if node != 3)
    assert np.abs(result.total[0] - exact).max() <= TOY_SECAGG.sum_error_bound(4, CLIP)
    assert "1 nodes: 3 lost after the key exchange" in caplog.text


def test_more_losses_than_the_threshold_drop_the_exchange_with_a_warning(caplog):
    vectors = toy_vectors(5, seed=4)

    def lose_three(node, reply):
        return None if _is_masked_vector_reply(reply) and node in (1, 2, 3) else reply

    with caplog.at_level(logging.WARNING):
        result = _sum(toy_grid(vectors, tamper=lose_three), list(vectors))
    assert result is None
    assert "secure aggregation dropped" in caplog.text and "collect masked vectors" in caplog.text
    assert "lost after the key exchange: 3 nodes: 1, 2, 3" in caplog.text


def test_a_client_refuses_to_answer_a_summed_exchange_in_the_clear():
    vectors = toy_vectors(3)
    grid = toy_grid(vectors)
    replies = list(grid.send_and_receive(_messages([1])))
    assert (
        replies[0].has_error()
        and "secagg.mode" in replies[0].error.reason
        and "in the clear" in replies[0].error.reason
    )
    assert grid.seen == []  # the handler never ran


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"secagg.mode": "on"}, r"'secagg.mode' has invalid value 'on': expected one of 'off', 'secaggplus'"),
        ({"secagg.num-shares": 2.0}, r"'secagg.num-shares' has invalid value 2.0"),
        ({"secagg.num-shares": 4.5}, r"'secagg.num-shares' has invalid value 4.5"),
        (
            {"secagg.num-shares": 5, "secagg.reconstruction-threshold": 5},
            r"'secagg.reconstruction-threshold'.*< secagg",
        ),
        ({"secagg.quantization-range": 2**31}, r"'secagg.quantization-range' has invalid value"),
        ({"secagg.quantization-range": 100}, r"'secagg.quantization-range' has invalid value 100: expected 0 \(auto\)"),
        ({"secagg.clipping-range": 0.0}, r"'secagg.clipping-range' has invalid value 0.0"),
    ],
)
def test_bad_values_are_one_line_errors(run_config, overrides, match):
    with pytest.raises(ConfigError, match=match) as err:
        load_settings(run_config(**overrides))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("overrides", "why"),
    [
        ({"method": "cfl"}, "pairwise cosine similarities"),
        ({"method": "fusedspace"}, "per-client values"),
        ({"method": "fedavg", "privacy.mode": "client-fixed"}, "per-client norms"),
        ({"method": "fedavg", "metrics.gradient-dissimilarity": True}, "raw gradient"),
        ({"method": "kmeans", "kmeans.debug-server-local-means": True}, "kmeans.debug-server-local-means"),
    ],
)
def test_what_cannot_be_summed_refuses_secagg_naming_why(run_config, overrides, why):
    with pytest.raises(ConfigError, match=why) as err:
        load_settings(run_config(**{**overrides, "secagg.mode": "secaggplus"}))
    assert "\n" not in str(err.value)
    load_settings(run_config(**overrides))  # the same run without secure aggregation is fine


def test_fedavg_fedprox_and_scaffold_accept_secagg(run_config):
    for method in ("fedavg", "fedprox", "scaffold"):
        settings = load_settings(run_config(method=method, **{"secagg.mode": "secaggplus"}))
        assert settings.secagg.enabled and settings.secagg.quantization_range == 0  # auto
        assert [settings.secagg.levels(n) for n in (3, 5, 50, 1000)] == [2**30, 2**29, 2**26, 2**22]
        assert all(n * settings.secagg.levels(n) < 2**32 for n in range(1, 2000))


def test_fedavg_with_secagg_matches_the_plain_run_and_the_server_never_holds_a_model_in_the_clear(tmp_path):
    from fedvq_app.client_app import app as client_app
    from fedvq_app.local_grid import full_run_config, run_local
    from fedvq_app.server_app import app as server_app

    train_replies: list[Message] = []

    def intercept(node, reply):
        if reply.metadata.message_type == "train":
            train_replies.append(reply)
        return reply

    figures = {}
    for mode in ("off", "secaggplus"):
        config = full_run_config(
            method="fedavg",
            **{"num-server-rounds": 2, "log-dir": str(tmp_path), "experiment-name": mode, "secagg.mode": mode},
        )
        run_local(server_app, client_app, 4, config, tamper=intercept if mode != "off" else None)
        figures[mode] = json.loads((tmp_path / mode / "summary.json").read_text())
        rounds = [json.loads(x) for x in (tmp_path / mode / "rounds.jsonl").read_text().splitlines()]
        assert all(r["dropped"] == [] for r in rounds)
    assert abs(figures["secaggplus"]["final"]["accuracy"] - figures["off"]["final"]["accuracy"]) <= 0.005
    assert rounds[-1]["secure_aggregation"]["num_contributors"] == 4
    assert len(train_replies) == 2 * 4 * 4  # 2 rounds x 4 stages x 4 nodes
    assert all(len(r) == 0 for m in train_replies for r in m.content.array_records.values())


def test_fedvq_lloyd_pools_the_exact_code_statistics_through_secagg(tmp_path):
    from fedvq_app.client_app import app as client_app
    from fedvq_app.local_grid import full_run_config, run_local
    from fedvq_app.server_app import app as server_app

    strategy = {}
    for mode in ("off", "secaggplus"):
        config = full_run_config(
            method="fedvq",
            **{"num-server-rounds": 1, "log-dir": str(tmp_path), "experiment-name": mode, "secagg.mode": mode},
        )
        run_local(server_app, client_app, 3, config)
        first = json.loads((tmp_path / mode / "rounds.jsonl").read_text().splitlines()[0])
        strategy[mode] = first["strategy"]
    # round 1: every site trained the same initial model on the same data, so the pooled per-code counts (an
    # exact integer sum under secagg: the error bound is far below 1/2) give the same federation figures
    assert strategy["secaggplus"]["codes_used"] == strategy["off"]["codes_used"] > 0
    assert strategy["secaggplus"]["perplexity"] == pytest.approx(strategy["off"]["perplexity"], rel=1e-9)
    # the server saw one pooled row, not the three sites' own usage
    assert len(strategy["off"]["clients"]) == 3 and len(strategy["secaggplus"]["clients"]) == 1


def test_a_site_lost_before_its_masked_upload_is_recorded_as_dropped_and_fedavg_goes_on(tmp_path):
    from fedvq_app.client_app import app as client_app
    from fedvq_app.local_grid import full_run_config, run_local
    from fedvq_app.server_app import app as server_app

    def lose_node_3_in_round_1(node, reply):
        if node == 3 and _is_masked_vector_reply(reply) and not getattr(lose_node_3_in_round_1, "done", False):
            lose_node_3_in_round_1.done = True
            return None
        return reply

    config = full_run_config(
        method="fedavg",
        **{"num-server-rounds": 2, "log-dir": str(tmp_path), "experiment-name": "drop", "secagg.mode": "secaggplus"},
    )
    run_local(server_app, client_app, 5, config, tamper=lose_node_3_in_round_1)
    rounds = [json.loads(x) for x in (tmp_path / "drop" / "rounds.jsonl").read_text().splitlines()]
    assert rounds[0]["dropped"] == [3] and rounds[0]["secure_aggregation"]["contributors"] == "1-2,4-5"
    assert rounds[1]["dropped"] == [] and rounds[1]["secure_aggregation"]["num_contributors"] == 5
    assert json.loads((tmp_path / "drop" / "summary.json").read_text())["status"] == "completed"


def test_scaffold_sums_its_control_variate_changes_through_secagg(tmp_path):
    from fedvq_app.client_app import app as client_app
    from fedvq_app.local_grid import full_run_config, run_local
    from fedvq_app.server_app import app as server_app

    finals, controls = {}, {}
    for mode in ("off", "secaggplus"):
        config = full_run_config(
            method="scaffold",
            **{"num-server-rounds": 2, "log-dir": str(tmp_path), "experiment-name": mode, "secagg.mode": mode},
        )
        run_local(server_app, client_app, 3, config)
        finals[mode] = json.loads((tmp_path / mode / "summary.json").read_text())["final"]["accuracy"]
        with np.load(tmp_path / mode / "checkpoint.npz") as npz:
            controls[mode] = {k: npz[k] for k in npz.files if "control/" in k}
    assert controls["off"] and set(controls["off"]) == set(controls["secaggplus"])
    # the server's control variate: the mean change of the 3 sites either way (quantization and the model's
    # round-1 perturbation aside)
    for key, plain in controls["off"].items():
        np.testing.assert_allclose(controls["secaggplus"][key], plain, atol=1e-3 + 0.05 * np.abs(plain).max())
    assert abs(finals["secaggplus"] - finals["off"]) <= 0.02
