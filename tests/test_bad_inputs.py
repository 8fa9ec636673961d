"""Hostile inputs replayed through the real ServerApp/ClientApp in-process (``run_local``).

Every case asserts what docs/reliability.md promises the user:

* one line naming the key or file and the bad value (the ``RunFailed`` message, also
  logged as ``[fedvq] run failed: ...``), and no traceback anywhere in the log;
* the run marked failed (``RunFailed`` raised -- Flower reports it as
  ``finished:failed`` -- and summary.json ``status: failed`` when a folder exists),
  or, for a node that alone is misconfigured or a hostile reply, that node's replies
  rejected with the line as the reason, or, for legal but suspicious input, a named
  warning in summary.json;
* no experiment folder other than the new run's touched: a finished experiment
  (``old``) sits next to every run and must stay byte-for-byte the same.

The same mechanisms through real ``flwr run`` (simulation) and real SuperNodes are
in tests/test_bad_inputs_runtime.py.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, Context, Error, Message, MetricRecord, RecordDict

from data_gen.generate_test_data import GeneratorOptions, generate, write
from fedvq_app.client_app import app as client_app
from fedvq_app.errors import RunFailed
from fedvq_app.local_grid import LocalGrid, full_run_config, run_local
from fedvq_app.server.checkpoint import load_checkpoint, save_checkpoint
from fedvq_app.server_app import app as server_app

#: digits at their native 8x8, one round: each completing case takes about a second
BASE = {
    "num-server-rounds": 1,
    "train.local-epochs": 1,
    "partition.kind": "iid",
    "dataset.size": 8,
    "round-timeout": 5.0,
}
KMEANS = {
    "method": "kmeans",
    "kmeans.max-rounds": 2,
    "kmeans.n-init": 1,
    "kmeans.client-logs": False,
    "kmeans.silhouette-sample": 0,
    "round-timeout": 2.0,
}


# ---------------------------------------------------------------------------- data files the cases write
def _images(n: int, classes: int = 4, size: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    images = rng.integers(0, 60, size=(n, size, size), dtype=np.uint8)
    for c in range(classes):  # a learnable bright square per class
        images[labels == c, c : c + 3, c : c + 3] = 250
    return images, labels.astype(np.int64)


def _npz(tmp: Path, name: str = "data.npz", n: int = 80, **edits) -> dict:
    """A small valid npz dataset with ``edits`` replacing or removing (None) its arrays."""
    x, y = _images(n)
    arrays = {"train_images": x, "train_labels": y}
    arrays.update(edits)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(tmp / name, **arrays)
    return {"dataset.name": "npz", "dataset.npz-file": str(tmp / name)}


def _file(tmp: Path, name: str, content: bytes) -> Path:
    path = tmp / name
    path.write_bytes(content)
    return path


def _kmeans_files(tmp: Path, rows: int = 20, **edit) -> dict:
    opts = GeneratorOptions(num_clients=2, samples_per_client=rows, num_features=2, random_state=3)
    write(generate(opts), tmp / "gen")
    for name, (key, value) in edit.items():
        path = tmp / "gen" / name
        with np.load(path) as npz:
            arrays = dict(npz)
        arrays[key] = value if not callable(value) else value(arrays[key])
        np.savez(path, **arrays)
    return {**KMEANS, "kmeans.data-source": "generated", "kmeans.data-path": str(tmp / "gen")}


def _with_nan(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    a[0, 0] = np.nan
    return a


def _resnet_weights(tmp: Path, payload) -> dict:
    path = tmp / "weights.pth"
    if isinstance(payload, bytes):
        path.write_bytes(payload)
    else:
        torch.save(payload, path)
    return {"model.name": "resnet18", "model.weights": str(path)}


def _bad_checkpoint(logs: Path) -> dict:
    """The old experiment's checkpoint with one array cut short (a checkpoint of another model)."""
    folder = logs / "old"
    checkpoint = load_checkpoint(folder)
    name = next(iter(checkpoint.arrays))
    checkpoint.arrays[name] = checkpoint.arrays[name][:1]
    save_checkpoint(folder, checkpoint)
    return {"resume-from": str(folder), "experiment-name": ""}


