"""How far one machine goes: many k-means clients in-process, many virtual CNN clients under ``flwr run``.

``kmeans``: federated k-means through the real ServerApp/ClientApp on the in-process
grid (generated 2-D data, 100 rows per client, k = 4), 1,000 and 10,000 clients, every
other key at its default, ``OMP_NUM_THREADS=1``, each job in a fresh interpreter under
``/usr/bin/time``: wall seconds, max RSS, experiment folder MB and files, rounds.jsonl and
summary.json sizes, longest console line, rounds / inertia / ARI. ``--baseline <checkout>``
runs another checkout (e.g. a ``git worktree`` of an older commit) on the same data just
before, for the wall ratio and the same-result check.

``cnn``: FedAvg with the small CNN on digits (IID) through ``flwr run`` with 1,000
virtual SuperNodes, ``fraction-train=0.1`` and ``fraction-evaluate=0.1``: peak memory
of the run's processes (PSS of everything inheriting its FLWR_HOME), memory per
client, seconds per round, and the seconds partitioning takes at that size.

``partitioning``: flwr-datasets partitioners at 1,000 clients on digits, including
Dirichlet with a minimum partition size (a peer framework loops forever there):
seconds until a partition or a one-line error.

    python bench/scale.py kmeans --sizes 1000 10000 --baseline /path/to/worktree-of-old-commit
    python bench/scale.py cnn --clients 1000 --rounds 3
    python bench/scale.py partitioning
    python bench/scale.py kmeans --quick       # smoke test: 50 clients
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import MemorySampler, commit_of, emit, rounds_of  # noqa: E402

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

KMEANS_JOB = """
import json, pathlib, sys, time
from data_gen.generate_test_data import GeneratorOptions, generate, write
from fedvq_app.client_app import app as client_app
from fedvq_app.local_grid import full_run_config, run_local
from fedvq_app.server_app import app as server_app
clients, work, k, name, result = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
path = f"{work}/data_{clients}_{k}"
if not pathlib.Path(path, f"client_{clients - 1}.npz").is_file():
    write(generate(GeneratorOptions(num_clients=clients, samples_per_client=100, num_features=2, num_clusters=k,
                                    random_state=0)), path)
# every other key at its pyproject default (client logs, n-init, max-rounds, logging at INFO)
config = full_run_config(method="kmeans", **{"log-dir": f"{work}/logs", "experiment-name": name,
    "kmeans.data-source": "generated", "kmeans.data-path": path, "kmeans.k": k})
started = time.time()
run_local(server_app, client_app, clients, config)
elapsed = time.time() - started
summary = json.loads(pathlib.Path(work, "logs", name, "summary.json").read_text())
pathlib.Path(result).write_text(json.dumps({"job_s": elapsed, "rounds": summary["rounds"],
    "inertia": summary["inertia"], "ari": summary.get("ari"), "num_clients": summary["num_clients"]}))
