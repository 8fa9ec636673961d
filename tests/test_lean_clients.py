"""Lean client processes: what a ClientApp imports, the per-host partition cache, thread caps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from fedvq_app.data.cache import CACHE_ENV, PartitionCache, cache_key
from fedvq_app.data.client_data import load_client_data
from fedvq_app.registry import load_settings

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "torchvision", "flwr_datasets", "datasets", "matplotlib", "vector_quantize_pytorch", "ot")


def _python(code: str, env: dict | None = None) -> dict:
    """Run ``code`` in a fresh interpreter (as a ClientApp process is); it prints one JSON line."""
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_the_client_app_imports_no_method():
    loaded = _python(
        "import sys, json, fedvq_app.client_app as c; "
        "print(json.dumps({'mods': sorted(sys.modules), 'types': sorted(c.app._registered_funcs)}))"
    )
    assert not [m for m in (*HEAVY, "sklearn") if m in loaded["mods"]]
    assert "query.kmeans_handshake" in loaded["types"] and "train.kmeans_step" in loaded["types"]


def test_a_kmeans_job_imports_neither_torch_nor_flwr_datasets(tmp_path):
    code = f"""
import json, sys
from data_gen.generate_test_data import GeneratorOptions, generate, write
from fedvq_app.client_app import app as client_app
from fedvq_app.local_grid import full_run_config, run_local
from fedvq_app.server_app import app as server_app
path = write(generate(GeneratorOptions(num_clients=3, samples_per_client=40, num_features=3, num_clusters=3)),
             {str(tmp_path / "data")!r})
config = full_run_config(method="kmeans", **{{"log-dir": {str(tmp_path / "logs")!r}, "experiment-name": "e",
                          "kmeans.data-source": "generated", "kmeans.data-path": str(path), "kmeans.k": 3}})
run_local(server_app, client_app, 3, config)
print(json.dumps({{"mods": sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})}}))
"""
    loaded = _python(code)
    assert (tmp_path / "logs" / "e" / "summary.json").is_file()
    assert [m for m in loaded["mods"] if m.split(".")[0] != "matplotlib"] == []  # plots at the end only


def test_a_fedavg_client_without_dp_imports_no_privacy_library(tmp_path):
    """dp-accounting pulls scipy.signal (~3 s per process): only DP runs may pay for it."""
    code = """
import json, sys
from flwr.app import Context, RecordDict
from fedvq_app.registry import load_settings
from fedvq_app.local_grid import full_run_config
from fedvq_app.registry import get_method
config = full_run_config(method="fedavg", **{"partition.kind": "iid"})
context = Context(run_id=1, node_id=2, node_config={"partition-id": 1, "num-partitions": 3}, state=RecordDict(),
                  run_config=config)
get_method("fedavg").client(load_settings(config), context)
print(json.dumps({"mods": sorted(m for m in sys.modules if m.split('.')[0] in ("dp_accounting", "opacus"))
                  + [m for m in ("scipy.signal",) if m in sys.modules]}))
"""
    assert _python(code, {CACHE_ENV: str(tmp_path / "cache")})["mods"] == []


def test_a_partition_is_read_back_by_the_next_process_without_the_partitioner(run_config, tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    overrides = {"partition.kind": "dirichlet", "partition.alpha": 0.5}
    memo = PartitionCache()
    monkeypatch.setattr("fedvq_app.data.client_data.PARTITIONS", memo)
    first = load_client_data(load_settings(run_config(**overrides)), 2, 5)  # this process computes and stores
    assert memo.hits == {"memory": 0, "disk": 0, "computed": 3}  # all partitions, this client's share, test set
    code = f"""
import json, sys
from fedvq_app.registry import load_settings
from fedvq_app.data.cache import PARTITIONS
from fedvq_app.data.client_data import load_client_data
from fedvq_app.local_grid import full_run_config
data = load_client_data(load_settings(full_run_config(**{overrides!r})), 2, 5)
print(json.dumps({{"hits": PARTITIONS.hits, "train": data.train_y.tolist(), "val": data.val_y.tolist(),
                  "mods": [m for m in ("flwr_datasets", "datasets", "sklearn") if m in sys.modules]}}))
