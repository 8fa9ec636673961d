"""How far one machine goes: many k-means clients in-process, many virtual CNN clients under ``flwr run``.

``kmeans``: federated k-means through the real ServerApp/ClientApp on the in-process
grid (generated 2-D data, 100 rows per client), 1,000 and 10,000 clients. Each size
runs in a fresh interpreter twice, side by side: in the default environment (no
``OMP_NUM_THREADS``; the clients cap their own pools, ``train.num-threads``) and under
``OMP_NUM_THREADS=1``; reported: wall seconds, seconds per Lloyd round, peak memory
(PSS of the job's process), the ratio default / OMP=1, and that both runs agree.

``cnn``: FedAvg with the small CNN on digits (IID) through ``flwr run`` with 1,000
virtual SuperNodes, ``fraction-train=0.1`` and ``fraction-evaluate=0.1``: peak memory
of the run's processes (PSS of everything inheriting its FLWR_HOME), memory per
client, seconds per round, and the seconds partitioning takes at that size.

``partitioning``: flwr-datasets partitioners at 1,000 clients on digits, including
Dirichlet with a minimum partition size (a peer framework loops forever there):
seconds until a partition or a one-line error.

    python bench/scale.py kmeans --sizes 1000 10000
    python bench/scale.py cnn --clients 1000 --rounds 3
    python bench/scale.py partitioning
    python bench/scale.py kmeans --quick       # smoke test: 50 clients
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import MemorySampler, emit, rounds_of  # noqa: E402

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

KMEANS_JOB = """
import json, sys, time
from data_gen.generate_test_data import GeneratorOptions, generate, write
from fedvq_app.client_app import app as client_app
from fedvq_app.local_grid import full_run_config, run_local
from fedvq_app.server_app import app as server_app
clients, work, threads, max_rounds, n_init = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), \
    int(sys.argv[5])
path = f"{work}/data_{clients}"
import pathlib
if not pathlib.Path(path, f"client_{clients - 1}.npz").is_file():
    write(generate(GeneratorOptions(num_clients=clients, samples_per_client=100, num_features=2, num_clusters=3,
                                    random_state=0)), path)
name = f"kmeans_{clients}_{time.time_ns()}"
config = full_run_config(method="kmeans", **{"log-dir": f"{work}/logs", "experiment-name": name,
    "kmeans.data-source": "generated", "kmeans.data-path": path, "kmeans.k": 3, "kmeans.client-logs": False,
    "min-available-nodes": clients, "train.num-threads": threads, "kmeans.max-rounds": max_rounds,
    "kmeans.n-init": n_init})
import logging; logging.getLogger("flwr").setLevel(logging.WARNING)
import resource
started, cpu_started = time.time(), resource.getrusage(resource.RUSAGE_SELF)
run_local(server_app, client_app, clients, config)
elapsed, cpu = time.time() - started, resource.getrusage(resource.RUSAGE_SELF)
summary = json.loads(pathlib.Path(work, "logs", name, "summary.json").read_text())
print(json.dumps({"job_s": elapsed, "cpu_s": cpu.ru_utime + cpu.ru_stime - cpu_started.ru_utime - cpu_started.ru_stime,
                  "rounds": summary["rounds"], "inertia": summary["inertia"],
                  "num_clients": summary["num_clients"], "heavy_modules": sorted(
                      m for m in ("torch", "flwr_datasets", "datasets") if m in sys.modules)}))
