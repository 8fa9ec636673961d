"""Every quantizer x encoder schedule x codebook aggregator runs end to end (tiny in-process jobs).

Each job is the real ServerApp and ClientApp on the in-process grid: 2 clients, 2 rounds
(warmup shares the encoder in round 1 only), digits at 8x8, a 4 x 4 codebook. The
standard plots are skipped (they are tested elsewhere and would cost most of the time);
everything else -- guard, aggregation, tracking, summary.json -- runs as in a real job.

The default suite runs a covering subset (every quantizer with every aggregator, and
every quantizer with every schedule: 16 jobs, about 4 s of CPU each); the remaining
32 combinations of the full product run with ``FEDVQ_FULL_MATRIX=1``.
"""

from __future__ import annotations

import itertools
import json
import os

import numpy as np
import pytest

from fedvq_app.aggregation.codebook import AGGREGATORS
from fedvq_app.aggregation.codebook_lloyd import LLOYD
from fedvq_app.client_app import app as client_app
from fedvq_app.local_grid import full_run_config, run_local
from fedvq_app.methods import fedvq as fedvq_method
from fedvq_app.options import ENCODER_SCHEDULES, QUANTIZERS
from fedvq_app.server_app import app as server_app
from fedvq_app.tracking import plots

TINY = {
    "method": "fedvq",
    "dataset.size": 8,
    "train.local-epochs": 1,
    "train.batch-size": 128,
    "train.optimizer": "adam",
    "train.lr": 0.003,
    "codebook.num-embeddings": 4,
    "codebook.embedding-dim": 4,
    "codebook.kmeans-n-init": 1,
    "codebook.barycenter-iters": 2,
    "codebook.privacy-threshold": 2,
    "num-server-rounds": 2,
    "eval-every": 2,
    "fedvq.shared-encoder-rounds": 1,
    "fedvq.save-checkpoints": False,
    "fedvq.heads": 1,  # one head: the gumbel and straight-through layers have no other (heads: CAPACITY below)
}


def _combinations():
    for quantizer, encoder in itertools.product(QUANTIZERS, ENCODER_SCHEDULES):
        aggregators = [*AGGREGATORS, LLOYD] if quantizer == "ema" else list(AGGREGATORS)
        for aggregation in aggregators:
            yield quantizer, encoder, aggregation


COMBINATIONS = list(_combinations())


def _covering():
    """Each quantizer's aggregators in turn, the schedule cycling: every pair of factors appears."""
    chosen = set()
    for quantizer in QUANTIZERS:
        aggregators = [a for q, e, a in COMBINATIONS if q == quantizer and e == ENCODER_SCHEDULES[0]]
        for i, aggregation in enumerate(aggregators):
            chosen.add((quantizer, ENCODER_SCHEDULES[i % len(ENCODER_SCHEDULES)], aggregation))
    return chosen


COVERING = _covering()
FULL = os.environ.get("FEDVQ_FULL_MATRIX") == "1"


def test_the_matrix_is_complete_and_the_subset_covers_every_pair():
    assert len(COMBINATIONS) == 3 * 3 * len(AGGREGATORS) + 3  # lloyd only with ema
    assert {c[0] for c in COMBINATIONS} == {"gumbel", "straight-through", "ema"}
    for i, j in ((0, 1), (0, 2)):
        assert {(c[i], c[j]) for c in COVERING} == {(c[i], c[j]) for c in COMBINATIONS}


def _run_tiny(tmp_path, monkeypatch, quantizer, encoder, aggregation, extra=None):
    """A 2-client, 2-round job without plots: its summary, its rounds and each node's code counts
    in its latest train reply."""
    # MethodSpec is frozen: replace the registry entry's plots through object.__setattr__
    original_plots = fedvq_method.SPEC.plots
    object.__setattr__(fedvq_method.SPEC, "plots", None)
    monkeypatch.setattr(plots, "standard_plots", lambda *a, **k: [])
    last_counts: dict[int, np.ndarray] = {}

    def record(node, reply):
        if reply.metadata.message_type == "train" and not reply.has_error():
            last_counts[node] = reply.content["fedvq-usage"]["counts"].numpy().astype(np.float64)
        return reply

    try:
        config = full_run_config(
            **{
                **TINY,
                "fedvq.quantizer": quantizer,
                "fedvq.encoder": encoder,
                "codebook.aggregation": aggregation,
                "log-dir": str(tmp_path),
                "experiment-name": "c",
                **(extra or {}),
            }
        )
        run_local(server_app, client_app, 2, config, tamper=record)
    finally:
        object.__setattr__(fedvq_method.SPEC, "plots", original_plots)
    out = tmp_path / "c"
    summary = json.loads((out / "summary.json").read_text())
    rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    return summary, rounds, last_counts


