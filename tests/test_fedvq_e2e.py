"""FedVQ end to end on the in-process grid: real ServerApp/ClientApp, outputs, a poisoned reply."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import pytest

from fedvq_app.client_app import app as client_app
from fedvq_app.local_grid import full_run_config, run_local
from fedvq_app.models.vq import CODEBOOK_KEY
from fedvq_app.registry import load_settings
from fedvq_app.server_app import app as server_app

ROOT = Path(__file__).resolve().parent.parent
SMALL = {
    "method": "fedvq",
    "dataset.size": 12,
    "train.local-epochs": 1,
    "train.optimizer": "adam",
    "train.lr": 0.003,
    "codebook.num-embeddings": 16,
    "codebook.embedding-dim": 8,
    "fedvq.quantizer": "gumbel",
    "fedvq.encoder": "private",
    "fedvq.heads": 1,
}


def _poison_node_3_in_round_2():
    """Node 3's second train reply carries a NaN codebook."""
    seen = {"train": 0}

    def tamper(node, reply):
        if node == 3 and reply.metadata.message_type == "train" and not reply.has_error():
            seen["train"] += 1
            if seen["train"] == 2:
                book = reply.content["arrays"][CODEBOOK_KEY].numpy().copy()
                book[0, 0] = np.nan
                reply.content["arrays"][CODEBOOK_KEY] = type(reply.content["arrays"][CODEBOOK_KEY])(book)
        return reply

    return tamper


def test_usage_kmeans_run_writes_tables_plots_checkpoints_and_survives_a_nan_reply(tmp_path):
    config = full_run_config(
        **SMALL,
        **{
            "codebook.aggregation": "usage-kmeans",
            "num-server-rounds": 2,
            "log-dir": str(tmp_path),
            "experiment-name": "vq",
        },
    )
    run_local(server_app, client_app, 3, config, tamper=_poison_node_3_in_round_2())
    out = tmp_path / "vq"
    summary = json.loads((out / "summary.json").read_text())
    report = summary["fedvq"]
    assert report["aggregation"] == "usage-kmeans" and report["align"] == "hungarian"
    assert report["aggregation_s_mean"] > 0 and 0 < report["final_usage_ratio"] <= 1
    assert sorted(report["best_round_per_client"]) == ["0", "1", "2"]
    assert len(report["pca"]["global"]) == 16
    rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert [len(r["rejected"]) for r in rounds] == [0, 1]
    assert "NaN" in rounds[1]["rejected"][0]["reason"]
    assert sorted(rounds[1]["strategy"]["clients"]) == ["0", "1"]  # node 3 = partition 2 was left out
    assert all(r["strategy"]["aggregation_s"] >= 0 and r["strategy"]["inertia"] >= 0 for r in rounds)
    assert summary["final"]["accuracy"] is not None
    for name in (
        "codebook_usage.png",
        "codebook_pca.png",
        "codebook_aggregation.png",
        "accuracy.png",
        "class_accuracy.png",
        "client_accuracy_table.png",
    ):
        assert (out / name).stat().st_size > 0, name
    tables = (out / "fedvq_tables.md").read_text()
    headings = ("Global-test accuracy per client", "Class-wise", "Codebook usage per client", "Aggregation per round")
    for heading in headings:
        assert heading in tables
    assert sorted(p.name for p in (out / "client_checkpoints").iterdir()) == [
        "client_0_best.pt",
        "client_1_best.pt",
        "client_2_best.pt",
    ]


def test_cold_kmeans_without_alignment_runs_and_checkpoints_can_be_off(tmp_path):
    config = full_run_config(
        **SMALL,
        **{
            "codebook.aggregation": "kmeans",
            "codebook.align": "none",
            "num-server-rounds": 1,
            "fedvq.save-checkpoints": False,
            "log-dir": str(tmp_path),
            "experiment-name": "ot",
        },
    )
    run_local(server_app, client_app, 2, config)
    report = json.loads((tmp_path / "ot" / "summary.json").read_text())["fedvq"]
    assert report["aggregation"] == "kmeans" and report["align"] == "none" and report["final_inertia"] >= 0
    assert not (tmp_path / "ot" / "client_checkpoints").exists()


