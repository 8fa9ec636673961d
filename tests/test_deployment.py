"""Real deployment on 127.0.0.1: flower-superlink + flower-supernode processes, ``flwr run . <connection>``.

Lean jobs (digits / generated 2-D blobs, tiny settings) against topologies from
scripts/local_topology.py, with free ports and a private FLWR_HOME, always torn down
(and bound to this process, so that even a killed pytest leaves no daemons):

* insecure, 3 SuperNodes, each with its own ``data-dir`` in ``--node-config``:
  a neural method (FedAvg) and federated k-means, 2 rounds each; then a SuperNode
  killed (SIGKILL) mid-round: the round completes without it, the dropout is
  recorded and the next round goes on with the nodes present;
* secure (first, so that only one topology runs at a time): TLS + SuperNode
  authentication, a FedAvg job, and an unregistered key is refused.

Every process start costs seconds here (each ClientApp message is a new Python
process importing torch), so one insecure topology serves the three insecure jobs.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from data_gen.generate_test_data import GeneratorOptions, generate
from fedvq_app.tracking.idsets import parse_ranges

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("local_topology", ROOT / "scripts" / "local_topology.py")
local_topology = sys.modules.setdefault("local_topology", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(local_topology)
LocalTopology = local_topology.LocalTopology

pytestmark = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("flwr", "flower-superlink", "flower-supernode")),
    reason="Flower's deployment CLIs (flwr, flower-superlink, flower-supernode) are not installed",
)

NODES = 3
TINY = {
    "num-server-rounds": 2,
    "train.local-epochs": 1,
    "eval-every": 2,
    "partition.kind": "iid",
    "round-timeout": 300.0,
}
#: two Lloyd rounds, one k-means++ start, on each site's own generated file (2 features: no PCA phase)
KMEANS = {
    "method": "kmeans",
    "kmeans.data-source": "generated",
    "kmeans.max-rounds": 2,
    "kmeans.n-init": 1,
    "kmeans.client-logs": False,
    "kmeans.silhouette-sample": 0,
}
#: rows each site holds: different per site, so the summary shows every site read its own folder
SITE_ROWS = [60, 80, 100]


def _write_sites(root: Path) -> Path:
    """``root/site-<i>/client_<i>.npz``: what each site's data-dir holds (3 true clusters)."""
    data = generate(GeneratorOptions(num_clients=NODES, samples_per_client=max(SITE_ROWS), random_state=7))
    for i, ((rows, labels), keep) in enumerate(zip(data.clients, SITE_ROWS, strict=True)):
        (root / f"site-{i}").mkdir(parents=True)
        np.savez(root / f"site-{i}" / f"client_{i}.npz", data=rows[:keep], labels=labels[:keep])
    return root


def _job(topology: LocalTopology, logs: Path, name: str, timeout: float = 900, **config) -> dict:
    code = topology.run({"log-dir": str(logs), "experiment-name": name, **config}, timeout=timeout, log_name=name)
    summary_file = logs / name / "summary.json"
    output = (topology.logs / f"{name}.log").read_text()[-4000:]
    assert code == 0 and summary_file.is_file(), f"flwr run exited {code}\n{output}"
    return json.loads(summary_file.read_text())


def _rounds(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "rounds.jsonl").read_text().splitlines()]


def _assert_all_stopped(topology: LocalTopology) -> None:
    deadline = time.time() + 20
    while time.time() < deadline and local_topology.marked_pids(topology.state.marker):
        time.sleep(0.5)
    assert local_topology.marked_pids(topology.state.marker) == [], "processes of the topology outlived it"


def test_secure_topology_with_tls_and_supernode_authentication(tmp_path):
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed: scripts/gen_certs.sh needs it for the CA and certificates")
    logs = tmp_path / "experiments"
    topology = LocalTopology(num_supernodes=2, secure=True, directory=tmp_path / "topology")
    with topology:
        command = topology.superlink_command()
        assert "--insecure" not in command and "--enable-supernode-auth" in command
        assert {"--ssl-ca-certfile", "--ssl-certfile", "--ssl-keyfile"} <= set(command)
        assert (topology.certs / "ca.crt").is_file() and "root-certificates" in topology.connection_toml()
        assert len(topology.online_nodes()) == 2  # both registered keys were accepted
        summary = _job(topology, logs, "secure", **TINY)
        # a SuperNode whose key was never registered is refused by the SuperLink
        _write_ssh_key(tmp_path / "rogue")
        rogue_port = local_topology.free_port(set(topology.state.supernode_ports) | {topology.state.superlink_port})
        rogue = topology._spawn(
            "rogue",
            [
                "flower-supernode",
                "--superlink",
                f"127.0.0.1:{topology.state.superlink_port}",
                "--root-certificates",
                str(topology.certs / "ca.crt"),
                "--auth-supernode-private-key",
                str(tmp_path / "rogue"),
                "--host",
                "127.0.0.1",
                "--port",
                str(rogue_port),
                "--max-retries",
                "1",
                "--node-config",
                "partition-id=0 num-partitions=2",
            ],
        )
        rogue_code = rogue.wait(timeout=300)
    _assert_all_stopped(topology)
    print(f"secure fedavg: final accuracy {summary['final']['accuracy']:.4f}; unregistered SuperNode exit {rogue_code}")
    assert "Uvicorn running on https://" in (topology.logs / "superlink.log").read_text()
    assert summary["rounds"] == 2 and summary["num_clients"] == 2 and summary["final"]["accuracy"] > 0.3
    assert rogue_code != 0 and "Failed to activate SuperNode" in (topology.logs / "rogue.log").read_text()


