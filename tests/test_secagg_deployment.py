"""Secure aggregation in a real deployment: TLS + SuperNode authentication, 3 SuperNodes on 127.0.0.1.

A federated k-means job (no torch in its ClientApp: each of the ~30 messages per site is a fresh
process) with ``secagg.mode = secaggplus``: every statistic goes through Flower's SecAgg+ across real
SuperNodes, whose ClientApp processes keep the protocol's keys in the SuperNode's context state
between messages. The result equals the plain job's on the same sites.
"""

from __future__ import annotations

import json
import shutil

import pytest

from tests.test_deployment import KMEANS, NODES, SITE_ROWS, LocalTopology, _assert_all_stopped, _job, _write_sites

pytestmark = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("flwr", "flower-superlink", "flower-supernode", "openssl")),
    reason="Flower's deployment CLIs and openssl (TLS certificates) are needed",
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