# ---------------------------------------------------------------------------- hostile replies
def _claim(value):
    def tamper(node: int, msg: Message) -> Message:
        if node == 2 and not msg.has_error() and "metrics" in msg.content.metric_records:
            msg.content["metrics"]["num-examples"] = value
        return msg

    return tamper


def _poison(msg: Message) -> Message:
    if msg.has_error() or "arrays" not in msg.content.array_records:
        return msg
    arrays = msg.content["arrays"]
    name = next(iter(arrays))
    bad = arrays[name].numpy().copy()
    bad.flat[0] = np.nan
    arrays[name] = Array(bad)
    return msg


def _crash_per_node(node: int, msg: Message) -> Message:
    reason = f"<class 'OSError'>:<'[Errno 28] No space left on device: /scratch/node-{node}'>"
    return Message(Error(code=2, reason=reason), reply_to=msg)


def _all_crash(node: int, msg: Message) -> Message:
    return Message(Error(code=2, reason="<class 'MemoryError'>:<'out of memory'>"), reply_to=msg)


# ---------------------------------------------------------------------------- the cases
@dataclass
class Case:
    """One hostile input: run-config overrides (or a setup writing files), and what the user must see."""

    name: str
    config: dict = field(default_factory=dict)
    expect: tuple[str, ...] = ()
    #: failed | rejected (one node's replies refused, the run goes on) | warning:<name>
    outcome: str = "failed"
    setup: Callable[[Path, Path], dict] | None = None
    nodes: int = 2
    node_configs: dict = field(default_factory=dict)
    tamper: Callable | None = None
    skip: str = ""


def case(name, expect, config=None, **kwargs) -> Case:
    return Case(name, dict(config or {}), tuple([expect] if isinstance(expect, str) else expect), **kwargs)


