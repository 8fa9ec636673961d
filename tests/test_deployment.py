"""Real deployment on 127.0.0.1: flower-superlink + flower-supernode processes, ``flwr run . <connection>``.

Three lean jobs (digits / wine, tiny settings), each against its own topology from
scripts/local_topology.py with free ports and a private FLWR_HOME, always torn down:

* insecure: a neural method (FedAvg) and federated k-means, 2 rounds each;
* secure: TLS + SuperNode authentication (and an unregistered key is refused);
* faults: a SuperNode killed (SIGKILL) mid-round; the round completes without it,
  the dropout is recorded and the next round goes on with the nodes present.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedvq_app.registry import method_names

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("local_topology", ROOT / "scripts" / "local_topology.py")
local_topology = sys.modules.setdefault("local_topology", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(local_topology)
LocalTopology = local_topology.LocalTopology

pytestmark = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("flwr", "flower-superlink", "flower-supernode")),
    reason="Flower's deployment CLIs are not installed",
)

TINY = {"num-server-rounds": 2, "train.local-epochs": 1, "eval-every": 2, "partition.kind": "iid",
        "round-timeout": 300.0}
#: the k-means job: two Lloyd rounds, one k-means++ start, on the wine table
KMEANS = {"method": "kmeans", "kmeans.max-rounds": 2, "kmeans.n-init": 1, "kmeans.client-logs": False}


def _job(topology: LocalTopology, logs: Path, name: str, timeout: float = 600, **config) -> dict:
    code = topology.run({"log-dir": str(logs), "experiment-name": name, **config}, timeout=timeout, log_name=name)
    summary_file = logs / name / "summary.json"
    output = (topology.logs / f"{name}.log").read_text()[-4000:]
    assert summary_file.is_file(), f"flwr run exited {code}; no summary.json\n{output}"
    return json.loads(summary_file.read_text())


def _rounds(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "rounds.jsonl").read_text().splitlines()]


def _assert_all_stopped(topology: LocalTopology) -> None:
    deadline = time.time() + 15
    while time.time() < deadline and local_topology.marked_pids(topology.state.marker):
        time.sleep(0.5)
    assert local_topology.marked_pids(topology.state.marker) == []


def test_insecure_topology_runs_a_neural_and_a_kmeans_job(tmp_path):
    logs = tmp_path / "experiments"
    topology = LocalTopology(num_supernodes=2, directory=tmp_path / "topology")
    with topology:
        neural = _job(topology, logs, "fedavg", **TINY)
        assert "kmeans" in method_names(), "the k-means method is registered"
        kmeans = _job(topology, logs, "kmeans", **KMEANS)
    _assert_all_stopped(topology)

    assert neural["method"] == "fedavg" and neural["rounds"] == 2 and neural["num_clients"] == 2
    assert neural["final"]["accuracy"] > 0.3  # chance is 0.1
    assert neural["dropped_total"] == 0 and neural["rejected_total"] == 0
    assert (logs / "fedavg" / "checkpoint.npz").is_file()
    assert kmeans["method"] == "kmeans" and kmeans["rounds"] == 2 and kmeans["num_clients"] == 2
    assert kmeans["ari"] > 0.5 and kmeans["inertia"] > 0  # wine has 3 well-separated classes


def test_secure_topology_with_tls_and_supernode_authentication(tmp_path):
    logs = tmp_path / "experiments"
    topology = LocalTopology(num_supernodes=2, secure=True, directory=tmp_path / "topology")
    with topology:
        assert "--enable-supernode-auth" in topology.superlink_command()
        assert (topology.certs / "ca.crt").is_file() and "root-certificates" in topology.connection_toml()
        summary = _job(topology, logs, "secure", **TINY)
        # a SuperNode whose key was never registered is refused by the SuperLink
        _write_ssh_key(tmp_path / "rogue")
        rogue_port = local_topology.free_port(set(topology.state.supernode_ports) | {topology.state.superlink_port})
        rogue = topology._spawn("rogue", [
            "flower-supernode", "--superlink", f"127.0.0.1:{topology.state.superlink_port}",
            "--root-certificates", str(topology.certs / "ca.crt"),
            "--auth-supernode-private-key", str(tmp_path / "rogue"), "--port", str(rogue_port),
            "--max-retries", "1", "--node-config", "partition-id=0 num-partitions=2",
        ])
        rogue_code = rogue.wait(timeout=180)
    _assert_all_stopped(topology)
    assert "https://" in (topology.logs / "superlink.log").read_text()
    assert summary["rounds"] == 2 and summary["num_clients"] == 2 and summary["final"]["accuracy"] > 0.3
    assert rogue_code != 0 and "Failed to activate SuperNode" in (topology.logs / "rogue.log").read_text()


def _write_ssh_key(path: Path) -> None:
    """An ECDSA P-384 private key in OpenSSH format, as SuperNodes use for authentication."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                       serialization.NoEncryption()))


def _wait_for_line(path: Path, text: str, timeout: float, process: subprocess.Popen) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.is_file() and text in path.read_text(errors="replace"):
            return
        assert process.poll() is None, f"flwr run ended early:\n{path.read_text()[-3000:]}"
        time.sleep(0.5)
    raise TimeoutError(f"'{text}' did not appear in {path} within {timeout} s")


def test_a_supernode_killed_mid_round_is_recorded_and_the_run_goes_on(tmp_path):
    logs, victim = tmp_path / "experiments", 2
    topology = LocalTopology(num_supernodes=3, directory=tmp_path / "topology")
    with topology:
        run = topology.start_run({"log-dir": str(logs), "experiment-name": "kill", **TINY}, log_name="kill")
        # the victim has received its round-1 train message: kill it with its ClientApp
        _wait_for_line(topology.logs / f"supernode-{victim}.log", "Receiving: train message", 300, run)
        topology.kill_supernode(victim)
        killed_at = time.time()
        assert run.wait(timeout=600) == 0
        finished = time.time()
    _assert_all_stopped(topology)

    summary = json.loads((logs / "kill" / "summary.json").read_text())
    first, second = _rounds(logs / "kill")
    print(f"kill test: round 1 dropped {first['dropped']}, round 2 sampled {len(second['sampled_train'])} nodes, "
          f"final accuracy {summary['final']['accuracy']:.4f} on partitions {summary['final']['partition_ids']}, "
          f"{finished - killed_at:.0f} s after the kill")
    # round 1 completed with the two replies that arrived; the dead node is recorded as dropped
    assert len(first["sampled_train"]) == 3 and len(first["dropped"]) == 1
    assert sorted(first["train"]["clients"]) == ["0", "1"]
    # round 2 went on with the nodes present (2 >= min-available-nodes), without the dead one
    assert len(second["sampled_train"]) == 2 and first["dropped"][0] not in second["sampled_train"]
    assert second["dropped"] == [] and sorted(second["train"]["clients"]) == ["0", "1"]
    assert summary["rounds"] == 2 and summary["dropped_total"] == 1 and "stopped_early" not in summary
    assert summary["final"]["partition_ids"] == [0, 1] and summary["final"]["accuracy"] > 0.3
