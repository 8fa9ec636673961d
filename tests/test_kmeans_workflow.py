"""Whole federated k-means runs through the real ServerApp/ClientApp (in-process grid)."""

from __future__ import annotations

import json
import logging
import tomllib
from pathlib import Path

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score
from sklearn.preprocessing import StandardScaler

from data_gen.generate_test_data import GeneratorOptions, generate, write
from fedvq_app.client_app import app as client_app
from fedvq_app.config import ConfigError
from fedvq_app.data.tabular import DATA_PATH_ENV, load_tabular_partition
from fedvq_app.errors import RunFailed
from fedvq_app.local_grid import run_local
from fedvq_app.registry import load_settings
from fedvq_app.server_app import app as server_app

HEADLINE = ("inertia", "silhouette", "ari", "rounds", "converged")


@pytest.fixture(autouse=True)
def _no_env_data_path(monkeypatch):
    monkeypatch.delenv(DATA_PATH_ENV, raising=False)


def _run(run_config, tmp_path, nodes=3, name="e", grid_kwargs=None, **overrides):
    config = run_config(method="kmeans", **{"log-dir": str(tmp_path / "logs"), "experiment-name": name, **overrides})
    grid = run_local(server_app, client_app, nodes, config, **(grid_kwargs or {}))
    folder = tmp_path / "logs" / name
    return grid, folder, json.loads((folder / "summary.json").read_text())


def _centralized(source, clients, k, data_path="", seed=42):
    parts = [load_tabular_partition(source, i, clients, data_path=data_path, seed=seed) for i in range(clients)]
    z = StandardScaler().fit_transform(np.vstack([p.x for p in parts]))
    model = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(z)
    return model.inertia_, adjusted_rand_score(np.concatenate([p.labels for p in parts]), model.labels_)


@pytest.fixture
def generated(tmp_path):
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


def test_generated_data_matches_centralized_and_writes_the_seed_layout(run_config, tmp_path, generated):
    _, folder, summary = _run(
        run_config, tmp_path, **{"kmeans.data-source": "generated", "kmeans.data-path": generated}
    )
    inertia, ari = _centralized("generated", 3, 3, generated)
    assert summary["ari"] == pytest.approx(ari, abs=0.02)
    assert summary["inertia"] == pytest.approx(inertia, rel=1e-3)
    assert summary["converged"] is True and summary["dataset"] == "generated" and summary["num_clients"] == 3
    assert summary["rounds"] == len((folder / "rounds.jsonl").read_text().splitlines()) >= 1
    experiment = json.loads((folder / "experiment_summary.json").read_text())
    assert {*HEADLINE, "total_rounds", "convergence_history", "final_means_shape"} <= set(experiment)
    assert experiment["final_means_shape"] == [3, 2] and experiment["config"]["k_global"] == 3
    metrics = json.loads((folder / "federated_kmeans_metrics.json").read_text())
    assert metrics["ari"] == summary["ari"] and metrics["inertia"] == summary["inertia"]
    last = summary["rounds"]
    for path in (
        "global_means/round_000_global_means.npy",
        f"global_means/round_{last:03d}_metadata.json",
        f"local_means/round_{last:03d}_clients.jsonl",
        "local_means/points_2d.jsonl",
        "client_logs/clients.log",
        "server_logs/server.log",
        "kmeans_convergence.png",
    ):
        assert (folder / path).is_file(), path
    # compact: one file per round for all clients, no folder or file per client
    assert not list(folder.glob("local_means/client_*")) and not list(folder.glob("client_logs/client_*"))
    assert not list(folder.glob("local_means/*_server.npz"))  # the server keeps no site's statistics
    meta = json.loads((folder / f"global_means/round_{last:03d}_metadata.json").read_text())
    assert meta["convergence_change"] < 1e-4 and meta["participating_clients"] == "0-2"
    lines = (folder / "local_means/round_001_clients.jsonl").read_text().splitlines()
    records = {r["client_id"]: r for r in map(json.loads, lines)}
    assert sorted(records) == [0, 1, 2]
    assert {"sample_counts_before_filter", "sample_counts_after_filter", "withheld_clusters"} <= set(records[0])
    n_init = summary["kmeans"]["n_init"]
    assert np.shape(records[0]["local_means"]) == (n_init, 3, 2) and np.shape(records[0]["assignments"]) == (n_init, 60)
    assert sum(map(sum, records[0]["sample_counts"])) <= n_init * 60
    log_lines = (folder / "client_logs/clients.log").read_text().splitlines()
    assert {line.split(" client ")[1].split(":")[0] for line in log_lines} == {"0", "1", "2"}
    np.testing.assert_allclose(np.array(summary["kmeans"]["centroids_original_scale"]).shape, (3, 2))