def _write_ssh_key(path: Path) -> None:
    """An ECDSA P-384 private key in OpenSSH format, as SuperNodes use for authentication."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    )


@pytest.fixture(scope="module")
def insecure(tmp_path_factory):
    """One insecure topology for the module: 3 SuperNodes, site i reads ``sites/site-<i>``."""
    root = tmp_path_factory.mktemp("deployment")
    sites = _write_sites(root / "sites")
    topology = LocalTopology(num_supernodes=NODES, directory=root / "topology", data_dir=str(sites / "site-{i}"))
    with topology:
        yield topology, root / "experiments"
    _assert_all_stopped(topology)


def test_insecure_topology_runs_a_neural_job(insecure):
    topology, logs = insecure
    assert "--insecure" in topology.superlink_command()
    command = topology.supernode_command(1)
    assert command[command.index("--node-config") + 1] == (
        f'partition-id=1 num-partitions={NODES} data-dir="{topology.data_dir.format(i=1)}"'
    )
    summary = _job(topology, logs, "fedavg", **TINY)
    print(f"insecure fedavg: final accuracy {summary['final']['accuracy']:.4f}")
    assert summary["method"] == "fedavg" and summary["rounds"] == 2 and summary["num_clients"] == NODES
    assert summary["final"]["accuracy"] > 0.3  # chance is 0.1
    assert summary["final"]["partition_ids"] == [0, 1, 2]
    assert summary["dropped_total"] == 0 and summary["rejected_total"] == 0
    assert (logs / "fedavg" / "checkpoint.npz").is_file()
    assert [r["round"] for r in _rounds(logs / "fedavg")] == [1, 2]
    traffic = summary["communication"]  # counted on the SuperLink's grid, per client
    assert set(traffic["clients"]) == {"0", "1", "2"}
    assert all(c["sent"] > 0 and c["received"] > 0 for c in traffic["clients"].values())
    assert traffic["sent_bytes"] > traffic["received_bytes"] > 0  # model out twice a round, back once


def test_insecure_topology_runs_a_kmeans_job_on_each_sites_data_dir(insecure):
    topology, logs = insecure
    summary = _job(topology, logs, "kmeans", **KMEANS)
    report = json.loads((logs / "kmeans" / "experiment_summary.json").read_text())
    print(f"insecure kmeans: ARI {summary['ari']:.4f}, inertia {summary['inertia']:.2f}")
    assert summary["method"] == "kmeans" and summary["rounds"] == 2 and summary["num_clients"] == NODES
    assert report["config"]["data_source"] == "generated" and report["config"]["partitions"] == "0-2"
    assert report["total_rounds"] == 2 and report["final_means_shape"] == [3, 2]
    assert summary["ari"] > 0.5 and summary["inertia"] > 0  # three well-separated true clusters
    assert summary["kmeans"]["num_samples"] == sum(SITE_ROWS)  # each site read its own folder (own row count)
    assert summary["kmeans"]["num_features"] == 2 and summary["kmeans"]["cluster_space"] == "normalized"


def _wait_for_line(path: Path, text: str, offset: int, timeout: float, process: subprocess.Popen) -> None:
    """Wait until ``text`` appears in ``path`` after byte ``offset``."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.is_file() and text.encode() in path.read_bytes()[offset:]:
            return
        assert process.poll() is None, f"flwr run ended early:\n{path.read_text()[-3000:]}"
        time.sleep(0.5)
    raise TimeoutError(f"'{text}' did not appear in {path} within {timeout} s")


def test_a_supernode_killed_mid_round_is_recorded_and_the_run_goes_on(insecure):
    """Runs last on the shared topology: it leaves one SuperNode dead."""
    topology, logs = insecure
    victim = NODES - 1
    victim_log = topology.logs / f"supernode-{victim}.log"
    offset = victim_log.stat().st_size
    run = topology.start_run({"log-dir": str(logs), "experiment-name": "kill", **TINY}, log_name="kill")
    try:
        # the victim has received its round-1 train message: kill it with its ClientApp
        _wait_for_line(victim_log, "Receiving: train message", offset, 600, run)
        topology.kill_supernode(victim)
        killed_at = time.time()
        assert run.wait(timeout=900) == 0, (topology.logs / "kill.log").read_text()[-3000:]
    finally:
        if run.poll() is None:
            run.kill()
    finished = time.time()

    summary = json.loads((logs / "kill" / "summary.json").read_text())
    first, second = _rounds(logs / "kill")
    print(
        f"kill test: round 1 sampled {first['num_sampled_train']} nodes, dropped {first['dropped']} "
        f"(partitions {first['dropped_partitions']}), trained on partitions {sorted(first['train']['clients'])}; "
        f"round 2 sampled {second['num_sampled_train']} nodes, dropped {second['dropped']}; "
        f"final accuracy {summary['final']['accuracy']:.4f} on partitions {summary['final']['partition_ids']}; "
        f"run finished {finished - killed_at:.0f} s after the kill"
    )
    # round 1 completed with the two replies that arrived; the dead node is recorded as dropped
    assert first["num_sampled_train"] == NODES and len(first["dropped"]) == 1
    assert sorted(first["train"]["clients"]) == ["0", "1"]
    # round 2 went on with the nodes present (2 >= min-train-nodes), without the dead one
    assert second["num_sampled_train"] == 2 and first["dropped"][0] not in parse_ranges(second["sampled_train"])
    assert second["dropped"] == [] and sorted(second["train"]["clients"]) == ["0", "1"]
    assert summary["rounds"] == 2 and summary["dropped_total"] == 1 and "stopped_early" not in summary
    assert summary["final"]["partition_ids"] == [0, 1] and summary["final"]["accuracy"] > 0.3
