"""Seconds per round and the fixed per-message ClientApp cost in a real 3-SuperNode topology (FedAvg).

In a deployment every ClientApp message is a fresh Python process on the SuperNode:
what the ClientApp imports and recomputes (the method's modules, the dataset, the
partition) is paid per message, per round, at every site. This benchmark brings up
``scripts/local_topology.py`` (one SuperLink, 3 SuperNodes on 127.0.0.1) for each
checkout given -- e.g. today's main and this branch, side by side in one session --
and runs the same FedAvg job on digits twice:

* ``train.local-epochs=0``: a round is then almost only the fixed cost of its two
  messages per node (train, evaluate); that round time / 2 is the fixed per-message
  ClientApp overhead (the nodes work in parallel);
* ``train.local-epochs=1``: a round with real training, for scale;
* the **Flower floor**: ``bench/floor_app`` (a no-op Flower app whose ClientApp imports
  only Flower and echoes the arrays, the same two messages per node per round with an
  array payload of the FedAvg model's size) on the same SuperLink and SuperNodes.

A 0-epoch FedAvg round is Flower's floor (SuperNode polling, SuperExec polling, process
start, ``import flwr``, transport) plus the ClientApp's own part (imports, data, model,
evaluation). The ClientApp's fixed per-message overhead is therefore
``(FedAvg round at 0 epochs - floor round) / 2``; the raw ``round / 2`` is reported too.
Wall seconds on a shared 2-core machine swell with whatever else runs (3 ClientApp processes
start at once on 2 cores), so each job also counts the **CPU seconds** of its ClientApp
processes (``ClientAppCpu``: /proc, the SuperNodes' process groups only): steady CPU per
message (first round left out, as for the wall figures) of the FedAvg job minus that of the
floor is the same overhead in CPU seconds, which the machine's load does not inflate.

The first round (SuperNode start-up, cold caches) is reported apart; the steady
figures are means over the later rounds.

    python bench/deployment.py --checkout /work/wt-17-base --checkout .   # before, after
    python bench/deployment.py --checkout BASE --checkout . --checkout . --checkout BASE  # A B B A, averaged
    python bench/deployment.py --quick                                   # this checkout, 2 rounds
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import emit  # noqa: E402


def _topology_class(checkout: Path):
    """``LocalTopology`` of a checkout (its own script, so that its own code runs)."""
    spec = importlib.util.spec_from_file_location(
        f"local_topology_{abs(hash(str(checkout)))}", checkout / "scripts" / "local_topology.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module.LocalTopology


def _rounds(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "rounds.jsonl").read_text().splitlines()]


def figures_of(folder: Path) -> dict:
    """Per-round figures of one finished job's experiment folder."""
    per_round = [r["wall_time_s"] for r in _rounds(folder)]
    steady = per_round[1:] or per_round
    return {
        "completed": True,
        "per_round_s": per_round,
        "first_round_s": per_round[0],
        "steady_round_s": sum(steady) / len(steady),
    }