"""


def kmeans_once(clients: int, work: Path, omp_one: bool, threads: int, max_rounds: int = 100, n_init: int = 10) -> dict:
    """One in-process k-means job in a fresh interpreter; its own peak PSS."""
    marker = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    env.update({"PYTHONPATH": str(ROOT), "FEDVQ_BENCH_JOB": marker})
    if omp_one:
        env.update(dict.fromkeys(THREAD_VARIABLES, "1"))
    started = time.time()
    with MemorySampler(interval_s=0.25, env_marker=f"FEDVQ_BENCH_JOB={marker}") as memory:
        done = subprocess.run(
            [sys.executable, "-c", KMEANS_JOB, str(clients), str(work), str(threads), str(max_rounds), str(n_init)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=7200,
        )
    if done.returncode != 0:
        return {"completed": False, "tail": done.stderr[-1500:]}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {
        "completed": True,
        "process_s": time.time() - started,
        **result,
        "s_per_round": result["job_s"] / max(result["rounds"], 1),
        "peak_pss_mib": memory.peak / 2**20,
    }


def bench_kmeans(args) -> None:
    sizes = [50] if args.quick else args.sizes
    with tempfile.TemporaryDirectory() as tmp:
        for clients in sizes:
            compare = clients <= args.compare_up_to
            kinds = ["default", "omp1"] if compare else ["default"]
            if args.uncapped and compare:  # no cap at all (train.num-threads=0), default environment
                kinds.append("uncapped")
            # side by side, same session, interleaved (default, OMP=1, default, OMP=1, ...) so that a
            # change in the machine's load hits both; the median of each kind is compared
            runs: dict[str, list[dict]] = {kind: [] for kind in kinds}
            for _ in range(args.repeats if compare else 1):
                for kind in kinds:
                    runs[kind].append(
                        kmeans_once(
                            clients,
                            Path(tmp),
                            omp_one=kind == "omp1",
                            threads=0 if kind == "uncapped" else args.threads,
                            max_rounds=args.max_rounds,
                            n_init=args.n_init,
                        )
                    )
            ok = all(r["completed"] for rs in runs.values() for r in rs)
            median = {kind: float(np.median([r["job_s"] for r in rs])) if ok else None for kind, rs in runs.items()}
            median_cpu = {kind: float(np.median([r["cpu_s"] for r in rs])) if ok else None for kind, rs in runs.items()}
            inertias = {r.get("inertia") for rs in runs.values() for r in rs}
            figures = {
                "clients": clients,
                "rows_per_client": 100,
                "features": 2,
                "train_num_threads": args.threads,
                "runs": runs,
                "median_job_s": median,
                "median_cpu_s": median_cpu,
                "max_rounds": args.max_rounds,
                "n_init": args.n_init,
                "cpu_ratio_default_vs_omp1": median_cpu["default"] / median_cpu["omp1"] if ok and compare else None,
                "completed": ok,
                "ratio_default_vs_omp1": median["default"] / median["omp1"] if ok and compare else None,
                "ratio_uncapped_vs_omp1": median["uncapped"] / median["omp1"] if ok and "uncapped" in median else None,
                "same_result": ok and len(inertias) == 1,
                "peak_pss_mib": max(r.get("peak_pss_mib", 0) for rs in runs.values() for r in rs),
                "targets": {"ratio_default_vs_omp1_at_most": 1.2, "peak_pss_mib_at_most": 350},
                "note": "machine shared with other jobs: compare only the ratio, measured side by side",
            }
            emit("scale_kmeans", figures, quick=args.quick)


def partitioning_seconds(kind: str, clients: int, **partition) -> dict:
    """Seconds flwr-datasets takes to partition digits' training pool into ``clients`` shares."""
    from fedvq_app.config import ConfigError  # noqa: PLC0415
    from fedvq_app.data.datasets import load_image_data  # noqa: PLC0415
    from fedvq_app.data.partition import partition_indices  # noqa: PLC0415
    from fedvq_app.local_grid import full_run_config  # noqa: PLC0415
    from fedvq_app.registry import load_settings

    settings = load_settings(full_run_config(**{"partition.kind": kind, **partition}))
    labels = load_image_data(settings.dataset, settings.seed).train_y
    started = time.time()
    try:
        parts = partition_indices(labels, settings.partition, clients, settings.seed)
        outcome = {"ok": True, "min_size": int(min(map(len, parts))), "max_size": int(max(map(len, parts)))}
    except ConfigError as err:
        outcome = {"ok": False, "error": str(err)}
    return {
        "kind": kind,
        "clients": clients,
        "samples": int(len(labels)),
        **partition,
        "seconds": time.time() - started,
        **outcome,
    }


def bench_partitioning(args) -> None:
    clients = 50 if args.quick else args.clients
    cases = [
        partitioning_seconds("iid", clients),
        partitioning_seconds("dirichlet", clients, **{"partition.alpha": 0.5, "partition.min-partition-size": 0}),
        partitioning_seconds("dirichlet", clients, **{"partition.alpha": 0.5, "partition.min-partition-size": 1}),
        partitioning_seconds("dirichlet", clients, **{"partition.alpha": 100.0, "partition.min-partition-size": 1}),
    ]
    emit(
        "scale_partitioning",
        {"cases": cases, "target": "no case loops: each ends in bounded time with a partition or an error"},
        quick=args.quick,
    )


START_SUPERLINK = """
import sys
import flwr.cli.local_superlink as local
local.LOCAL_SUPERLINK_STARTUP_TIMEOUT = float(sys.argv[1])  # flwr's own 15 s is too short on a busy host
local._start_local_superlink()
"""


