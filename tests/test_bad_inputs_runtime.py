"""A representative dozen of tests/test_bad_inputs.py's hostile inputs through Flower's real runtimes.

* simulation: real ``flwr run . --stream`` (fedvq_app.simulation.flwr_run: private
  FLWR_HOME and free ports), one local SuperLink shared by the runs;
* deployment: one flower-superlink and two flower-supernode processes
  (scripts/local_topology.py, as tests/test_deployment.py uses it), shared by the runs.

Each asserts what the user sees: the one line in ``flwr run``'s own output, no
traceback there (nor, for client-side errors, in the SuperNodes' logs), the run's
status ``finished:failed`` in ``flwr ls`` with the line as its details (``flwr run``
itself exits 0 for a run that started), and no experiment folder but the new run's
touched. Every run start costs seconds (Ray in simulation; a Python process
importing torch per ServerApp and per ClientApp message in a deployment), so the
cases are few and fail early.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fedvq_app.client_app import app as client_app
from fedvq_app.config import ConfigError
from fedvq_app.local_grid import full_run_config, run_local
from fedvq_app.server_app import app as server_app
from fedvq_app.simulation import flwr_run, private_superlink_env, run_id_of, run_status, stop_daemons
from tests.test_bad_inputs import BASE as LOCAL_BASE
from tests.test_bad_inputs import _tree

#: every ClientApp message of a deployment is a new process importing torch: seconds each, more on a busy machine
BASE = {**LOCAL_BASE, "round-timeout": 300.0}

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("local_topology", ROOT / "scripts" / "local_topology.py")
local_topology = sys.modules.setdefault("local_topology", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(local_topology)

pytestmark = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("flwr", "flower-superlink", "flower-supernode")),
    reason="Flower's CLIs (flwr, flower-superlink, flower-supernode) are not installed",
)


def _old_experiment(logs: Path) -> Path:
    """A finished experiment that must stay untouched by every bad run."""
    run_local(server_app, client_app, 2, full_run_config(**{**BASE, "log-dir": str(logs), "experiment-name": "old"}))
    return logs / "old"


def _assert_one_line_failure(output: str, status: str | None, details: str, *expected: str) -> None:
    assert "Traceback" not in output, output[-3000:]
    assert status == "finished:failed", f"status {status}\n{output[-3000:]}"
    lines = [line for line in output.splitlines() if "[fedvq] run failed:" in line]
    assert len(lines) == 1, output[-3000:]
    for text in expected:
        assert text in lines[0], lines[0]
        assert text in details, details


def _details(env: dict, run_id: int) -> str:
    done = subprocess.run(
        ["flwr", "ls", "--run-id", str(run_id), "--format", "json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return json.loads(done.stdout)["runs"][0]["status-details"]


# ---------------------------------------------------------------------------- simulation
def test_bad_inputs_through_flwr_run_simulation(tmp_path):
    logs = tmp_path / "logs"
    old = _old_experiment(logs)
    witness = _tree(old)
    home = tmp_path / "flwr_home"
    env = private_superlink_env(home)
    full_env = {**os.environ, **env}
    started = time.time()

    def run(config: dict):
        result = flwr_run({"log-dir": str(logs), **config}, home, timeout=600, keep_daemons=True, superlink_env=env)
        assert result.returncode == 0, result.output[-3000:]  # flwr run exits 0 for a run that started and failed
        return result

    try:
        # an unknown key is named before anything starts (Flower would only say "Invalid run configuration")
        with pytest.raises(ConfigError, match="unknown config key 'num-server-round'; did you mean 'num-server-r"):
            flwr_run({"num-server-round": 3}, home, superlink_env=env, keep_daemons=True)
        # server-side config error
        bad = run({**BASE, "num-server-rounds": 0})
        _assert_one_line_failure(
            bad.output, bad.status, _details(full_env, bad.run_id), "'num-server-rounds' has invalid value 0"
        )
        # what only the clients know: every node's ConfigError -> stopped in round 1, no client traceback
        missing = run(
            {
                **BASE,
                "dataset.name": "pathmnist",
                "dataset.size": 28,
                "experiment-name": "medmnist",
                "dataset.data-dir": str(tmp_path / "empty"),
            }
        )
        _assert_one_line_failure(
            missing.output,
            missing.status,
            _details(full_env, missing.run_id),
            "configuration error on every node",
            "pathmnist.npz",
            "does not exist",
        )
        assert json.loads((logs / "medmnist" / "summary.json").read_text())["status"] == "failed"
    finally:
        stop_daemons(home)
    print(f"simulation: 2 bad runs + 1 refused submission in {time.time() - started:.0f} s")
    assert _tree(old) == witness
    assert sorted(p.name for p in logs.iterdir()) == ["medmnist", "old"]


# ---------------------------------------------------------------------------- deployment
class _Topology(local_topology.LocalTopology):
    def job(self, config: dict, name: str) -> tuple[str, str | None, str]:
        """Submit a run, wait; (its flwr run output, its status, its status details)."""
        code = self.run(config, timeout=600, log_name=name)
        output = (self.logs / f"{name}.log").read_text()
        assert code == 0, output[-3000:]
        run_id = run_id_of(output)
        status = run_status(self.env, run_id)
        return output, status, _details(self.env, run_id)

    def supernode_logs(self) -> str:
        return "".join((self.logs / f"supernode-{i}.log").read_text() for i in range(self.num_supernodes))


def test_bad_inputs_through_a_real_superlink_and_supernodes(tmp_path):
    logs = tmp_path / "logs"
    old = _old_experiment(logs)
    witness = _tree(old)
    npz = tmp_path / "float.npz"
    np.savez(npz, train_images=np.random.default_rng(0).random((40, 8, 8)), train_labels=np.arange(40) % 4)
    (tmp_path / "a-file").write_text("x")
    started = time.time()
    topology = _Topology(num_supernodes=2, directory=tmp_path / "topology")
    cases = [
        ("method", {"method": "fedvg"}, ("'method' has invalid value 'fedvg'",)),
        ("log-dir", {"log-dir": str(tmp_path / "a-file")}, ("'log-dir' has invalid value", "is a file")),
        ("reused-name", {"experiment-name": "old"}, ("'experiment-name' has invalid value 'old'", "exists already")),
        (
            "resume",
            {"resume-from": str(old), "partition.alpha": 5.0},
            ("'resume-from' has invalid value", "partition.alpha: 0.5 -> 5.0"),
        ),
        (
            "float-images",
            {"dataset.name": "npz", "dataset.npz-file": str(npz), "experiment-name": "float"},
            ("float.npz", "looks scaled to [0, 1]"),
        ),
        (
            "classes",
            {"partition.kind": "pathological", "partition.classes-per-client": 11, "experiment-name": "classes"},
            ("'partition.classes-per-client' has invalid value 11",),
        ),
        (
            "kmeans-wait",
            {"method": "kmeans", "min-available-nodes": 5, "round-timeout": 2.0, "experiment-name": "kwait"},
            ("k-means cannot start", "min-available-nodes=5"),
        ),
        (
            "medmnist",
            {
                "dataset.name": "pathmnist",
                "dataset.size": 28,
                "dataset.data-dir": str(tmp_path / "none"),
                "experiment-name": "medmnist",
            },
            ("configuration error on every node", "pathmnist.npz", "does not exist"),
        ),
    ]
    seen = {}
    with topology:
        for name, config, expected in cases:
            output, status, details = topology.job({**BASE, "log-dir": str(logs), **config}, name)
            _assert_one_line_failure(output, status, details, *expected)
            seen[name] = time.time() - started
        assert "Traceback" not in topology.supernode_logs()
        assert "[fedvq] configuration error on node" in topology.supernode_logs()  # one line per node instead
        # a SuperNode started with partition-id=-1 joins: its replies are rejected with the line, the run goes on
        rogue_port = local_topology.free_port(set(topology.state.supernode_ports) | {topology.state.superlink_port})
        topology._spawn(
            "rogue",
            [
                "flower-supernode",
                "--superlink",
                f"127.0.0.1:{topology.state.superlink_port}",
                "--insecure",
                "--host",
                "127.0.0.1",
                "--port",
                str(rogue_port),
                "--node-config",
                "partition-id=-1 num-partitions=2",
            ],
        )
        topology.wait_for_nodes(3, timeout=180)
        code = topology.run(
            {**BASE, "log-dir": str(logs), "experiment-name": "rogue", "min-train-nodes": 3, "min-available-nodes": 3},
            timeout=600,
            log_name="rogue-run",
        )
        output = (topology.logs / "rogue-run.log").read_text()
        rogue_log = (topology.logs / "rogue.log").read_text()
    print(
        f"deployment: {len(cases)} failed runs + 1 run with a misconfigured SuperNode in "
        f"{time.time() - started:.0f} s (after each: {', '.join(f'{k} {v:.0f} s' for k, v in seen.items())})"
    )
    assert code == 0 and "Traceback" not in output and "Traceback" not in rogue_log, output[-3000:]
    line = "node-config key 'partition-id' has invalid value -1: expected an int >= 0 and < num-partitions=2"
    assert line in output and line in rogue_log
    summary = json.loads((logs / "rogue" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rejected_total"] == 2  # its train and evaluate replies
    assert summary["rejected_evaluate_total"] == 1
    assert summary["num_clients"] == 2 and summary["final"]["partition_ids"] == [0, 1]
    assert _tree(old) == witness
    assert sorted(p.name for p in logs.iterdir()) == ["classes", "float", "kwait", "medmnist", "old", "rogue"]