CUDA = torch.cuda.is_available()
CASES = [
    # ---- run config the server refuses before anything is written
    case("rounds-zero", "'num-server-rounds' has invalid value 0: expected an int >= 1", {"num-server-rounds": 0}),
    case("method-typo", "'method' has invalid value 'fedvg'", {"method": "fedvg"}),
    case("lr-negative", "'train.lr' has invalid value -1.0", {"train.lr": -1.0}),
    case("lr-text", "'train.lr' has invalid value 'fast'", {"train.lr": "fast"}),
    case("device-name", "'device' has invalid value 'gpu'", {"device": "gpu"}),
    case("fraction-high", "'fraction-train' has invalid value 1.5", {"fraction-train": 1.5}),
    case("dataset-unknown", "'dataset.name' has invalid value 'mnist'", {"dataset.name": "mnist"}),
    case("partition-unknown", "'partition.kind' has invalid value 'zipf'", {"partition.kind": "zipf"}),
    case("batch-zero", "'train.batch-size' has invalid value 0", {"train.batch-size": 0}),
    case("experiment-path", "'experiment-name' has invalid value 'a/b'", {"experiment-name": "a/b"}),
    case("alpha-zero", "'partition.alpha' has invalid value 0.0", {"partition.alpha": 0.0}),
    case("timeout-zero", "'round-timeout' has invalid value 0.0", {"round-timeout": 0.0}),
    case("size-small", "'dataset.size' has invalid value 4", {"dataset.size": 4}),
    case("seed-negative", "'seed' has invalid value -1", {"seed": -1}),
    case("epochs-bool", "'train.local-epochs' has invalid value True", {"train.local-epochs": True}),
    case("kmeans-k-zero", "'kmeans.k' has invalid value 0", {**KMEANS, "kmeans.k": 0}),
    case(
        "kmeans-split-generated",
        "'kmeans.split' has invalid value 'label-skew'",
        {**KMEANS, "kmeans.data-source": "generated", "kmeans.split": "label-skew"},
    ),
    case("npz-file-empty", "'dataset.npz-file' is empty", {"dataset.name": "npz"}),
    # ---- experiment folders: never modified except by an accepted resume
    case(
        "log-dir-file",
        ("'log-dir' has invalid value", "is a file"),
        setup=lambda tmp, logs: {"log-dir": str(_file(tmp, "file.txt", b"x"))},
    ),
    case(
        "log-dir-under-file",
        ("'log-dir' has invalid value", "is a file"),
        setup=lambda tmp, logs: {"log-dir": str(_file(tmp, "f", b"x") / "sub")},
    ),
    case(
        "experiment-name-reused",
        ("'experiment-name' has invalid value 'old'", "exists already"),
        {"experiment-name": "old"},
    ),
    case(
        "resume-missing-folder",
        ("'resume-from' has invalid value", "no such experiment folder"),
        setup=lambda tmp, logs: {"resume-from": str(logs / "missing"), "experiment-name": ""},
    ),
    case(
        "resume-no-checkpoint",
        "no checkpoint.npz",
        setup=lambda tmp, logs: {"resume-from": str(_mkdir(logs / "old" / "sub")), "experiment-name": ""},
    ),
    case(
        "resume-truncated-checkpoint",
        ("'resume-from'", "not a readable checkpoint"),
        setup=lambda tmp, logs: {
            "resume-from": str(_truncate(logs / "old" / "checkpoint.npz").parent),
            "experiment-name": "",
        },
    ),
    case(
        "resume-changed-config",
        ("'resume-from'", "partition.alpha: 0.5 -> 5.0"),
        setup=lambda tmp, logs: {"resume-from": str(logs / "old"), "experiment-name": "", "partition.alpha": 5.0},
    ),
    case(
        "resume-changed-method",
        ("'resume-from'", "method: 'fedavg' -> 'fedprox'"),
        setup=lambda tmp, logs: {"resume-from": str(logs / "old"), "experiment-name": "", "method": "fedprox"},
    ),
    case(
        "resume-wrong-shape",
        ("'resume-from'", "does not fit this run's model"),
        setup=lambda tmp, logs: _bad_checkpoint(logs),
    ),
    case(
        "kmeans-resume",
        "'resume-from' is not supported by method 'kmeans'",
        setup=lambda tmp, logs: {**KMEANS, "resume-from": str(logs / "old"), "experiment-name": ""},
    ),
    # ---- data files (the server reads npz datasets to build the model: refused before round 1)
    case(
        "npz-missing",
        ("'dataset.npz-file'", "nope.npz", "does not exist"),
        setup=lambda tmp, logs: {"dataset.name": "npz", "dataset.npz-file": str(tmp / "nope.npz")},
    ),
    case(
        "npz-not-zip",
        ("bad.npz", "is not a readable npz archive"),
        setup=lambda tmp, logs: {
            "dataset.name": "npz",
            "dataset.npz-file": str(_file(tmp, "bad.npz", b"plain text, not a zip")),
        },
    ),
    case(
        "npz-truncated",
        ("cut.npz", "is not a readable npz archive"),
        setup=lambda tmp, logs: {"dataset.name": "npz", "dataset.npz-file": str(_cut_npz(tmp))},
    ),
    case(
        "npz-no-labels",
        ("data.npz", "lacks keys ['train_labels']"),
        setup=lambda tmp, logs: _npz(tmp, train_labels=None),
    ),
    case(
        "npz-length-mismatch",
        ("train_labels of", "has 79 labels for 80 images"),
        setup=lambda tmp, logs: _npz(tmp, train_labels=_images(80)[1][:79]),
    ),
    case(
        "npz-single-image",
        ("train_images of", "must have shape (N, H, W) or (N, H, W, C)", "(8, 8)"),
        setup=lambda tmp, logs: _npz(tmp, train_images=_images(1)[0][0], train_labels=np.array([0])),
    ),
    case(
        "npz-float-01",
        ("train_images of", "float64 in [0, 0.98", "looks scaled to [0, 1]"),
        setup=lambda tmp, logs: _npz(tmp, train_images=_images(80)[0] / 255.0),
    ),
    case(
        "npz-nan-pixels",
        ("train_images of", "NaN or inf pixel values"),
        setup=lambda tmp, logs: _npz(tmp, train_images=_with_nan(_images(80)[0])),
    ),
    case(
        "npz-pixels-over-255",
        ("train_images of", "values in [0, 300]"),
        setup=lambda tmp, logs: _npz(tmp, train_images=np.where(_images(80)[0] > 200, 300, 0).astype(np.int32)),
    ),
    case(
        "npz-5-channels",
        ("train_images of", "5 channels"),
        setup=lambda tmp, logs: _npz(tmp, train_images=np.zeros((80, 8, 8, 5), np.uint8)),
    ),
    case(
        "npz-stray-label",
        ("labels go up to 100", "never occur"),
        setup=lambda tmp, logs: _npz(tmp, train_labels=np.where(np.arange(80) < 3, 100, _images(80)[1])),
    ),
    case(
        "npz-fractional-labels",
        ("train_labels of", "non-integer labels [0.5"),
        setup=lambda tmp, logs: _npz(tmp, train_labels=_images(80)[1] + 0.5),
    ),
    case(
        "npz-negative-labels",
        ("train_labels of", "negative labels (min -1)"),
        setup=lambda tmp, logs: _npz(tmp, train_labels=_images(80)[1] - 1),
    ),
    case(
        "npz-text-labels",
        ("train_labels of", "dtype <U"),
        setup=lambda tmp, logs: _npz(tmp, train_labels=_images(80)[1].astype(str)),
    ),
    case(
        "npz-test-unknown-class",
        "test labels go up to 7 but the training labels only to 3",
        setup=lambda tmp, logs: _npz(tmp, test_images=_images(8)[0], test_labels=np.full(8, 7)),
    ),
    case(
        "npz-too-few-for-test-split",
        ("'dataset.test-fraction'", "cannot hold out a stratified test split"),
        setup=lambda tmp, logs: _npz(tmp, n=5),
    ),
    case(
        "weights-missing", ("'model.weights'", "no such file"), {"model.name": "resnet18", "model.weights": "/no/w.pth"}
    ),
    case(
        "weights-not-state-dict",
        ("'model.weights'", "holds a list, not a state_dict"),
        setup=lambda tmp, logs: _resnet_weights(tmp, [1, 2, 3]),
    ),
    case(
        "weights-garbage",
        ("'model.weights'", "not a readable state_dict file"),
        setup=lambda tmp, logs: _resnet_weights(tmp, b"\x00garbage"),
    ),
    case(
        "weights-foreign",
        ("'model.weights'", "none of its 1 entries is a resnet18 parameter"),
        setup=lambda tmp, logs: _resnet_weights(tmp, {"other.weight": torch.zeros(2)}),
    ),
    case(
        "classes-per-client",
        ("'partition.classes-per-client' has invalid value 11", "expected an int <= 10"),
        {"partition.kind": "pathological", "partition.classes-per-client": 11},
    ),
    # ---- what only the clients can know: every reply carries the same ConfigError -> the run stops in round 1
    case(
        "medmnist-file-missing",
        ("round 1 (train)", "configuration error on every node", "pathmnist.npz", "does not exist"),
        setup=lambda tmp, logs: {
            "dataset.name": "pathmnist",
            "dataset.size": 28,
            "dataset.data-dir": str(_mkdir(tmp / "empty")),
        },
    ),
    case(
        "device-cuda-on-cpu",
        ("'device' has invalid value 'cuda'", "no CUDA device is available here"),
        {"device": "cuda"},
        skip="CUDA is present" if CUDA else "",
    ),
    case(
        "more-partitions-than-samples",
        ("node-config key 'num-partitions' has invalid value 30", "use at most 24 partitions"),
        setup=lambda tmp, logs: _npz(tmp, n=30),
        nodes=30,
    ),
    case(
        "dirichlet-impossible",
        ("configuration error on every node", "min-partition-size=5000"),
        {"partition.kind": "dirichlet", "partition.min-partition-size": 5000},
    ),
    case(
        "partition-id-missing-everywhere",
        ("node-config key 'partition-id' is missing",),
        node_configs={1: {"partition-id": None}, 2: {"partition-id": None}},
    ),
    case(
        "kmeans-file-missing",
        ("configuration errors on every node (2 different)", "client_0.npz not found"),
        setup=lambda tmp, logs: {
            **KMEANS,
            "kmeans.data-source": "generated",
            "kmeans.data-path": str(_mkdir(tmp / "nothing")),
        },
    ),
    case(
        "kmeans-nan-rows",
        ("client_0.npz", "'data' has 1 NaN or inf values"),
        setup=lambda tmp, logs: _kmeans_files(
            tmp, **{"client_0.npz": ("data", _with_nan), "client_1.npz": ("data", _with_nan)}
        ),
    ),
    case(
        "kmeans-k-above-rows",
        ("'kmeans.k' has invalid value 50", "hold only 20 rows"),
        setup=lambda tmp, logs: {**_kmeans_files(tmp, rows=10), "kmeans.k": 50},
    ),
    case(
        "kmeans-privacy-too-high",
        ("'kmeans.privacy-threshold' (500)", "no client could share a local mean"),
        setup=lambda tmp, logs: {**_kmeans_files(tmp), "kmeans.privacy-threshold": 500},
    ),
    case(
        "every-node-crashes-alike",
        ("round 1 (train)", "every node failed with the same error", "out of memory"),
        tamper=_all_crash,
    ),
    case(
        "every-node-crashes-differently",
        ("round 1 (train)", "every node failed (2 different errors)", "No space left on device"),
        tamper=_crash_per_node,
    ),
    case(
        "lr-diverges",
        ("round 1 (train)", "every node failed with the same error", "training loss became nan"),
        {"train.lr": 1e30},
    ),
    case(
        "every-node-silent",
        ("round 1 (train)", "no node replied within round-timeout=5 s (2 sampled)"),
        tamper=lambda node, msg: None,
    ),
    case(
        "every-reply-rejected",
        ("round 1 (train)", "every reply was rejected", "contains NaN or inf"),
        tamper=lambda node, msg: _poison(msg),
    ),
    # ---- too few nodes: bounded waits, never a hang
    case(
        "min-nodes-neural",
        ("no round could start", "2 nodes connected, the strategy needs at least 5"),
        {"min-available-nodes": 5, "round-timeout": 0.5},
    ),
    case(
        "min-nodes-kmeans",
        ("k-means cannot start", "min-available-nodes=5"),
        setup=lambda tmp, logs: {**_kmeans_files(tmp), "min-available-nodes": 5, "round-timeout": 0.5},
    ),
    # ---- one node misconfigured: its replies are rejected with the line, the others go on
    case(
        "partition-id-negative",
        "node-config key 'partition-id' has invalid value -1: expected an int >= 0",
        outcome="rejected",
        node_configs={2: {"partition-id": -1}},
    ),
    case(
        "partition-id-too-large",
        "node-config key 'partition-id' has invalid value 2: expected an int >= 0 and < num-partitions=2",
        outcome="rejected",
        node_configs={2: {"partition-id": 2}},
    ),
    case(
        "partition-id-text",
        "node-config key 'partition-id' has invalid value 'one'",
        outcome="rejected",
        node_configs={2: {"partition-id": "one"}},
    ),
    case(
        "num-partitions-zero",
        "node-config key 'num-partitions' has invalid value 0",
        outcome="rejected",
        node_configs={2: {"num-partitions": 0}},
    ),
    case(
        "partition-id-missing-on-one-node",
        "node-config key 'partition-id' is missing",
        outcome="rejected",
        node_configs={2: {"partition-id": None}},
    ),
    case(
        "data-dir-missing",
        "node-config key 'data-dir' has invalid value '/no/such/site'",
        outcome="rejected",
        node_configs={2: {"data-dir": "/no/such/site"}},
    ),
    # ---- hostile replies
    case(
        "num-examples-absurd",
        "metric 'num-examples' is 1e+12, more than the 1437 training samples",
        outcome="rejected",
        tamper=_claim(10**12),
    ),
    case(
        "num-examples-fraction",
        "metric 'num-examples' is 2.5, expected a whole number",
        outcome="rejected",
        tamper=_claim(2.5),
    ),
    # ---- legal but suspicious: a named warning
    case(
        "tiny-clients",
        ("8 of 8 clients train on fewer than 10 samples",),
        outcome="warning:tiny-clients",
        setup=lambda tmp, logs: _npz(tmp, n=60),
        nodes=8,
    ),
]


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _truncate(path: Path) -> Path:
    path.write_bytes(path.read_bytes()[:200])
    return path


