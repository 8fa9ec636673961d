"""Flower's overhead: the same FedAvg job as a plain PyTorch loop and through ``flwr run``.

Both run digits, the same partitions, model, epochs, rounds and seeds, and both
evaluate every client on its validation split and the test set each round. The
plain loop is the floor; ``flwr run`` is measured per round (from the server's
rounds.jsonl) and as start-up (everything else), for several Flower settings.

    python bench/overhead.py            # 10 clients, 5 rounds, 3 Flower settings
    python bench/overhead.py --quick    # smoke test: 3 clients, 2 rounds, 1 setting
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import emit, rounds_of  # noqa: E402
from fedvq_app.aggregation.weighted import weighted_average  # noqa: E402
from fedvq_app.data.client_data import eval_loader, load_client_data, train_loader  # noqa: E402
from fedvq_app.local_grid import full_run_config  # noqa: E402
from fedvq_app.models import build_classifier  # noqa: E402
from fedvq_app.registry import load_settings  # noqa: E402
from fedvq_app.simulation import flwr_run  # noqa: E402
from fedvq_app.training.device import configure_threads  # noqa: E402
from fedvq_app.training.loop import evaluate, make_optimizer, train_epochs  # noqa: E402


def plain_loop(config: dict, clients: int) -> list[float]:
    """FedAvg in one process without Flower; returns seconds per round."""
    settings = load_settings(config)
    configure_threads(settings.train.num_threads)  # the same threads a Flower client uses
    data = [load_client_data(settings, i, clients) for i in range(clients)]
    torch.manual_seed(settings.seed)
    model = build_classifier(settings.model, data[0].train_x.shape[1], settings.dataset.size, data[0].num_classes)
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    device = torch.device("cpu")
    times = []
    for rnd in range(1, settings.num_server_rounds + 1):
        started = time.time()
        states, weights = [], []
        for client in data:
            model.load_state_dict(global_state)
            gen = torch.Generator().manual_seed(settings.seed * 1000 + rnd * 100 + client.partition_id)
            opt = make_optimizer(model.parameters(), settings.train)
            train_epochs(model, train_loader(client, settings, gen), opt, settings.train.local_epochs, device)
            states.append({k: v.numpy().copy() for k, v in model.state_dict().items()})
            weights.append(client.num_train)
        global_state = {k: torch.from_numpy(v) for k, v in weighted_average(states, weights).items()}
        model.load_state_dict(global_state)
        for client in data:
            evaluate(model, eval_loader(client.val_x, client.val_y), device, client.num_classes)
            evaluate(model, eval_loader(client.test_x, client.test_y), device, client.num_classes)
        times.append(time.time() - started)
    return times


def flower(config: dict, clients: int, federation_extra: str, workdir: Path) -> dict:
    """One ``flwr run``: per-round seconds, start-up seconds, total."""
    name = f"overhead_{int(time.time() * 1000)}"
    run = flwr_run(
        {**config, "log-dir": str(workdir / "logs"), "experiment-name": name},
        workdir / f"home_{name}",
        federation_config=f"num-supernodes={clients} {federation_extra}".strip(),
    ).raise_for_status()
    rounds = rounds_of(workdir / "logs" / name)
    per_round = [r["wall_time_s"] for r in rounds]
    return {
        "total_s": run.wall_s,
        "per_round_s": per_round,
        "startup_s": run.wall_s - sum(per_round),
    }


def steady(times: list[float]) -> float:
    """Mean seconds per round after the first (which pays one-off warm-up)."""
    return float(np.mean(times[1:] if len(times) > 1 else times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="3 clients, 2 rounds, default settings only")
    args = parser.parse_args()
    clients, rounds = (3, 2) if args.quick else (args.clients, args.rounds)
    settings_grid = {"flower defaults": ("", {})}
    if not args.quick:
        settings_grid |= {
            "1 CPU per client (2 parallel)": ("client-resources-num-cpus=1", {}),
            "1 CPU per client, 2 torch threads": ("client-resources-num-cpus=1", {"train.num-threads": 2}),
            "2 CPUs per client, 2 torch threads": ("client-resources-num-cpus=2", {"train.num-threads": 2}),
        }
    base = {"method": "fedavg", "num-server-rounds": rounds, "train.local-epochs": args.epochs}
    plain = plain_loop(full_run_config(**base), clients)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, (federation_extra, extra_config) in settings_grid.items():
            results[label] = flower({**base, **extra_config}, clients, federation_extra, Path(tmp))
    best = min(results, key=lambda k: steady(results[k]["per_round_s"]))
    emit(
        "overhead",
        {
            "clients": clients,
            "rounds": rounds,
            "local_epochs": args.epochs,
            "plain_per_round_s": steady(plain),
            "plain_rounds_s": plain,
            "flower": {
                k: {
                    **v,
                    "steady_per_round_s": steady(v["per_round_s"]),
                    "ratio_to_plain": steady(v["per_round_s"]) / steady(plain),
                }
                for k, v in results.items()
            },
            "best_setting": best,
            "best_ratio": steady(results[best]["per_round_s"]) / steady(plain),
            "target_ratio": 1.2,
        },
        quick=args.quick,
    )


if __name__ == "__main__":
    from fedvq_app.errors import cli  # noqa: PLC0415

    sys.exit(cli(main))
