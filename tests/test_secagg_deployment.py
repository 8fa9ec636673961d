"""Secure aggregation in Flower's own runtimes: ``flwr run`` simulation and a real deployment.

* simulation (``flwr run .``, 3 virtual SuperNodes): a federated k-means job with
  ``secagg.mode = secaggplus``, every statistic through Flower's SecAgg+;
* deployment with TLS + SuperNode authentication, 3 SuperNodes on 127.0.0.1: the same k-means job
  (no torch in its ClientApp) with and without secure aggregation; the SuperNodes keep the protocol's
  keys in each site's context state between the per-message ClientApp processes. Each of the ~30
  messages per site is a fresh process, so the secure job takes minutes on 2 cores: it runs only
  with ``FEDVQ_SECAGG_DEPLOYMENT=1`` (not in CI).
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from fedvq_app.simulation import daemons_of, flwr_run
from tests.test_deployment import KMEANS, NODES, SITE_ROWS, LocalTopology, _assert_all_stopped, _job, _write_sites


@pytest.mark.skipif(shutil.which("flwr") is None, reason="flwr CLI not installed")
def test_flwr_run_simulation_with_secure_aggregation(tmp_path):
    flwr_home, logs = tmp_path / "flwr_home", tmp_path / "logs"
    config = {
        **KMEANS,
        "kmeans.data-source": "wine",
        "kmeans.init": "random",
        "secagg.mode": "secaggplus",
        "log-dir": str(logs),
        "experiment-name": "secagg",
    }
    run = flwr_run(config, flwr_home, federation_config="num-supernodes=3 client-resources-num-cpus=1", timeout=600)
    summary_file = logs / "secagg" / "summary.json"
    assert summary_file.is_file(), run.output[-4000:]
    summary = json.loads(summary_file.read_text())
    assert summary["status"] == "completed" and summary["num_clients"] == 3 and summary["ari"] > 0.5
    rounds = [json.loads(x) for x in (logs / "secagg" / "rounds.jsonl").read_text().splitlines()]
    assert [r["secure_aggregation"]["num_contributors"] for r in rounds] == [3, 3]
    assert "secure aggregation (round" in run.output
    assert daemons_of(flwr_home) == []


@pytest.mark.skipif(
    os.environ.get("FEDVQ_SECAGG_DEPLOYMENT") != "1"
    or not all(shutil.which(tool) for tool in ("flwr", "flower-superlink", "flower-supernode", "openssl")),
    reason="minutes on 2 cores: set FEDVQ_SECAGG_DEPLOYMENT=1 (needs Flower's deployment CLIs and openssl)",
)
def test_secure_kmeans_over_tls_authenticated_supernodes_matches_the_plain_job(tmp_path):
    sites = _write_sites(tmp_path / "sites")
    logs = tmp_path / "experiments"
    job = {**KMEANS, "kmeans.init": "random", "round-timeout": 300.0}
    topology = LocalTopology(
        num_supernodes=NODES, secure=True, directory=tmp_path / "topology", data_dir=str(sites / "site-{i}")
    )
    with topology:
        assert "--enable-supernode-auth" in topology.superlink_command()
        plain = _job(topology, logs, "plain", **job)
        secure = _job(topology, logs, "secure", **job, **{"secagg.mode": "secaggplus"})
    _assert_all_stopped(topology)
    print(f"secagg kmeans over TLS: ARI {secure['ari']:.4f} (plain {plain['ari']:.4f})")
    assert secure["status"] == plain["status"] == "completed"
    assert secure["ari"] == plain["ari"] and secure["kmeans"]["num_samples"] == sum(SITE_ROWS)
    assert sorted(secure["kmeans"]["cluster_sizes"]) == sorted(plain["kmeans"]["cluster_sizes"])
    rounds = [json.loads(x) for x in (logs / "secure" / "rounds.jsonl").read_text().splitlines()]
    assert [r["secure_aggregation"]["num_contributors"] for r in rounds] == [NODES, NODES]
    assert secure["dropped_total"] == 0
