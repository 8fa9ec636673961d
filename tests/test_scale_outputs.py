"""Issue 31: what a run leaves behind stays bounded as clients grow (folder, console, records)."""

from __future__ import annotations

import json
import logging

import pytest

from data_gen.generate_test_data import GeneratorOptions, generate, write
from fedvq_app.client_app import app as client_app
from fedvq_app.config import ConfigError
from fedvq_app.local_grid import run_local
from fedvq_app.protocol import KMEANS_STEP
from fedvq_app.registry import load_settings
from fedvq_app.server_app import app as server_app
from fedvq_app.tracking.idsets import count_and_named, describe, named, parse_ranges, ranges

CLIENTS = 300


# ---------------------------------------------------------------------------- id lists
def test_ranges_compress_runs_and_read_back():
    assert ranges([5, 0, 1, 2, 7, 8, 2]) == "0-2,5,7-8"
    assert ranges([]) == "" and ranges([4]) == "4" and ranges(range(10_000)) == "0-9999"
    ids = [0, 1, 2, 5, 7, 8, 100, 101]
    assert parse_ranges(ranges(ids)) == ids and parse_ranges("") == []


def test_describe_names_only_the_exceptions_and_at_most_ten():
    assert describe(range(10_000), range(10_000)) == "10,000 of 10,000 clients"
    present = set(range(10_000)) - {17, 4242}
    assert describe(present, range(10_000)) == "9,998 of 10,000 clients; missing: 17, 4242"
    assert describe([0, 1, 9], [0, 1]) == "3 of 2 clients; extra: 9"
    assert named(range(10)) == "0, 1, 2, 3, 4, 5, 6, 7, 8, 9"  # exactly the limit: all named
    assert named(range(11)) == "0, 1, 2, 3, 4, 5, 6, 7, 8, 9 ... and 1 more"
    assert count_and_named([4242, 17], "nodes") == "2 nodes: 17, 4242"
    assert len(describe([], range(1_000_000))) < 120


# ---------------------------------------------------------------------------- a 300-client run
@pytest.fixture(scope="module")
def data_300(tmp_path_factory):
    opts = GeneratorOptions(num_clients=CLIENTS, samples_per_client=12, num_features=2, num_clusters=2, random_state=1)
    return str(write(generate(opts), tmp_path_factory.mktemp("data300")))


def _kmeans(run_config, tmp_path, data, nodes, name, grid_kwargs=None, **overrides):
    config = run_config(
        method="kmeans",
        **{
            "log-dir": str(tmp_path / "logs"),
            "experiment-name": name,
            "kmeans.data-source": "generated",
            "kmeans.data-path": data,
            "kmeans.k": 2,
            "kmeans.n-init": 2,
            "kmeans.max-rounds": 3,
            "kmeans.tol": 1e-12,  # all three rounds run (round 2 is the one with a missing reply)
            "tracking.tensorboard": False,
            **overrides,
        },
    )
    run_local(server_app, client_app, nodes, config, **(grid_kwargs or {}))
    return tmp_path / "logs" / name


