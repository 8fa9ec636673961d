"""CFL through the real ServerApp/ClientApp on the in-process grid, and its conf files."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from fedvq_app.client_app import app as client_app
from fedvq_app.config import ConfigError
from fedvq_app.local_grid import full_run_config, run_local
from fedvq_app.registry import load_settings
from fedvq_app.server.cfl_workflow import RESULTS_FILE
from fedvq_app.server_app import app as server_app

ROOT = Path(__file__).resolve().parent.parent


def test_cfl_run_splits_logs_and_cross_evaluates(tmp_path):
    config = full_run_config(
        method="cfl",
        **{
            "num-server-rounds": 2,
            "log-dir": str(tmp_path),
            "experiment-name": "cfl",
            "train.local-epochs": 1,
            "dataset.size": 12,  # small images keep the test fast; the protocol is the same
            "partition.alpha": 1.0,
            "shift.rotate-fraction": 0.5,
            # force a split in round 2: any mean norm is "converged", any max norm "pulls away"
            "cfl.eps1": 1e6,
            "cfl.eps2": 0.0,
            "cfl.max-cross-similarity": 1.0,  # no check of the halves' directions either
            "cfl.warmup-rounds": 2,
            "cfl.min-cluster-size": 1,
        },
    )
    run_local(server_app, client_app, 4, config)
    folder = tmp_path / "cfl"
    summary = json.loads((folder / "summary.json").read_text())
    cfl = summary["cfl"]
    assert cfl["split_rounds"] == [2]
    assert sorted(p for c in cfl["clusters"] for p in c) == [0, 1, 2, 3]
    assert len(cfl["clusters"]) == 2
    assert 0.5 <= cfl["cluster_purity"] <= 1.0
    assert cfl["rotation_groups"] == {"0": 0, "1": 0, "2": 1, "3": 1}
    rounds = [json.loads(line) for line in (folder / "rounds.jsonl").read_text().splitlines()]
    assert [r["strategy"]["split"] for r in rounds] == [False, True]
    first = rounds[0]["strategy"]["cluster_stats"]["0"]
    assert first["mean_norm"] > 0 and first["max_norm"] >= first["mean_norm"]
    assert len(first["similarity"]) == 4 and "warm-up" in first["reason"]
    # the seed's results table: pre-split FL model + every final cluster model, on every client
    table = json.loads((folder / RESULTS_FILE).read_text())
    labels = [row["label"] for row in table["models"]]
    assert labels[0] == "FL model (before split)" and len(labels) == 3
    assert table["clients"] == [0, 1, 2, 3]
    for row in table["models"][1:]:
        for pid, value, full in zip(table["clients"], row["val-accuracy"], row["val-accuracy-all"], strict=True):
            assert value == (full if pid in row["members"] else 0.0)
            assert full is not None and 0.0 <= full <= 1.0
    assert summary["cfl"]["results_table"] == table
    # per round the tracker saw each client evaluated on its own cluster's model
    assert set(rounds[-1]["evaluate"]["clients"]) == {"0", "1", "2", "3"}
    for name in ("cfl_training.png", "cfl_results_table.png", "cfl_similarity_round2_cluster0.png"):
        assert (folder / name).stat().st_size > 1000


CONF_FILES = sorted(ROOT.glob("conf/cfl_*.toml")) + [ROOT / "conf" / "fedavg_digits_rotated.toml"]


@pytest.mark.parametrize("path", CONF_FILES, ids=lambda p: p.name)
def test_conf_files_are_valid_run_configs(path):
    overrides = tomllib.loads(path.read_text())
    settings = load_settings(full_run_config(**overrides))
    assert settings.partition.alpha == 1.0
    assert settings.dataset.name == "digits"


def test_rotated_scenario_files_match_each_other():
    cfl = tomllib.loads((ROOT / "conf" / "cfl_digits_rotated.toml").read_text())
    fedavg = tomllib.loads((ROOT / "conf" / "fedavg_digits_rotated.toml").read_text())
    shared = {k: v for k, v in cfl.items() if not k.startswith("cfl.") and k != "method"}
    assert shared == {k: v for k, v in fedavg.items() if k != "method"}
    assert shared["shift.rotate-fraction"] == 0.5 and shared["shift.rotate-degrees"] == 180


def test_bad_cfl_option_is_a_config_error():
    with pytest.raises(ConfigError, match="cfl.weighting"):
        load_settings(full_run_config(method="cfl", **{"cfl.weighting": "median"}))
