"""The Quickstart path for real: ``flwr run .`` in simulation, then stop its daemons."""

from __future__ import annotations

import json
import shutil

import pytest

from fedvq_app.simulation import daemons_of, flwr_run


@pytest.mark.skipif(shutil.which("flwr") is None, reason="flwr CLI not installed")
def test_flwr_run_simulation_writes_summary(tmp_path):
    flwr_home, logs = tmp_path / "flwr_home", tmp_path / "logs"
    config = {"num-server-rounds": 2, "train.local-epochs": 1, "log-dir": str(logs), "experiment-name": "e2e"}
    run = flwr_run(config, flwr_home, federation_config="num-supernodes=3 client-resources-num-cpus=1", timeout=420)
    summary_file = logs / "e2e" / "summary.json"
    assert summary_file.is_file(), run.output[-4000:]
    summary = json.loads(summary_file.read_text())
    assert summary["num_clients"] == 3 and summary["rounds"] == 2
    assert summary["final"]["accuracy"] > 0.2  # chance is 0.1
    assert (logs / "e2e" / "accuracy.png").is_file()
    traffic = summary["communication"]  # counted on Flower's own grid, per client
    assert set(traffic["clients"]) == {"0", "1", "2"}
    assert all(c["sent"] > 0 and c["received"] > 0 for c in traffic["clients"].values())
    assert list((logs / "e2e").glob("events.out.tfevents.*"))
    assert daemons_of(flwr_home) == []