FLOOR_APP = ROOT / "bench" / "floor_app"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class ClientAppCpu:
    """CPU seconds (user + system) of the ClientApp processes of a topology's SuperNodes, while it runs.

    A thread lists /proc every ``interval_s``; a process counts when its command is
    ``flwr-clientapp`` and its process group is one of the SuperNodes' (each SuperNode leads
    its own group, and its ClientApp processes inherit it), so nobody else's processes on the
    shared machine are counted, and only processes started after the counter (not the last
    messages of an earlier job, which may still be exiting). On leaving, it waits for the
    counted processes to end (at most ``drain_s``). Each process's last sample is kept: at most
    ``interval_s`` of a process's final CPU is missed, alike for every checkout. Unlike wall
    seconds, CPU seconds do not grow with the other jobs on the machine.
    """

    def __init__(self, supernode_pids, interval_s: float = 0.1, drain_s: float = 20.0) -> None:
        self.groups = {int(p) for p in supernode_pids}
        self.interval_s, self.drain_s = interval_s, drain_s
        self.cpu_s: dict[tuple[int, int], float] = {}  # (pid, start in clock ticks since boot): CPU s
        self._live: set[tuple[int, int]] = set()
        with open("/proc/uptime") as uptime:
            self._since_ticks = float(uptime.read().split()[0]) * CLOCK_TICKS
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _sample(self) -> None:
        live = set()
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as stat:
                    head, _, rest = stat.read().rpartition(b")")
            except OSError:
                continue
            fields = rest.split()  # fields[0] is the state: field 3 of proc(5)
            # PIDs are reused (pid_max may be 32768): a process is its PID and its start time
            process = (int(entry.name), int(fields[19]))
            if (
                int(fields[2]) not in self.groups
                or process[1] < self._since_ticks
                or fields[0] == b"Z"
                or head.partition(b"(")[2] != b"flwr-clientapp"
            ):  # e.g. forked, not yet exec'd
                continue
            self.cpu_s[process] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
            live.add(process)
        self._live = live

    def _watch(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval_s)

    def __enter__(self) -> ClientAppCpu:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        deadline = time.monotonic() + self.drain_s
        while self._live and time.monotonic() < deadline:  # the last messages' processes, to their end
            time.sleep(self.interval_s)
            self._sample()

    def figures(self, messages: int, first_round_messages: int) -> dict:
        """CPU seconds per message sent: over all rounds, and steady (the first round's processes,
        the first ``first_round_messages`` to start, left out, as the wall figures leave the first
        round out); each ClientApp process's CPU seconds in order of start."""
        ordered = [self.cpu_s[process] for process in sorted(self.cpu_s, key=lambda p: (p[1], p[0]))]
        later = ordered[first_round_messages:]
        steady = sum(later) / (messages - first_round_messages) if messages > first_round_messages else None
        return {
            "cpu_per_message_s": sum(ordered) / messages,
            "steady_cpu_per_message_s": steady,
            "clientapp_processes": len(ordered),
            "clientapp_cpu_s": [round(v, 2) for v in ordered],
        }


def _supernode_pids(topology) -> list[int]:
    return [pid for name, pid in topology.state.pids.items() if name.startswith("supernode-")]


def _with_overhead(results: dict) -> dict:
    zero = results.get("epochs_0", {})
    if zero.get("completed"):
        results["per_message_s"] = zero["steady_round_s"] / 2  # train + evaluate per node per round
        floor = results.get("floor", {})
        if floor.get("completed"):
            # what the ClientApp adds to Flower's own per-message cost
            results["per_message_overhead_s"] = (zero["steady_round_s"] - floor["steady_round_s"]) / 2
            if zero.get("steady_cpu_per_message_s") is not None and floor.get("steady_cpu_per_message_s") is not None:
                results["cpu_overhead_per_message_s"] = (
                    zero["steady_cpu_per_message_s"] - floor["steady_cpu_per_message_s"]
                )
    return results


def fedavg_payload_floats() -> int:
    """Number of values in the FedAvg job's global model (what each of its messages carries down)."""
    from fedvq_app.data.datasets import dataset_info  # noqa: PLC0415
    from fedvq_app.local_grid import full_run_config  # noqa: PLC0415
    from fedvq_app.registry import (
        get_method,  # noqa: PLC0415
        load_settings,  # noqa: PLC0415
    )

    settings = load_settings(full_run_config(method="fedavg", **{"partition.kind": "iid"}))
    model = get_method("fedavg").build_model(settings, dataset_info(settings.dataset, settings.seed))
    return int(sum(t.numel() for t in model.state_dict().values()))


def measure_floor(topology, rounds: int, floats: int, work: Path, name: str) -> dict:
    """The no-op app's rounds on this topology, with the FedAvg job's array payload."""
    result = work / f"{name}.json"
    command = [
        "run",
        str(FLOOR_APP),
        topology.connection,
        "--stream",
        "--run-config",
        f"num-server-rounds={rounds} payload-floats={floats} result-file='{result}'",
    ]
    with ClientAppCpu(_supernode_pids(topology)) as cpu:
        done = topology.flwr(*command, timeout=1800)
    if not result.is_file():
        return {"completed": False, "tail": (done.stdout + done.stderr)[-1500:]}
    per_round = json.loads(result.read_text())["per_round_s"]
    steady = per_round[1:] or per_round
    return {
        "completed": True,
        "per_round_s": per_round,
        "first_round_s": per_round[0],
        "steady_round_s": sum(steady) / len(steady),
        "payload_floats": floats,
        **cpu.figures(rounds * topology.num_supernodes * 2, first_round_messages=topology.num_supernodes * 2),
    }


