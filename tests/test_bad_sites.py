"""Bad site configuration ends clearly (issue 26, item 4), in-process (``run_local``).

* a k-means site whose data file is missing: the run completes on the other sites, and
  summary.json ``warnings`` / ``excluded_sites`` and the final log line name the site and why
  (the node-config cases -- partition-id negative, out of range, missing on one node -- are rows
  of tests/test_bad_inputs.py, which checks the same three places);
* 500 clients holding 1-3 samples each: the ``tiny-clients`` warning fires;
* client-level DP whose noise swamps the updates (5 clients, noise multiplier 1): the run stops
  in the round its global model diverges, with one line naming the noise std against the
  clipping norm and the number of clients, instead of training on.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Error, Message, MetricRecord, RecordDict

from data_gen.generate_test_data import GeneratorOptions, generate, write
from fedvq_app.client_app import app as client_app
from fedvq_app.errors import RunFailed
from fedvq_app.local_grid import full_run_config, run_local
from fedvq_app.server.failures import check_client_sizes, divergence
from fedvq_app.server_app import app as server_app

KMEANS = {
    "method": "kmeans",
    "kmeans.data-source": "generated",
    "kmeans.max-rounds": 2,
    "kmeans.n-init": 1,
    "kmeans.client-logs": False,
    "kmeans.silhouette-sample": 0,
    "round-timeout": 5.0,
}


def test_a_kmeans_site_whose_data_file_is_missing_is_excluded_and_named(tmp_path, caplog):
    write(generate(GeneratorOptions(num_clients=3, samples_per_client=20, num_features=2, random_state=3)), tmp_path)
    (tmp_path / "client_2.npz").unlink()  # site 2's file is gone
    config = full_run_config(
        **KMEANS, **{"kmeans.data-path": str(tmp_path), "log-dir": str(tmp_path / "logs"), "experiment-name": "run"}
    )
    with caplog.at_level(logging.INFO, logger="flwr"):
        run_local(server_app, client_app, 3, config)
    summary = json.loads((tmp_path / "logs" / "run" / "summary.json").read_text())
    line = f"generated data file {tmp_path / 'client_2.npz'} not found"
    print(f"k-means site without its file: summary warnings {summary['warnings']}")
    assert summary["status"] == "completed" and summary["num_clients"] == 2
    assert summary["kmeans"]["num_samples"] == 40  # the two sites that have their files
    ((node, reason),) = [(e["node"], e["reason"]) for e in summary["excluded_sites"]]
    assert reason.startswith(line)
    (warning,) = [w["message"] for w in summary["warnings"] if w["name"] == "site-excluded"]
    assert warning.startswith(f"node {node} is left out of the run: {line}")
    final = [r.getMessage() for r in caplog.records if r.getMessage().startswith("[fedvq] finished")]
    assert final and final[-1].startswith(f"[fedvq] finished on 2 of 3 sites; 1 site excluded (node {node}: {line}")
    assert "Traceback" not in caplog.text


def _train_reply(node: int, num_examples: int) -> Message:
    instruction = Message(RecordDict({}), dst_node_id=node, message_type="train")
    reply = Message(RecordDict({"metrics": MetricRecord({"num-examples": num_examples})}), reply_to=instruction)
    reply.metadata.__dict__["_src_node_id"] = node
    return reply


def test_tiny_clients_warning_fires_at_500_clients_of_1_to_3_samples(caplog):
    class Tracker:
        warnings: list = []

    sizes = np.random.default_rng(0).integers(1, 4, size=500)  # 1-3 samples each
    with caplog.at_level(logging.WARNING, logger="flwr"):
        check_client_sizes([_train_reply(n + 1, int(s)) for n, s in enumerate(sizes)], Tracker)
    (warning,) = Tracker.warnings
    assert warning["name"] == "tiny-clients"
    assert warning["message"].startswith("500 of 500 clients train on fewer than 10 samples (smallest 1)")
    assert "[fedvq] warning tiny-clients: 500 of 500 clients" in caplog.text


def test_client_level_dp_noise_that_swamps_the_updates_stops_the_run_with_its_cause(tmp_path):
    # the case seen on a real deployment: 5 clients, noise multiplier 1, losses up to 1e27, most clients NaN
    config = full_run_config(
        **{
            "num-server-rounds": 30,
            "eval-every": 30,
            "train.local-epochs": 1,
            "partition.kind": "iid",
            "dataset.size": 8,
            "privacy.mode": "client-fixed",
            "privacy.noise-multiplier": 1.0,
            "privacy.clipping-norm": 1.0,
            "log-dir": str(tmp_path),
            "experiment-name": "dp",
        }
    )
    with pytest.raises(RunFailed) as failed:
        run_local(server_app, client_app, 5, config)
    line = str(failed.value)
    summary = json.loads((tmp_path / "dp" / "summary.json").read_text())
    rounds = [json.loads(x) for x in (tmp_path / "dp" / "rounds.jsonl").read_text().splitlines()]
    print(f"DP divergence after {len(rounds)} rounds: {line}")
    assert "\n" not in line and summary["status"] == "failed" and summary["error"] == line
    assert line.startswith(f"round {len(rounds) + 1}: the global model diverged to NaN/inf (")
    assert "std 0.2 = privacy.noise-multiplier 1 x privacy.clipping-norm 1 / 5 clients" in line
    assert "use many more clients per round" in line
    assert len(rounds) < 30  # stopped, instead of training on to the last round
    losses = [r["train"]["aggregated"]["train-loss"] for r in rounds]
    assert losses[-1] > 1e3 * losses[0]  # it was diverging before it stopped


def test_divergence_names_the_learning_rate_without_privacy_and_ignores_a_healthy_round(run_config):
    from fedvq_app.registry import load_settings

    class Tracker:
        rounds = [{"train": {"aggregated": {"train-loss": 2.3}}}]
        settings = load_settings(run_config(**{"train.lr": 5.0}))

    finite = ArrayRecord({"w": Array(np.ones(3, dtype=np.float32))})
    broken = ArrayRecord({"w": Array(np.array([1.0, np.nan, 0.0], dtype=np.float32))})
    healthy = [_train_reply(1, 10), _train_reply(2, 10)]
    assert divergence(2, finite, healthy, [], {"train-loss": 2.1}, object(), Tracker) is None
    line = divergence(2, broken, healthy, [], {"train-loss": 2.1}, object(), Tracker)
    assert line.startswith("round 2: the global model diverged to NaN/inf (1 aggregated arrays hold NaN/inf (e.g. 'w')")
    assert line.endswith("likely cause: train.lr=5 is too large for this model and data: lower it")
    # two of three clients fail with a non-finite loss: the model they start from is garbage
    nan = Message(Error(code=0, reason="FloatingPointError: training loss became nan at step 1"), reply_to=healthy[0])
    nan.metadata.__dict__["_src_node_id"] = 3
    rejected = [(2, "client error: FloatingPointError: training loss became inf at step 3")]
    line = divergence(4, finite, [healthy[0], healthy[1], nan], rejected, {}, object(), Tracker)
    assert line.startswith(
        "round 4: the global model diverged to NaN/inf (2 of 3 clients' training from it gave NaN/inf"
    )
