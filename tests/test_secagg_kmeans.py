"""Federated k-means under secure aggregation: same clustering as the plain run, no site's statistics seen."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import Message

from data_gen.generate_test_data import GeneratorOptions, generate, write
from fedvq_app.client_app import app as client_app
from fedvq_app.config import ConfigError
from fedvq_app.local_grid import run_local
from fedvq_app.protocol import KMEANS_HANDSHAKE
from fedvq_app.registry import load_settings
from fedvq_app.server_app import app as server_app


@pytest.fixture(autouse=True)
def _no_env_data_path(monkeypatch):
    monkeypatch.delenv("FEDVQ_KMEANS_DATA_PATH", raising=False)


def _run(run_config, tmp_path, name, nodes=3, tamper=None, **overrides):
    config = run_config(
        method="kmeans",
        **{"log-dir": str(tmp_path), "experiment-name": name, "kmeans.init": "random", **overrides},
    )
    run_local(server_app, client_app, nodes, config, tamper=tamper)
    return json.loads((tmp_path / name / "summary.json").read_text())


def _generated(tmp_path) -> str:
    opts = GeneratorOptions(
        num_clients=3,
        samples_per_client=60,
        num_features=2,
        num_clusters=3,
        non_iid_factor=0.5,
        cluster_std=1.5,
        random_state=4,
    )
    return str(write(generate(opts), tmp_path / "data"))


def _rows(centroids) -> np.ndarray:
    a = np.asarray(centroids)
    return a[np.lexsort(a.T[::-1])]


@pytest.mark.parametrize("source", ["wine", "generated"])
def test_secure_kmeans_reaches_the_plain_runs_clustering_and_no_reply_carries_statistics(run_config, tmp_path, source):
    extra = {"kmeans.data-source": source}
    if source == "generated":
        extra["kmeans.data-path"] = _generated(tmp_path)
    replies: list[Message] = []

    def intercept(node, reply):
        replies.append(reply)
        return reply

    plain = _run(run_config, tmp_path, "plain", **extra)
    secure = _run(run_config, tmp_path, "secure", tamper=intercept, **{**extra, "secagg.mode": "secaggplus"})
    assert plain["status"] == secure["status"] == "completed"
    assert secure["kmeans"]["ari"] == plain["kmeans"]["ari"]
    # the same clusters (the kept run may number them differently: the best runs tie)
    assert sorted(secure["kmeans"]["cluster_sizes"]) == sorted(plain["kmeans"]["cluster_sizes"])
    assert secure["kmeans"]["num_samples"] == plain["kmeans"]["num_samples"]
    # quantization error: far below the spread of any feature (the bound is sites x 2 / levels of the scales)
    plain_norm, secure_norm = plain["kmeans"]["normalization"], secure["kmeans"]["normalization"]
    std = np.asarray(plain_norm["std"])
    assert np.all(np.abs(np.asarray(secure_norm["mean"]) - plain_norm["mean"]) <= 1e-4 * std)
    assert np.all(np.abs(np.asarray(secure_norm["std"]) - std) <= 1e-4 * std)
    np.testing.assert_allclose(_rows(secure["kmeans"]["centroids"]), _rows(plain["kmeans"]["centroids"]), atol=1e-3)
    # what the server received: the handshake's sizes, then SecAgg+ stage replies whose arrays are cleared
    assert replies
    for reply in replies:
        assert not reply.has_error()
        assert all(len(record) == 0 for record in reply.content.array_records.values())
        if reply.metadata.message_type != KMEANS_HANDSHAKE:
            assert reply.metadata.message_type == "train"  # every SecAgg+ stage
            for record in reply.content.metric_records.values():
                assert dict(record) == {"num_examples": 1}
    rounds = [json.loads(x) for x in (tmp_path / "secure" / "rounds.jsonl").read_text().splitlines()]
    assert all(r["dropped"] == [] and r["secure_aggregation"]["num_contributors"] == 3 for r in rounds)


def test_the_cold_start_from_local_means_refuses_secure_aggregation(run_config):
    with pytest.raises(ConfigError, match=r"'secagg.mode'.*kmeans.init='local-means'.*cannot be summed"):
        load_settings(run_config(method="kmeans", **{"secagg.mode": "secaggplus"}))
    assert load_settings(run_config(method="kmeans", **{"secagg.mode": "secaggplus", "kmeans.init": "random"}))
