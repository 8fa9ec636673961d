"""How far one 2-core machine goes: 10, 50 and 100 virtual clients through ``flwr run``.

For each federation size it runs FedAvg on digits (IID, so that 100 clients still
hold ~14 images each) and reports the peak memory of the run's own processes (PSS of everything
that inherits its FLWR_HOME, so other work on the machine does not count),
seconds per round, memory per client, and whether the run completed.

    python bench/scale.py                 # 10, 50, 100 clients, 3 rounds
    python bench/scale.py --quick         # smoke test: 4 clients, 1 round
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import MemorySampler, emit, rounds_of  # noqa: E402
from fedvq_app.simulation import flwr_run  # noqa: E402


def one_size(clients: int, rounds: int, workdir: Path, federation_extra: str) -> dict:
    name = f"scale_{clients}_{int(time.time())}"
    config = {
        "method": "fedavg",
        "num-server-rounds": rounds,
        "partition.kind": "iid",
        "train.local-epochs": 1,
        "log-dir": str(workdir / "logs"),
        "experiment-name": name,
    }
    home = workdir / f"home_{name}"
    with MemorySampler(env_marker=f"FLWR_HOME={home}") as memory:
        run = flwr_run(config, home, f"num-supernodes={clients} {federation_extra}".strip(),
                       timeout=3600)
    folder = workdir / "logs" / name
    done = (folder / "summary.json").is_file()
    per_round = [r["wall_time_s"] for r in rounds_of(folder)] if done else []
    return {
        "clients": clients,
        "completed": done,
        "returncode": run.returncode,
        "status": run.status,  # flwr run exits 0 for any run that started; the run's own status says more
        "total_s": run.wall_s,
        "per_round_s": per_round,
        "steady_per_round_s": sum(per_round[1:]) / (len(per_round) - 1) if len(per_round) > 1 else None,
        "peak_memory_gib": memory.peak_above_baseline_gib,  # PSS of this run's processes
        "memory_per_client_mib": memory.peak_above_baseline_gib * 1024 / clients,
        "tail": "" if done else run.output[-1500:],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--federation-extra", default="", help="e.g. client-resources-num-cpus=1")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    sizes, rounds = ([4], 1) if args.quick else (args.sizes, args.rounds)
    with tempfile.TemporaryDirectory() as tmp:
        for clients in sizes:
            figures = one_size(clients, rounds, Path(tmp), args.federation_extra)
            emit("scale", {**figures, "rounds": rounds, "federation_extra": args.federation_extra,
                           "target": "100 clients complete without running out of memory"}, quick=args.quick)


if __name__ == "__main__":
    from fedvq_app.errors import cli  # noqa: PLC0415

    sys.exit(cli(main))