def test_default_ema_lloyd_run_and_a_lloyd_reply_with_bad_statistics_is_rejected(tmp_path):
    """ema quantizer, shared encoder (the default), lloyd, with node 2's round-2 sums poisoned by NaN."""
    seen = {"train": 0}
    accepted: dict[int, np.ndarray] = {}  # code counts of the last unpoisoned train reply per node

    def tamper(node, reply):
        if reply.metadata.message_type == "train" and not reply.has_error():
            accepted[node] = reply.content["fedvq-usage"]["counts"].numpy().astype(np.float64)
        if node == 2 and reply.metadata.message_type == "train" and not reply.has_error():
            seen["train"] += 1
            if seen["train"] == 2:
                usage = reply.content["fedvq-usage"]
                sums = usage["sums"].numpy().copy()
                sums[0, 0] = np.nan
                usage["sums"] = type(usage["sums"])(sums)
                del accepted[node]  # rejected: its counts are not pooled
        return reply

    # every fedvq key at its default; the default 16 heads need a codebook width they divide
    small = {k: v for k, v in SMALL.items() if not k.startswith("fedvq.")} | {"codebook.embedding-dim": 16}
    config = full_run_config(
        **small,
        **{
            "fedvq.quantizer": "ema",
            "codebook.aggregation": "lloyd",
            "num-server-rounds": 2,
            "log-dir": str(tmp_path),
            "experiment-name": "ema",
            "fedvq.save-checkpoints": False,
            "codebook.privacy-threshold": 2,
        },
    )
    run_local(server_app, client_app, 3, config, tamper=tamper)
    summary = json.loads((tmp_path / "ema" / "summary.json").read_text())
    report = summary["fedvq"]
    assert (report["quantizer"], report["encoder"], report["aggregation"]) == ("ema", "shared", "lloyd")
    rounds = [json.loads(line) for line in (tmp_path / "ema" / "rounds.jsonl").read_text().splitlines()]
    assert [len(r["rejected"]) for r in rounds] == [0, 1] and "sums" in rounds[1]["rejected"][0]["reason"]
    assert rounds[0]["strategy"]["initialised"] is True and rounds[1]["strategy"]["initialised"] is False
    last = rounds[-1]["strategy"]
    assert (report["final_codes_used"], report["final_perplexity"]) == (last["codes_used"], last["perplexity"])
    # the default 16 heads of 16 codes: 256 codes federation-wide
    assert report["heads"] == 16 and last["codebook_size"] == 16 * 16
    # federation-wide usage = the pooled counts of the replies the guard accepted in the last round
    pooled = np.sum(list(accepted.values()), axis=0)
    freq = pooled[pooled > 0] / pooled.sum()
    assert len(accepted) == 2 and last["codes_used"] == int((pooled > 0).sum())
    assert last["perplexity"] == pytest.approx(float(np.exp(-(freq * np.log(freq)).sum())))
    assert "codes used / K" in (tmp_path / "ema" / "fedvq_tables.md").read_text()


def test_lloyd_needs_the_ema_quantizer():
    import pytest

    from fedvq_app.config import ConfigError

    with pytest.raises(ConfigError, match="codebook.aggregation.*lloyd.*fedvq.quantizer='ema'"):
        load_settings(full_run_config(method="fedvq", **{"fedvq.quantizer": "gumbel", "codebook.aggregation": "lloyd"}))


def test_conf_files_are_valid_fedvq_configs():
    files = sorted((ROOT / "conf").glob("fedvq_*.toml"))
    assert files
    for path in files:
        overrides = tomllib.loads(path.read_text())
        settings = load_settings(full_run_config(**overrides))
        assert settings.method == "fedvq", path.name