"""
    second = _python(code)  # the next ClientApp process of the same host
    assert second["hits"] == {"memory": 0, "disk": 2, "computed": 0}
    assert second["mods"] == []  # neither the dataset loader nor the partitioner ran
    assert second["train"] == first.train_y.tolist() and second["val"] == first.val_y.tolist()
    # the cached share is the one computed without any cache
    monkeypatch.setenv(CACHE_ENV, "off")
    assert load_client_data(load_settings(run_config(**overrides)), 2, 5).train_y.tolist() == second["train"]
    # another seed is another entry, not a stale read
    other = load_client_data(load_settings(run_config(seed=7, **overrides)), 2, 5)
    assert other.train_y.tolist() != second["train"]


def test_the_key_covers_everything_that_determines_a_partition():
    base = {"dataset": {"name": "digits"}, "partition": {"kind": "iid"}, "seed": 1, "num_partitions": 4}
    variants = [
        {**base, "seed": 2},
        {**base, "num_partitions": 5},
        {**base, "partition": {"kind": "dirichlet"}},
        {**base, "dataset": {"name": "pathmnist"}},
    ]
    keys = {cache_key("partitions", p) for p in (base, *variants)}
    assert len(keys) == 5 and cache_key("partitions", dict(base)) in keys


def _compute_and_store(args) -> list[float]:
    folder, value = args
    os.environ[CACHE_ENV] = folder
    arrays = PartitionCache().get("race", {"k": 1}, lambda: {"x": np.full(200_000, value, dtype=np.float64)})
    return [float(arrays["x"].min()), float(arrays["x"].max())]


def test_concurrent_writers_leave_one_whole_file(tmp_path):
    """Eight processes (SuperNodes on one host) miss the same key at once: every reader gets whole arrays."""
    with ProcessPoolExecutor(8) as pool:
        results = list(pool.map(_compute_and_store, [(str(tmp_path), 7.0)] * 8))
    assert results == [[7.0, 7.0]] * 8
    files = list(tmp_path.rglob("*"))
    assert [f.suffix for f in files if f.is_file()] == [".npz"]  # no temporary file left behind
    fresh = PartitionCache()
    os.environ[CACHE_ENV], saved = str(tmp_path), os.environ[CACHE_ENV]
    try:
        assert fresh.get("race", {"k": 1}, lambda: pytest.fail("must be read from disk"))["x"].shape == (200_000,)
        # a damaged file is a miss, recomputed and rewritten
        next(f for f in files if f.is_file()).write_bytes(b"not an npz")
        again = PartitionCache().get("race", {"k": 1}, lambda: {"x": np.zeros(3)})
        assert again["x"].tolist() == [0.0, 0.0, 0.0]
    finally:
        os.environ[CACHE_ENV] = saved


def test_the_memo_is_bounded_by_bytes():
    memo = PartitionCache(memo_bytes=3 * 8000)
    os.environ[CACHE_ENV], saved = "off", os.environ[CACHE_ENV]
    try:
        for i in range(10):
            memo.get("m", {"i": i}, lambda: {"x": np.zeros(1000)})
        assert len(memo._memo) == 3
    finally:
        os.environ[CACHE_ENV] = saved


def test_client_threads_are_capped_in_the_process():
    code = """
import json
from threadpoolctl import threadpool_info
from fedvq_app.registry import load_settings
from fedvq_app.local_grid import full_run_config
from fedvq_app.training.threads import limit_native_threads
import sklearn.cluster  # noqa: F401  (its OpenMP runtime is loaded now)
before = sorted({p["num_threads"] for p in threadpool_info()})
limit_native_threads(load_settings(full_run_config(method="kmeans")).train.num_threads)
print(json.dumps({"before": before, "threads": sorted({p["num_threads"] for p in threadpool_info()})}))
"""
    pools = _python(code, {"OMP_NUM_THREADS": "", "OPENBLAS_NUM_THREADS": "", "MKL_NUM_THREADS": ""})
    assert pools["threads"] == [1]
    assert pools["before"] != [1] or os.cpu_count() == 1  # the cap, not the environment, made it 1


#: what a ClientApp train message must not import: server-side libraries (k-means, Hungarian matching, OT,
#: plots) and torch.compile's machinery (1.7-2.3 s each per process in a deployment)
SERVER_ONLY = ("sklearn", "scipy", "pandas", "matplotlib", "ot", "torch._dynamo")


TRAIN_MESSAGE = """
import json, sys
from flwr.app import Context, RecordDict
from fedvq_app.data.client_data import normalize_batch
from fedvq_app.local_grid import full_run_config
from fedvq_app.registry import get_method, load_settings
from fedvq_app.training.loop import make_optimizer
config = full_run_config(method=sys.argv[1], **{"partition.kind": "iid"})
context = Context(run_id=1, node_id=2, node_config={"partition-id": 1, "num-partitions": 3}, state=RecordDict(),
                  run_config=config)
settings = load_settings(config)
client = get_method(sys.argv[1]).client(settings, context)
model = client.build_model()
model.train()
optimizer = make_optimizer(client.trainable_parameters(model), settings.train)
loss, _ = client.batch_loss(model, normalize_batch(client.data.train_x[:16]), client.data.train_y[:16])
loss.backward()
optimizer.step()
print(json.dumps({"mods": sorted(m for m in sys.argv[2].split(",") if m in sys.modules)}))
"""


def _train_message(method: str, cache: Path) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", TRAIN_MESSAGE, method, ",".join(SERVER_ONLY)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT), CACHE_ENV: str(cache)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])["mods"]


@pytest.fixture(scope="module")
def warm_cache(tmp_path_factory):
    """A host's partition cache after its first message (which loads the dataset: scikit-learn's digits)."""
    cache = tmp_path_factory.mktemp("partition-cache")
    _train_message("fedavg", cache)
    return cache


@pytest.mark.parametrize("method", ["fedavg", "fedvq", "cfl", "fusedspace", "fedloge", "scaffold"])
def test_a_train_message_of_every_neural_method_imports_no_server_side_library(warm_cache, method):
    """The app's part of a train message on a host whose cache is warm: resolve the method, build the client
    with its data, build the model, one optimizer step (FedVQ's quantizer library included, via models/vq.py)."""
    assert _train_message(method, warm_cache) == []