def test_wine_federated_ari_within_002_of_centralized(run_config, tmp_path):
    _, folder, summary = _run(run_config, tmp_path, **{"kmeans.data-source": "wine"})
    inertia, ari = _centralized("wine", 3, 3)
    assert abs(summary["ari"] - ari) <= 0.02
    assert summary["inertia"] == pytest.approx(inertia, rel=1e-6)
    report = summary["kmeans"]
    assert report["pca"]["components"] == 2 and report["cluster_dim"] == 13
    assert sum(report["cluster_sizes"]) == 178 and 0.0 < summary["silhouette"] < 1.0
    assert (folder / "transform.npz").is_file()


def test_clustering_in_the_pca_space_back_projects_centroids(run_config, tmp_path):
    _, _, summary = _run(run_config, tmp_path, **{"kmeans.data-source": "iris", "kmeans.cluster-space": "pca"})
    report = summary["kmeans"]
    assert report["cluster_space"] == "pca" and np.shape(report["centroids"]) == (3, 2)
    assert np.shape(report["centroids_original_scale"]) == (3, 4)
    assert summary["ari"] > 0.5 and summary["converged"]


def test_feature_mismatch_stops_the_run_naming_the_client(run_config, tmp_path, caplog):
    two = GeneratorOptions(num_clients=3, samples_per_client=20, num_features=2)
    write(generate(two), tmp_path / "two")
    write(generate(GeneratorOptions(**{**two.__dict__, "num_features": 5})), tmp_path / "five")
    config = run_config(
        method="kmeans",
        **{
            "kmeans.data-source": "generated",
            "dataset.data-dir": str(tmp_path / "two"),
            "log-dir": str(tmp_path / "logs"),
            "experiment-name": "mismatch",
        },
    )
    with caplog.at_level(logging.ERROR, logger="flwr"), pytest.raises(RunFailed):
        run_local(server_app, client_app, 3, config, node_configs={3: {"data-dir": str(tmp_path / "five")}})
    assert "mismatching clients: partition 2 (node 3)" in caplog.text


def test_a_dropped_node_leaves_the_others_to_finish(run_config, tmp_path):
    _, _, summary = _run(
        run_config, tmp_path, nodes=4, grid_kwargs={"fail_nodes": {4}}, **{"kmeans.data-source": "iris"}
    )
    assert summary["num_clients"] == 3 and summary["converged"]
    assert summary["kmeans"]["num_samples"] < 150  # the dropped partition's rows are not there


def test_a_client_rejected_in_every_phase_is_not_counted(run_config, tmp_path):
    """It passed the handshake, then every reply was malformed: not in num_clients / num_samples."""
    from flwr.app import Error, Message

    from fedvq_app.protocol import KMEANS_HANDSHAKE

    def break_node_4(node, reply):
        if node != 4 or reply.metadata.message_type == KMEANS_HANDSHAKE:
            return reply
        return Message(Error(code=0, reason="corrupted"), reply_to=reply)

    _, folder, summary = _run(
        run_config, tmp_path, nodes=4, grid_kwargs={"tamper": break_node_4}, **{"kmeans.data-source": "iris"}
    )
    _, _, full = _run(run_config, tmp_path, nodes=4, name="full", **{"kmeans.data-source": "iris"})
    sizes = [len(load_tabular_partition("iris", i, 4).x) for i in range(4)]
    assert full["num_clients"] == 4 and full["kmeans"]["num_samples"] == 150
    assert summary["num_clients"] == 3 and summary["kmeans"]["excluded_partitions"] == [3]
    assert summary["kmeans"]["num_samples"] == sum(sizes[:3])
    assert json.loads((folder / "experiment_summary.json").read_text())["config"]["partitions"] == "0-2"


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"kmeans.data-source": "generated", "kmeans.split": "label-skew"}, "kmeans.split"),
        ({"resume-from": "/tmp/x"}, "resume-from"),
        ({"kmeans.privacy-threshold": 0}, "kmeans.privacy-threshold"),
        ({"kmeans.cluster-space": "raw"}, "kmeans.cluster-space"),
    ],
)
def test_bad_kmeans_config_is_a_one_line_error(run_config, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(run_config(method="kmeans", **overrides))


@pytest.mark.parametrize(
    "name", ["kmeans_wine", "kmeans_generated_2d", "kmeans_generated_10d", "kmeans_iris_label_skew"]
)
def test_conf_variants_are_valid_kmeans_configs(run_config, name):
    variant = tomllib.loads((Path(__file__).resolve().parent.parent / "conf" / f"{name}.toml").read_text())
    settings = load_settings(run_config(**variant))
    assert settings.method == "kmeans" and settings.method_options.k in (3, 4)


@pytest.mark.parametrize(
    ("overrides", "prefix"),
    [
        ({"method": "kmeans", "kmeans.data-source": "wine"}, "kmeans_wine_"),
        ({"method": "fedavg", "kmeans.data-source": "wine"}, "fedavg_digits_"),
    ],
)
def test_default_experiment_folder_names_the_data_the_method_reads(run_config, tmp_path, overrides, prefix):
    from fedvq_app.tracking.experiment import ExperimentTracker  # noqa: PLC0415

    settings = load_settings(run_config(**{"log-dir": str(tmp_path), **overrides}))
    assert ExperimentTracker.create(settings).dir.name.startswith(prefix)