def measure_checkout(checkout: Path, rounds: int, epochs: list[int], work: Path) -> dict:
    """Bring a topology up with this checkout's code, run the jobs, bring it down."""
    checkout = checkout.resolve()
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "FEDVQ_CACHE_DIR")}
    os.environ["PYTHONPATH"] = str(checkout)  # the SuperNodes' ClientApp processes import this checkout
    os.environ["FEDVQ_CACHE_DIR"] = str(work / f"cache_{checkout.name}")  # starts cold (the base ignores it)
    results = {"checkout": str(checkout)}
    try:
        topology = _topology_class(checkout)(num_supernodes=3, directory=work / f"topology_{checkout.name}")
        with topology:
            for local_epochs in epochs:
                name = f"deploy_{checkout.name}_e{local_epochs}"
                config = {
                    "method": "fedavg",
                    "num-server-rounds": rounds,
                    "train.local-epochs": local_epochs,
                    "partition.kind": "iid",
                    "round-timeout": 600.0,
                    "log-dir": str(work / "logs"),
                    "experiment-name": name,
                }
                with ClientAppCpu(_supernode_pids(topology)) as cpu:
                    code = topology.run(config, timeout=1800, log_name=name)
                folder = work / "logs" / name
                if code != 0 or not (folder / "summary.json").is_file():
                    tail = (topology.logs / f"{name}.log").read_text()[-1500:]
                    results[f"epochs_{local_epochs}"] = {"completed": False, "tail": tail}
                    continue
                results[f"epochs_{local_epochs}"] = {
                    **figures_of(folder),
                    **cpu.figures(
                        rounds * topology.num_supernodes * 2, first_round_messages=topology.num_supernodes * 2
                    ),
                }
            if results.get("epochs_0", {}).get("completed"):
                results["floor"] = measure_floor(
                    topology, rounds, fedavg_payload_floats(), work, f"floor_{checkout.name}"
                )
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return _with_overhead(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkout",
        type=Path,
        action="append",
        help="project checkout to measure (repeat: before, after); default: this one",
    )
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--epochs", type=int, nargs="+", default=[0, 1])
    parser.add_argument(
        "--measured",
        nargs=2,
        action="append",
        metavar=("CHECKOUT", "FOLDER"),
        default=[],
        help="a checkout already measured in this session by this script: the experiment folder "
        "of its local-epochs=0 job (listed before the --checkout ones)",
    )
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    checkouts = args.checkout or [ROOT]
    rounds, epochs = (2, [0]) if args.quick else (args.rounds, args.epochs)
    measured = [
        _with_overhead({"checkout": str(Path(c).resolve()), "epochs_0": figures_of(Path(f)), "measured_earlier": True})
        for c, f in args.measured
    ]
    with tempfile.TemporaryDirectory(prefix="fedvq_deploy_") as tmp:
        measured += [measure_checkout(c, rounds, epochs, Path(tmp) / str(i)) for i, c in enumerate(checkouts)]
    figures = {
        "supernodes": 3,
        "method": "fedavg",
        "dataset": "digits",
        "rounds": rounds,
        "checkouts": measured,
        "note": "one session, side by side; machine shared with other jobs: compare ratios only",
    }
    by_checkout: dict[str, list[dict]] = {}
    for m in measured:
        by_checkout.setdefault(m["checkout"], []).append(m)
    if len(by_checkout) == 2 and all("per_message_overhead_s" in m for m in measured):
        # before = the first checkout named, after = the other; repeats (e.g. A B B A, which cancels a
        # steady drift of the machine's load) are averaged per checkout
        (_, before), (_, after) = by_checkout.items()
        mean = lambda runs, key: sum(r[key] for r in runs) / len(runs)  # noqa: E731
        figures["overhead_after_over_before"] = mean(after, "per_message_overhead_s") / mean(
            before, "per_message_overhead_s"
        )
        figures["raw_per_message_after_over_before"] = mean(after, "per_message_s") / mean(before, "per_message_s")
        if all("cpu_overhead_per_message_s" in m for m in measured):
            figures["cpu_overhead_after_over_before"] = mean(after, "cpu_overhead_per_message_s") / mean(
                before, "cpu_overhead_per_message_s"
            )
        figures["target"] = "ClientApp per-message overhead (above Flower's floor) after <= 0.5 x before"
    emit("deployment", figures, quick=args.quick)


if __name__ == "__main__":
    main()