def _cut_npz(tmp: Path) -> Path:
    _npz(tmp, "whole.npz")
    return _file(tmp, "cut.npz", (tmp / "whole.npz").read_bytes()[:300])


# ---------------------------------------------------------------------------- the replay
def _tree(root: Path) -> dict[str, str]:
    """Every path under root -> a digest of its content (folders: '')."""
    if not root.is_dir():
        return {}
    return {
        str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest() if p.is_file() else ""
        for p in sorted(root.rglob("*"))
    }


@pytest.fixture(scope="module")
def finished_experiment(tmp_path_factory) -> Path:
    """One real, finished experiment (checkpoint included) that every case finds next to its run."""
    root = tmp_path_factory.mktemp("template")
    config = full_run_config(**{**BASE, "log-dir": str(root), "experiment-name": "old"})
    run_local(server_app, client_app, 2, config)
    return root / "old"


def replay(item: Case, tmp_path: Path, finished_experiment: Path, caplog) -> tuple[str | None, Path]:
    logs = tmp_path / "logs"
    shutil.copytree(finished_experiment, logs / "old")
    overrides = {**BASE, "log-dir": str(logs), "experiment-name": "run", **item.config}
    if item.setup is not None:
        overrides.update(item.setup(tmp_path, logs))
    config = full_run_config(**overrides)
    node_configs = {n: dict(nc) for n, nc in item.node_configs.items()}
    before = _tree(logs)
    failure = None
    with caplog.at_level(logging.INFO, logger="flwr"):
        grid_kwargs = {"tamper": item.tamper} if item.tamper else {}
        try:
            run_local(server_app, client_app, item.nodes, config, node_configs=node_configs, **grid_kwargs)
        except RunFailed as err:
            failure = str(err)
    after = _tree(logs)
    touched = {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}
    assert all(p == "run" or p.startswith("run/") for p in touched), f"touched outside the new run: {touched}"
    return failure, logs