"""


def folder_figures(folder: Path) -> dict:
    """Size and file count of an experiment folder, and the size of its two JSON records."""
    files = [p for p in folder.rglob("*") if p.is_file()]

    def size(name: str) -> float | None:
        path = folder / name
        return path.stat().st_size / 1e6 if path.is_file() else None

    return {
        "folder_mb": sum(p.stat().st_size for p in files) / 1e6,
        "files": len(files),
        "rounds_jsonl_mb": size("rounds.jsonl"),
        "summary_json_kb": (size("summary.json") or 0) * 1e3,
    }


def kmeans_once(clients: int, work: Path, code: Path, k: int) -> dict:
    """One in-process k-means job of checkout ``code`` at the defaults in a fresh interpreter.

    ``/usr/bin/time -f "%e %M"`` gives wall seconds and max RSS (what a user sees);
    OMP_NUM_THREADS=1 (numpy/scikit-learn pools on tiny arrays cost 50x). The console
    (stdout + stderr, Flower's INFO log included) is kept to find its longest line.
    """
    env = {k_: v for k_, v in os.environ.items() if k_ not in THREAD_VARIABLES}
    env.update({"PYTHONPATH": str(code), **dict.fromkeys(THREAD_VARIABLES, "1")})
    name = f"kmeans_{clients}_{time.time_ns()}"
    commit = commit_of(code)  # before the job: what it imports
    result, timing = work / f"{name}.json", work / f"{name}.time"
    cmd = ["/usr/bin/time", "-o", str(timing), "-f", "%e %M %U %S", sys.executable, "-c", KMEANS_JOB]
    done = subprocess.run(
        [*cmd, str(clients), str(work), str(k), name, str(result)],
        cwd=code,
        env=env,
        capture_output=True,
        text=True,
        timeout=7200,
    )
    console = (done.stdout + done.stderr).splitlines()
    if done.returncode != 0 or not result.is_file():
        return {"completed": False, "tail": done.stderr[-1500:]}
    wall, max_rss_kib, user, system = timing.read_text().split()[-4:]
    folder = work / "logs" / name
    figures = {
        "completed": True,
        "commit": commit,
        "process_wall_s": float(wall),
        "max_rss_mib": int(max_rss_kib) / 1024,
        "cpu_s": float(user) + float(system),
        **json.loads(result.read_text()),
        **folder_figures(folder),
        "console_lines": len(console),
        "longest_console_line": max(map(len, console), default=0),
    }
    shutil.rmtree(folder, ignore_errors=True)  # 10,000 clients of an old checkout leave 700 MB
    return figures


def bench_kmeans(args) -> None:
    sizes = args.sizes or ([50] if args.quick else [1000, 10000])
    codes = {"this": ROOT, **({"baseline": Path(args.baseline).resolve()} if args.baseline else {})}
    with tempfile.TemporaryDirectory() as tmp:
        for clients in sizes:
            # side by side in one session, interleaved (baseline, this, baseline, this...) on the same data
            # file, so that a change in the machine's load hits both; the run with the (lower) median wall is kept
            tries: dict[str, list[dict]] = {label: [] for label in reversed(codes)}
            for _ in range(args.repeats):
                for label in tries:
                    tries[label].append(kmeans_once(clients, Path(tmp), codes[label], args.k))
            runs = {label: median_run(found) for label, found in tries.items()}
            this, base = runs["this"], runs.get("baseline")
            both = base is not None and base["completed"] and this["completed"]
            figures = {
                "clients": clients,
                "rows_per_client": 100,
                "features": 2,
                "k": args.k,
                "settings": "every other key at its default; OMP_NUM_THREADS=1",
                "runs": runs,
                "completed": this["completed"],
                "repeats": args.repeats,
                "walls": {label: [x.get("process_wall_s") for x in found] for label, found in tries.items()},
                "wall_ratio_vs_baseline": this["process_wall_s"] / base["process_wall_s"] if both else None,
                "cpu_ratio_vs_baseline": this["cpu_s"] / base["cpu_s"] if both else None,
                "same_result_as_baseline": (
                    all(same(this[key], base[key]) for key in ("rounds", "inertia", "ari")) if both else None
                ),
                "targets": {
                    "folder_mb_at_most": 20 * clients / 10000,
                    "files_at_most": max(200 * clients // 10000, 20),
                    "longest_console_line_at_most": 300,
                    "summary_json_kb_at_most": 100 * clients / 10000,
                    "max_rss_mib_at_most": 350,
                    "wall_ratio_vs_baseline_at_most": 0.5,
                },
            }
            emit("scale_kmeans", figures, quick=args.quick)


def median_run(runs: list[dict]) -> dict:
    """The completed run with the median wall time, the lower of the two middle ones for an even count
    (a failed run when none completed)."""
    done = sorted((r for r in runs if r["completed"]), key=lambda r: r["process_wall_s"])
    return done[(len(done) - 1) // 2] if done else runs[0]


def same(a, b) -> bool:
    """Equal up to float noise (the inertia is a sum over up to a million rows)."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9)
    return a == b


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
        outputs = folder_figures(folder) if folder.is_dir() else {}
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
            "process_peaks": memory.process_peaks_mib,
            "memory_per_client_mib": memory.peak_above_baseline_gib * 1024 / clients,
            "final_accuracy": summary.get("final", {}).get("accuracy"),
            **outputs,
            "longest_console_line": max(map(len, run.output.splitlines()), default=0),
            "longest_console_line_head": max(run.output.splitlines(), key=len, default="")[:160],
            "tail": "" if done else run.output[-1500:],
            "target": "1,000 virtual clients complete 3 rounds in 24 GB",
        },
        quick=args.quick,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    km = sub.add_parser("kmeans", help="in-process federated k-means at the defaults: wall, RSS, folder, console")
    km.add_argument("--sizes", type=int, nargs="+", help="clients (default 1000 10000; --quick: 50)")
    km.add_argument("--k", type=int, default=4, help="kmeans.k and the generator's clusters")
    km.add_argument("--baseline", default="", help="another checkout (git worktree) run side by side, e.g. main")
    km.add_argument("--repeats", type=int, default=1, help="interleaved runs of each checkout; the median wall is kept")
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