def test_300_clients_leave_a_bounded_folder_short_lines_and_summarised_client_lists(
    run_config, tmp_path, data_300, caplog
):
    def drop_partition_17_in_round_2(node, reply):
        meta = reply.metadata
        if node == 18 and meta.message_type == KMEANS_STEP and meta.group_id == "2":
            return None  # its round-2 reply never arrives
        return reply

    with caplog.at_level(logging.INFO, logger="flwr"):
        folder = _kmeans(run_config, tmp_path, data_300, CLIENTS, "big", {"tamper": drop_partition_17_in_round_2})

    # bounded folder: no file or folder per client, a few hundred kB at most
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert not (folder / "local_means").exists() and not (folder / "client_logs").exists()
    assert len(files) <= 25, sorted(p.name for p in files)
    assert sum(p.stat().st_size for p in files) < 400_000

    # readable console: every line short; one line says why per-client output is off and which key turns it on
    lines = [r.getMessage() for r in caplog.records]
    assert max(map(len, lines)) <= 300, max(lines, key=len)[:400]
    said = [line for line in lines if "tracking.per-client-limit=100" in line]
    assert len(said) == 1 and "300 clients" in said[0]
    rounds_said = [line for line in lines if line.startswith("[kmeans] round ")]
    assert "300 of 300 clients" in rounds_said[0]
    assert rounds_said[1].endswith("299 of 300 clients; missing: 17")
    assert any("no reply from 1 nodes: 18" in line for line in lines)

    # rounds.jsonl: id ranges and counts instead of per-client blocks
    rounds = [json.loads(x) for x in (folder / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert rounds[0]["sampled_train"] == "1-300" and rounds[0]["num_sampled_train"] == CLIENTS
    assert rounds[0]["train"]["clients"] == {} and rounds[0]["train"]["num_clients"] == CLIENTS
    assert rounds[0]["train"]["partitions"] == "0-299"
    assert rounds[1]["train"]["partitions"] == "0-16,18-299" and rounds[1]["dropped"] == [18]
    assert rounds[1]["strategy"]["participating_partitions"] == "0-16,18-299"
    assert "clients" not in rounds[0]["communication"] and rounds[0]["communication"]["num_clients"] == CLIENTS
    assert max(len(x) for x in (folder / "rounds.jsonl").read_text().splitlines()) < 3000

    # summary.json: the same, and small
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["num_clients"] == CLIENTS and summary["rounds"] == 3
    history = summary["kmeans"]["convergence_history"]
    assert [h["participating_clients"] for h in history] == ["0-299", "0-16,18-299", "0-299"]
    assert [h["num_participating_clients"] for h in history] == [300, 299, 300]
    assert (
        summary["communication"]["clients"] == {} and summary["communication"]["rounds_without_per_client_blocks"] == 3
    )
    assert (folder / "summary.json").stat().st_size < 20_000
    experiment = json.loads((folder / "experiment_summary.json").read_text())
    assert experiment["config"]["partitions"] == "0-299"


@pytest.mark.parametrize("limit,written", [(4, True), (3, False), (0, True)])
def test_client_logs_are_written_up_to_the_limit_inclusive(run_config, tmp_path, data_300, limit, written):
    folder = _kmeans(run_config, tmp_path, data_300, 4, f"limit{limit}", **{"tracking.per-client-limit": limit})
    assert (folder / "local_means" / "round_001_clients.jsonl").is_file() is written
    assert (folder / "client_logs" / "clients.log").is_file() is written
    first = json.loads((folder / "rounds.jsonl").read_text().splitlines()[0])
    assert sorted(first["train"]["clients"]) == (["0", "1", "2", "3"] if written else [])
    assert ("clients" in first["communication"]) is written
    if written:
        lines = (folder / "local_means" / "round_001_clients.jsonl").read_text().splitlines()
        assert sorted(json.loads(x)["client_id"] for x in lines) == [0, 1, 2, 3]


def test_the_server_writes_a_sites_statistics_only_when_the_debug_key_asks(run_config, tmp_path, data_300):
    import numpy as np

    quiet = _kmeans(run_config, tmp_path, data_300, 3, "quiet", **{"kmeans.client-logs": False})
    assert not (quiet / "local_means").exists()
    debug = _kmeans(
        run_config,
        tmp_path,
        data_300,
        3,
        "debug",
        **{"kmeans.client-logs": False, "kmeans.debug-server-local-means": True},
    )
    with np.load(debug / "local_means" / "round_001_server.npz") as npz:
        assert npz["client_ids"].tolist() == [0, 1, 2]
        assert npz["local_means"].shape == (3, 2, 2) and npz["sample_counts"].shape == (3, 2)
        # exactly what the server summed into round 1's kept run (rows under the privacy threshold withheld)
        meta = json.loads((debug / "global_means" / "round_001_metadata.json").read_text())
        assert npz["sample_counts"].sum(axis=0).tolist() == meta["cluster_counts"]
        assert npz["sample_counts"].sum() <= 3 * 12


def test_the_debug_key_is_refused_with_secure_aggregation(run_config):
    config = run_config(
        method="kmeans",
        **{"kmeans.debug-server-local-means": True, "kmeans.init": "random", "secagg.mode": "secaggplus"},
    )
    with pytest.raises(ConfigError, match="kmeans.debug-server-local-means.*secagg.mode='secaggplus'"):
        load_settings(config)
    load_settings({**config, "secagg.mode": "off"})  # no secure aggregation: allowed