@pytest.mark.parametrize(
    ("quantizer", "encoder", "aggregation"),
    [
        c if c in COVERING else pytest.param(*c, marks=pytest.mark.skipif(not FULL, reason="FEDVQ_FULL_MATRIX=1"))
        for c in COMBINATIONS
    ],
)
def test_combination_runs_end_to_end(tmp_path, monkeypatch, quantizer, encoder, aggregation):
    summary, rounds, last_counts = _run_tiny(tmp_path, monkeypatch, quantizer, encoder, aggregation)
    assert [r["rejected"] for r in rounds] == [[], []]  # the guard's schema follows the schedule
    assert 0.0 <= summary["final"]["accuracy"] <= 1.0
    report = summary["fedvq"]
    assert (report["quantizer"], report["encoder"], report["aggregation"]) == (quantizer, encoder, aggregation)
    last = rounds[-1]["strategy"]
    # the summary carries the last round's federation-wide usage: no code is counted that no client used,
    # and the perplexity of the pooled counts is never above the number of codes in use
    assert (report["final_codes_used"], report["final_perplexity"]) == (last["codes_used"], last["perplexity"])
    assert max(c["used"] for c in last["clients"].values()) <= last["codes_used"]
    # ... and both are the pooled counts of the clients' last train replies
    pooled = np.sum(list(last_counts.values()), axis=0)
    freq = pooled[pooled > 0] / pooled.sum()
    assert last["codes_used"] == int((pooled > 0).sum())
    assert last["perplexity"] == pytest.approx(float(np.exp(-(freq * np.log(freq)).sum())))
    expected = {"private": ["private", "private"], "shared": ["shared", "shared"], "warmup": ["shared", "private"]}
    assert [r["strategy"]["encoder"] for r in rounds] == expected[encoder]
    assert np.isfinite(rounds[-1]["strategy"]["inertia"])


#: the capacity options (multi-head EMA VQ, flatten head, revival limits) end to end, each value at least once
CAPACITY = [
    (
        "ema",
        "shared",
        "lloyd",
        {"fedvq.heads": 2, "fedvq.head": "flatten", "codebook.max-revived": 1, "codebook.revive-after": 2},
    ),
    ("ema", "warmup", "mean", {"fedvq.heads": 2, "fedvq.decoder-norm": "group"}),
    ("straight-through", "private", "mean", {"fedvq.head": "flatten", "fedvq.decoder-norm": "group"}),
    ("gumbel", "shared", "kmeans", {"fedvq.head": "flatten"}),
]


@pytest.mark.parametrize(("quantizer", "encoder", "aggregation", "extra"), CAPACITY)
def test_capacity_options_run_end_to_end(tmp_path, monkeypatch, quantizer, encoder, aggregation, extra):
    summary, rounds, _ = _run_tiny(tmp_path, monkeypatch, quantizer, encoder, aggregation, extra)
    assert [r["rejected"] for r in rounds] == [[], []]
    assert 0.0 <= summary["final"]["accuracy"] <= 1.0
    heads = extra.get("fedvq.heads", 1)
    report = summary["fedvq"]
    # with heads, the federation counts heads x K codes of width D / heads
    assert report["heads"] == heads and report["codebook_shape"] == [heads * 4, 4 // heads]
    last = rounds[-1]["strategy"]
    assert last["codebook_size"] == heads * 4 and 1.0 <= last["perplexity"] <= last["codes_used"] + 1e-9
    if heads > 1:  # every head quantizes every position, so every head has codes in use
        usage = np.sum([np.asarray(u) for u in report["usage"].values()], axis=0).reshape(heads, 4)
        assert (usage.sum(1) > 0).all()
        if aggregation != "lloyd":  # nothing withheld: each head counted every position once
            assert len(set(usage.sum(1).tolist())) == 1