@pytest.fixture(autouse=True)
def _node_config_removal(monkeypatch):
    """``node_configs`` entries whose value is None remove the key from that node's node config."""
    from fedvq_app import local_grid

    original = local_grid.LocalGrid.__post_init__

    def post_init(self):
        original(self)
        for node, extra in self.node_configs.items():
            for key, value in extra.items():
                if value is None:
                    self.contexts[node].node_config.pop(key, None)

    monkeypatch.setattr(local_grid.LocalGrid, "__post_init__", post_init)


def test_at_least_40_distinct_bad_inputs_are_replayed():
    assert len({c.name for c in CASES}) == len(CASES) >= 40


@pytest.mark.parametrize("item", CASES, ids=[c.name for c in CASES])
def test_bad_input_ends_with_one_line(item: Case, tmp_path, finished_experiment, caplog):
    if item.skip:
        pytest.skip(item.skip)
    failure, logs = replay(item, tmp_path, finished_experiment, caplog)
    text = caplog.text
    assert "Traceback" not in text, text[-3000:]
    summary_file = logs / "run" / "summary.json"
    if item.outcome == "failed":
        assert failure is not None, "the run did not fail"
        assert "\n" not in failure
        for expected in item.expect:
            assert expected in failure, f"{expected!r} not in {failure!r}"
        assert f"[fedvq] run failed: {failure}" in text
        if summary_file.is_file():
            summary = json.loads(summary_file.read_text())
            assert summary["status"] == "failed" and summary["error"] == failure
        return
    assert failure is None, failure
    summary = json.loads(summary_file.read_text())
    assert summary["status"] == "completed"
    if item.outcome == "rejected":
        rounds = [json.loads(line) for line in (logs / "run" / "rounds.jsonl").read_text().splitlines()]
        reasons = [r["reason"] for r in rounds[0]["rejected"]]
        assert len(reasons) == 1 and item.expect[0] in reasons[0], reasons
        # its train and its evaluate reply: both counted, and named in the warnings
        assert summary["rejected_total"] == 2 and summary["rejected_evaluate_total"] == 1
        assert summary["num_clients"] == 1 and "rejected-replies" in [w["name"] for w in summary["warnings"]]
        assert summary["final"]["partition_ids"] == [0]  # the bad node's replies never count as a client
        assert item.expect[0] in text
        if item.expect[0].startswith("node-config"):  # a misconfigured site: named, with its key and value
            (excluded,) = summary["excluded_sites"]
            assert item.expect[0] in excluded["reason"], excluded
            (warning,) = [w["message"] for w in summary["warnings"] if w["name"] == "site-excluded"]
            assert warning.startswith(f"node {excluded['node']} is left out of the run: {item.expect[0]}")
            assert f"on 1 of 2 sites; 1 site excluded (node {excluded['node']}: {item.expect[0]}" in text
    else:
        name = item.outcome.split(":", 1)[1]
        warnings = {w["name"]: w["message"] for w in summary["warnings"]}
        assert name in warnings and all(e in warnings[name] for e in item.expect), warnings
        assert f"[fedvq] warning {name}: " in text