def flwr_run_patient(config: dict, home: Path, federation: str, timeout: float, start_timeout: float = 600.0):
    """``flwr run`` with its local SuperLink started beforehand, given ``start_timeout`` s to come up.

    ``flwr run`` gives the SuperLink it starts a fixed 15 s; on a loaded 2-core host it
    fails there. The same command (Flower's own function) started first with a longer
    wait leaves a SuperLink that ``flwr run`` finds on the same ports and uses.
    """
    from fedvq_app.simulation import FlwrRun, private_superlink_env, run_config_arg, stop_daemons  # noqa: PLC0415

    env = {**os.environ, **private_superlink_env(home)}
    started = time.time()
    try:
        subprocess.run(
            [sys.executable, "-c", START_SUPERLINK, str(start_timeout)],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=start_timeout + 60,
            check=True,
        )
        cmd = [
            "flwr",
            "run",
            ".",
            "--stream",
            "--federation-config",
            federation,
            "--run-config",
            run_config_arg(config),
        ]
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        return FlwrRun(done.returncode, time.time() - started, done.stdout + done.stderr)
    finally:
        stop_daemons(home)


def bench_cnn(args) -> None:
    clients, rounds = (20, 1) if args.quick else (args.clients, args.rounds)
    partition = partitioning_seconds("iid", clients)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        name = f"scale_cnn_{clients}_{int(time.time())}"
        config = {
            "method": "fedavg",
            "model.name": "cnn",
            "num-server-rounds": rounds,
            "partition.kind": "iid",
            "train.local-epochs": 1,
            "fraction-train": args.fraction,
            "fraction-evaluate": args.fraction,
            "log-dir": str(workdir / "logs"),
            "experiment-name": name,
        }
        home = workdir / f"home_{name}"
        federation = f"num-supernodes={clients} {args.federation_extra}".strip()
        with MemorySampler(env_marker=f"FLWR_HOME={home}") as memory:
            run = flwr_run_patient(config, home, federation, timeout=args.timeout)
        folder = workdir / "logs" / name
        done = (folder / "summary.json").is_file()
        per_round = [r["wall_time_s"] for r in rounds_of(folder)] if done else []
        summary = json.loads((folder / "summary.json").read_text()) if done else {}
    emit(
        "scale_cnn",
        {
            "clients": clients,
            "rounds": rounds,
            "fraction_train": args.fraction,
            "fraction_evaluate": args.fraction,
            "federation": federation,
            "completed": done,
            "returncode": run.returncode,
            "status": run.status,  # flwr run exits 0 for any run that started; the run's own status says more
            "total_s": run.wall_s,
            "per_round_s": per_round,
            "steady_per_round_s": sum(per_round[1:]) / (len(per_round) - 1) if len(per_round) > 1 else None,
            "partitioning_s": partition["seconds"],
            "peak_memory_gib": memory.peak_above_baseline_gib,
            "memory_per_client_mib": memory.peak_above_baseline_gib * 1024 / clients,
            "final_accuracy": summary.get("final", {}).get("accuracy"),
            "tail": "" if done else run.output[-1500:],
            "target": "1,000 virtual clients complete 3 rounds in 24 GB",
        },
        quick=args.quick,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    km = sub.add_parser("kmeans", help="in-process federated k-means, default environment vs OMP_NUM_THREADS=1")
    km.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    km.add_argument("--threads", type=int, default=1, help="train.num-threads of the clients")
    km.add_argument("--uncapped", action="store_true", help="also run with train.num-threads=0 (no cap)")
    km.add_argument("--max-rounds", type=int, default=100, help="kmeans.max-rounds")
    km.add_argument("--n-init", type=int, default=10, help="kmeans.n-init")
    km.add_argument("--repeats", type=int, default=2, help="interleaved repeats of each compared kind")
    km.add_argument(
        "--compare-up-to", type=int, default=1000, help="larger federations run once, in the default environment only"
    )
    km.add_argument("--quick", action="store_true")
    cnn = sub.add_parser("cnn", help="FedAvg CNN, many virtual clients under flwr run")
    cnn.add_argument("--clients", type=int, default=1000)
    cnn.add_argument("--rounds", type=int, default=3)
    cnn.add_argument("--fraction", type=float, default=0.1, help="fraction-train and fraction-evaluate")
    cnn.add_argument("--federation-extra", default="", help="e.g. client-resources-num-cpus=1")
    cnn.add_argument("--timeout", type=float, default=3600)
    cnn.add_argument("--quick", action="store_true")
    part = sub.add_parser("partitioning", help="flwr-datasets partitioners at many clients")
    part.add_argument("--clients", type=int, default=1000)
    part.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    {"kmeans": bench_kmeans, "cnn": bench_cnn, "partitioning": bench_partitioning}[args.what](args)


if __name__ == "__main__":
    from fedvq_app.errors import cli  # noqa: PLC0415

    sys.exit(cli(main))
