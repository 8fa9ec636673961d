"""Secure aggregation (secagg.mode=secaggplus): its cost per round and the results it keeps.

Three parts, each printing one JSON line per measurement (``bench/results/secagg_*.jsonl``):

* ``cost``: FedAvg on digits in-process (fedvq_app/local_grid.py) at 3, 10 and 50 clients, with and
  without secure aggregation, side by side in one session: bytes per round (train exchange and all;
  Flower's ``count_bytes`` of every record, from rounds.jsonl) and wall seconds per round;
* ``accuracy``: the final figures with and without secure aggregation, 3 seeds each, same budget:
  FedAvg and FedVQ (lloyd) mean test accuracy, k-means ARI on wine and on generated data;
* ``deployment``: the FedAvg job on a 3-SuperNode topology (scripts/local_topology.py, 127.0.0.1)
  with and without secure aggregation: wall seconds per round and bytes.

    python bench/secagg.py cost                 # 3, 10, 50 clients, 3 rounds each
    python bench/secagg.py accuracy             # 3 seeds
    python bench/secagg.py deployment           # 3 SuperNodes
    python bench/secagg.py cost --quick         # smoke test (3 clients, 2 rounds; not recorded)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")

from bench.common import emit, rounds_of  # noqa: E402
from fedvq_app.client_app import app as client_app  # noqa: E402
from fedvq_app.local_grid import full_run_config, run_local  # noqa: E402
from fedvq_app.server_app import app as server_app  # noqa: E402

MODES = ("off", "secaggplus")


def _job(logs: Path, name: str, clients: int, **overrides) -> tuple[dict, list[dict], float]:
    config = full_run_config(**{"log-dir": str(logs), "experiment-name": name, **overrides})
    started = time.time()
    run_local(server_app, client_app, clients, config)
    wall = time.time() - started
    return json.loads((logs / name / "summary.json").read_text()), rounds_of(logs / name), wall


def _per_round(rounds: list[dict]) -> dict:
    train = [r["communication"]["phases"].get("train", {}) for r in rounds]
    return {
        "wall_s_per_round": float(np.mean([r["wall_time_s"] for r in rounds])),
        "bytes_per_round": float(np.mean([r["communication"]["total_bytes"] for r in rounds])),
        "train_bytes_per_round": float(np.mean([t.get("sent", 0) + t.get("received", 0) for t in train])),
        "train_received_bytes_per_client": float(
            np.mean(
                [
                    t.get("received", 0) / max(r["communication"]["num_clients"], 1)
                    for t, r in zip(train, rounds, strict=True)
                ]
            )
        ),
        "messages_per_round": float(np.mean([sum(r["communication"]["messages"].values()) for r in rounds])),
    }


def cost(args) -> None:
    clients_list = [3] if args.quick else args.clients
    rounds = 2 if args.quick else args.rounds
    for clients in clients_list:
        with tempfile.TemporaryDirectory() as tmp:
            figures = {}
            for mode in MODES:
                _, per_round, _ = _job(
                    Path(tmp),
                    f"{mode}-{clients}",
                    clients,
                    method="fedavg",
                    **{"num-server-rounds": rounds, "train.local-epochs": 1, "secagg.mode": mode},
                )
                figures[mode] = _per_round(per_round)
            ratio = {
                key: figures["secaggplus"][key] / figures["off"][key]
                for key in ("wall_s_per_round", "bytes_per_round", "train_bytes_per_round")
            }
            emit(
                "secagg_cost",
                {
                    "runtime": "in-process",
                    "method": "fedavg",
                    "clients": clients,
                    "rounds": rounds,
                    **figures,
                    "ratio": ratio,
                },
                args.quick,
            )


def _stats(values: list[float]) -> dict:
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "values": values}


def accuracy(args) -> None:
    seeds = args.seeds[:1] if args.quick else args.seeds
    rounds = 2 if args.quick else args.rounds
    neural = {
        "fedavg": {"method": "fedavg", "num-server-rounds": rounds, "train.local-epochs": 1},
        "fedvq-lloyd": {"method": "fedvq", "num-server-rounds": rounds, "train.local-epochs": 1},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for label, config in neural.items():
            finals: dict[str, list[float]] = {mode: [] for mode in MODES}
            for seed in seeds:
                for mode in MODES:
                    summary, _, _ = _job(
                        Path(tmp),
                        f"{label}-{mode}-{seed}",
                        args.neural_clients,
                        seed=seed,
                        **config,
                        **{"secagg.mode": mode},
                    )
                    finals[mode].append(summary["final"]["accuracy"])
            gap = [s - o for s, o in zip(finals["secaggplus"], finals["off"], strict=True)]
            emit(
                "secagg_accuracy",
                {
                    "job": label,
                    "clients": args.neural_clients,
                    "rounds": rounds,
                    "seeds": seeds,
                    **{mode: _stats(v) for mode, v in finals.items()},
                    "gap_pt": _stats([100 * g for g in gap]),
                },
                args.quick,
            )
        generated = _generated(Path(tmp) / "data")
        for source in ("wine", "generated"):
            aris: dict[str, list[float]] = {mode: [] for mode in MODES}
            for seed in seeds:
                for mode in MODES:
                    extra = {"kmeans.data-path": generated} if source == "generated" else {}
                    summary, _, _ = _job(
                        Path(tmp),
                        f"kmeans-{source}-{mode}-{seed}",
                        3,
                        method="kmeans",
                        seed=seed,
                        **{"kmeans.data-source": source, "kmeans.init": "random", "secagg.mode": mode, **extra},
                    )
                    aris[mode].append(summary["kmeans"]["ari"])
            emit(
                "secagg_accuracy",
                {
                    "job": f"kmeans-{source}",
                    "clients": 3,
                    "seeds": seeds,
                    **{mode: _stats(v) for mode, v in aris.items()},
                    "ari_equal": aris["off"] == aris["secaggplus"],
                },
                args.quick,
            )


def _generated(folder: Path) -> str:
    from data_gen.generate_test_data import GeneratorOptions, generate, write

    opts = GeneratorOptions(num_clients=3, samples_per_client=60, num_features=2, num_clusters=3, random_state=4)
    return str(write(generate(opts), folder))


def deployment(args) -> None:
    spec = importlib.util.spec_from_file_location("local_topology", ROOT / "scripts" / "local_topology.py")
    local_topology = sys.modules.setdefault("local_topology", importlib.util.module_from_spec(spec))
    spec.loader.exec_module(local_topology)
    rounds = 2 if args.quick else args.rounds
    with tempfile.TemporaryDirectory() as tmp:
        logs = Path(tmp) / "experiments"
        topology = local_topology.LocalTopology(num_supernodes=3, directory=Path(tmp) / "topology")
        figures = {}
        with topology:
            for mode in MODES:
                name = f"deploy-{mode}"
                config = {
                    "method": "fedavg",
                    "num-server-rounds": rounds,
                    "train.local-epochs": 1,
                    "partition.kind": "iid",
                    "round-timeout": 600.0,
                    "secagg.mode": mode,
                    "log-dir": str(logs),
                    "experiment-name": name,
                }
                started = time.time()
                code = topology.run(config, timeout=1800, log_name=name)
                if code != 0 or not (logs / name / "summary.json").is_file():
                    raise SystemExit(f"{name}: flwr run exited {code}")
                per_round = rounds_of(logs / name)
                figures[mode] = {
                    **_per_round(per_round[1:] or per_round),  # the first round pays start-up
                    "first_round_wall_s": per_round[0]["wall_time_s"],
                    "job_wall_s": time.time() - started,
                    "final_accuracy": json.loads((logs / name / "summary.json").read_text())["final"]["accuracy"],
                }
    emit(
        "secagg_cost",
        {
            "runtime": "deployment (3 SuperNodes, 127.0.0.1)",
            "method": "fedavg",
            "clients": 3,
            "rounds": rounds,
            **figures,
            "ratio": {
                key: figures["secaggplus"][key] / figures["off"][key] for key in ("wall_s_per_round", "bytes_per_round")
            },
        },
        args.quick,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=("cost", "accuracy", "deployment"))
    parser.add_argument("--clients", type=int, nargs="+", default=[3, 10, 50])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--neural-clients", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    {"cost": cost, "accuracy": accuracy, "deployment": deployment}[args.part](args)


if __name__ == "__main__":
    main()