def test_a_failed_run_writes_its_reason_into_its_own_summary(tmp_path, finished_experiment, caplog):
    item = next(c for c in CASES if c.name == "medmnist-file-missing")
    failure, logs = replay(item, tmp_path, finished_experiment, caplog)
    summary = json.loads((logs / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["rounds"] == 0 and summary["error"] == failure
    assert summary["stopped_early"]["where"] == "round 1 (train)"
    # the clients' ConfigError never reached Flower as an exception: no traceback, one line per node
    assert caplog.text.count("[fedvq] configuration error on node") == 2


def test_a_dominant_client_gets_a_named_warning():
    from fedvq_app.server.failures import check_client_sizes

    class Tracker:
        warnings: list = []

    def reply(node, n):
        msg = Message(
            RecordDict({"metrics": MetricRecord({"num-examples": n})}), dst_node_id=node, message_type="train"
        )
        msg.metadata.__dict__["_src_node_id"] = node
        return msg

    tracker = Tracker()
    check_client_sizes([reply(1, 20), reply(2, 25), reply(3, 30), reply(4, 50_000)], tracker)
    assert [w["name"] for w in tracker.warnings] == ["dominant-client"]
    assert "node 4 claims 50000 of 50075 examples" in tracker.warnings[0]["message"]
    tracker.warnings = []
    check_client_sizes([reply(1, 20), reply(2, 25), reply(3, 30)], tracker)
    assert tracker.warnings == []


class DeadAfterHandshake(LocalGrid):
    """Node 3 dies after the k-means handshake; the SuperLink answers for it with "node unavailable"."""

    calls: list

    def send_and_receive(self, messages, *, timeout=None):
        from flwr.server.superlink.linkstate.utils import create_message_error_unavailable_res_message

        messages = list(messages)
        for msg in messages:  # message ids as the SuperLink assigns them
            msg.metadata.__dict__["_message_id"] = msg.object_id
        dead = [m for m in messages if m.metadata.dst_node_id == 3 and not m.metadata.message_type.endswith("shake")]
        self.calls += [m.metadata.message_type for m in messages if m.metadata.dst_node_id == 3]
        replies = list(super().send_and_receive([m for m in messages if m not in dead], timeout=timeout))
        return replies + [create_message_error_unavailable_res_message(m.metadata, "node_unavail") for m in dead]


def test_a_dead_kmeans_node_is_dropped_once_and_left_out_of_the_summary(tmp_path, caplog):
    opts = GeneratorOptions(num_clients=3, samples_per_client=30, num_features=2, random_state=3)
    write(generate(opts), tmp_path / "gen")
    config = full_run_config(
        **{
            **KMEANS,
            "kmeans.data-source": "generated",
            "kmeans.data-path": str(tmp_path / "gen"),
            "log-dir": str(tmp_path / "logs"),
            "experiment-name": "k",
        }
    )
    grid = DeadAfterHandshake(client_app, 3, config)
    grid.calls = []
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=dict(config))
    with caplog.at_level(logging.INFO, logger="flwr"):
        server_app(grid=grid, context=context)
    # messaged for the handshake and the next phase only, then never again
    assert grid.calls == ["query.kmeans_handshake", "query.kmeans_normalization"]
    summary = json.loads((tmp_path / "logs" / "k" / "summary.json").read_text())
    assert summary["num_clients"] == 2 and summary["kmeans"]["num_samples"] == 60
    assert summary["rejected_total"] == 0 and summary["status"] == "completed"
    assert "Traceback" not in caplog.text and "node 3 is unavailable" in caplog.text
