"""Own-distribution evaluation (every classification method) and the multi-domain rotation shift."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict

from fedvq_app.client_app import app as client_app
from fedvq_app.clients.base import NeuralClient
from fedvq_app.config import ConfigError
from fedvq_app.data.client_data import load_client_data
from fedvq_app.data.shifts import rotate_images
from fedvq_app.local_grid import full_run_config, run_local
from fedvq_app.registry import load_settings
from fedvq_app.server_app import app as server_app

ROOT = Path(__file__).resolve().parent.parent
TINY = {"dataset.size": 8, "num-server-rounds": 1, "train.local-epochs": 1}


# ---------------------------------------------------------------------- shift.domains
@pytest.mark.parametrize(
    ("domains", "expected"),
    [("0,-50,120", (0, -50, 120)), (" 90, 180 ", (90, 180)), ("", ())],
)
def test_domains_parse_to_angles(run_config, domains, expected):
    assert load_settings(run_config(**{"shift.domains": domains})).shift.angles == expected


@pytest.mark.parametrize("bad", ["90", "a,b", "0,,90", "0;90", "1.5,2"])
def test_bad_domains_are_a_one_line_error_naming_the_key(run_config, bad):
    with pytest.raises(ConfigError) as err:
        load_settings(run_config(**{"shift.domains": bad}))
    text = str(err.value)
    assert "shift.domains" in text and repr(bad) in text and "\n" not in text


def test_domains_and_rotate_fraction_together_are_refused(run_config):
    with pytest.raises(ConfigError, match="shift.rotate-fraction"):
        load_settings(run_config(**{"shift.domains": "0,90", "shift.rotate-fraction": 0.5}))


def test_clients_are_cut_into_contiguous_equal_domain_groups(run_config):
    shift = load_settings(run_config(**{"shift.domains": "0,-50,120"})).shift
    assert [shift.domain_of(p, 9) for p in range(9)] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert [shift.angle_of(p, 9) for p in range(9)] == [0, 0, 0, -50, -50, -50, 120, 120, 120]
    assert [shift.domain_of(p, 4) for p in range(4)] == [0, 0, 1, 2]  # uneven N: no empty domain at the end
    seed001 = load_settings(run_config(**{"shift.rotate-fraction": 0.5})).shift  # the old keys keep their meaning
    assert [seed001.angle_of(p, 4) for p in range(4)] == [0, 0, 180, 180]


def test_a_client_sees_its_domain_on_train_and_test_images(run_config):
    settings = load_settings(run_config(**{"dataset.size": 8, "shift.domains": "0,90,-50"}))
    upright = load_client_data(settings, 0, 3)
    turned = load_client_data(settings, 1, 3)
    tilted = load_client_data(settings, 2, 3)
    assert (upright.domain, turned.domain, tilted.domain) == (0, 1, 2)
    assert not upright.rotated and turned.rotated and tilted.rotated
    # same global test rows, the second client's rotated by exactly 90 degrees (N, C, H, W tensors)
    as_nhwc = upright.test_x.permute(0, 2, 3, 1).numpy()
    assert np.array_equal(turned.test_x.permute(0, 2, 3, 1).numpy(), rotate_images(as_nhwc, 90))
    assert not np.array_equal(tilted.test_x.numpy(), upright.test_x.numpy())
    assert np.array_equal(tilted.test_y.numpy(), upright.test_y.numpy())


@pytest.mark.parametrize("name", ["fedavg_digits_3domains.toml", "fedvq_digits_3domains.toml"])
def test_three_domain_conf_files_are_valid(run_config, name):
    overrides = tomllib.loads((ROOT / "conf" / name).read_text())
    settings = load_settings(run_config(**overrides))
    assert settings.shift.angles == (0, -50, 120)


# ---------------------------------------------------------------------- own-distribution test
def _client(settings_overrides: dict, partition_id: int = 0, num_partitions: int = 5) -> NeuralClient:
    config = full_run_config(**settings_overrides)
    context = Context(
        run_id=1,
        node_id=partition_id + 1,
        node_config={"partition-id": partition_id, "num-partitions": num_partitions},
        state=RecordDict(),
        run_config=config,
    )
    return NeuralClient(load_settings(config), context)


def test_own_test_rows_follow_the_clients_label_mix():
    client = _client({"dataset.size": 8, "partition.kind": "pathological", "partition.classes-per-client": 2})
    rows = client.own_test_rows
    own_labels = set(client.data.test_y.numpy()[rows].tolist())
    train_labels = {c for c, n in enumerate(client.data.label_counts()) if n}
    assert len(train_labels) == 2 and own_labels == train_labels
    assert np.array_equal(
        rows,
        _client({"dataset.size": 8, "partition.kind": "pathological", "partition.classes-per-client": 2}).own_test_rows,
    )


def test_evaluate_reply_scores_the_model_on_its_own_rows():
    client = _client({"dataset.size": 8, "partition.kind": "pathological", "partition.classes-per-client": 2})
    model = client.build_model()
    splits = client.evaluate_splits(model)
    own, test = splits["own-test"], splits["test"]
    assert own.num_examples == len(client.own_test_rows) < test.num_examples
    from fedvq_app.models.state import shared_arrays  # noqa: PLC0415

    msg = Message(
        content=RecordDict({"arrays": shared_arrays(model, lambda _: True), "config": ConfigRecord({})}),
        dst_node_id=1,
        message_type="evaluate",
    )
    metrics = client.evaluate(msg).content["metrics"]
    assert metrics["own-test-accuracy"] == pytest.approx(own.accuracy)
    assert metrics["test-accuracy"] == pytest.approx(test.accuracy)
    assert metrics["own-test-loss"] == pytest.approx(own.loss)


@pytest.mark.parametrize("method", ["fedavg", "fedloge"])
def test_summary_reports_own_test_accuracy_for_global_and_personalised_methods(tmp_path, method):
    overrides = {
        **TINY,
        "method": method,
        "partition.kind": "pathological",
        "partition.classes-per-client": 2,
        "log-dir": str(tmp_path),
        "experiment-name": method,
        "num-server-rounds": 2,
    }
    run_local(server_app, client_app, 3, full_run_config(**overrides))
    summary = json.loads((tmp_path / method / "summary.json").read_text())
    final = summary["final"]
    assert len(final["per_client_own_test_accuracy"]) == 3
    assert final["own_test_accuracy"] == pytest.approx(np.mean(final["per_client_own_test_accuracy"]))
    assert 0.0 <= final["min_client_own_test_accuracy"] <= final["own_test_accuracy"] <= 1.0
    rounds = [json.loads(x) for x in (tmp_path / method / "rounds.jsonl").read_text().splitlines()]
    assert all("own-test-accuracy" in c for c in rounds[-1]["evaluate"]["clients"].values())
    # two classes per client: the own-label-mix test set is easier than the 10-class global one
    assert final["own_test_accuracy"] > final["accuracy"]
