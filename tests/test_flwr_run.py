"""The Quickstart path for real: ``flwr run .`` in simulation, then stop its daemons."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _daemons_of(flwr_home: Path) -> list[int]:
    """PIDs of flower-superlink/superexec processes started with this FLWR_HOME."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            env = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if ("flower-superlink" in cmd or "flower-superexec" in cmd) and f"FLWR_HOME={flwr_home}".encode() in env:
            pids.append(int(proc.name))
    return pids


@pytest.mark.skipif(shutil.which("flwr") is None, reason="flwr CLI not installed")
def test_flwr_run_simulation_writes_summary(tmp_path):
    flwr_home, logs = tmp_path / "flwr_home", tmp_path / "logs"
    env = {**os.environ, "FLWR_HOME": str(flwr_home), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    run_config = f"num-server-rounds=2 train.local-epochs=1 log-dir='{logs}' experiment-name='e2e'"
    try:
        done = subprocess.run(
            ["flwr", "run", ".", "--stream", "--federation-config", "num-supernodes=3", "--run-config", run_config],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=420,
        )
        summary_file = logs / "e2e" / "summary.json"
        assert summary_file.is_file(), done.stdout[-3000:] + done.stderr[-3000:]
    finally:
        for pid in _daemons_of(flwr_home):
            os.kill(pid, signal.SIGTERM)
        time.sleep(1)
        for pid in _daemons_of(flwr_home):
            os.kill(pid, signal.SIGKILL)
    summary = json.loads(summary_file.read_text())
    assert summary["num_clients"] == 3 and summary["rounds"] == 2
    assert summary["final"]["accuracy"] > 0.2  # chance is 0.1
    assert (logs / "e2e" / "accuracy.png").is_file()
    assert _daemons_of(flwr_home) == []
