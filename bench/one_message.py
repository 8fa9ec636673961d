"""Deployed round time before and after one message per site per round (issue 30), at shaped link rates.

``scripts/netns_topology.py`` brings up a SuperLink host and 3 site hosts, each in its own
network namespace (needs root and ``ip netns``). For every link rate both directions of
every site's link are shaped with tbf (site ``eth0`` and the bridge port), and each method
runs the same job once per checkout given (e.g. the base and this branch, alternating):
``flwr run <checkout>`` ships that checkout's app, and Flower puts a run's FAB first on
the path of its ServerApp and ClientApp processes. The job: digits, 3 IID partitions,
1 local epoch, evaluation every round (the default), ``--rounds`` rounds.

Per (checkout, method, rate): steady round seconds (rounds after the first and before the
last: the first has start-up, the last its evaluate-only message), messages and bytes the
server sent and received per steady round, the transfer time those bytes take per site at
that rate (down + up), and the rest of the round (Flower's floor + the app's compute).
Flower's floor is measured with ``bench/floor_app`` (no-op ClientApp, 1 and 2 messages per
round, a 1,000-float payload) on the same topology, unshaped.

    sudo python bench/one_message.py --checkout /work/wt30-base --checkout .
    sudo python bench/one_message.py --checkout . --rates 0 --methods fedavg --rounds 3 --quick
    python bench/one_message.py --table          # table and plot from bench/results/one_message.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench.common import RESULTS, commit_of, emit, rounds_of  # noqa: E402
from bench.uplink import METHODS  # noqa: E402

FLOOR_APP = ROOT / "bench" / "floor_app"
JOB = {"train.local-epochs": 1, "partition.kind": "iid", "round-timeout": 600.0}


def steady_rounds(records: list[dict]) -> list[dict]:
    """Rounds after the first (start-up) and before the last (its evaluate-only message); else all but the first."""
    middle = records[1:-1]
    return middle or records[1:] or records


def job_figures(records: list[dict], rate: float, sites: int) -> dict:
    steady = steady_rounds(records)
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    sent = mean([r["communication"]["sent_bytes"] for r in steady])
    received = mean([r["communication"]["received_bytes"] for r in steady])
    round_s = mean([r["wall_time_s"] for r in steady])
    transfer_s = (sent + received) / sites * 8 / (rate * 1e6) if rate else 0.0
    return {
        "round_s_steady": round_s,
        "round_s_all": [round(r["wall_time_s"], 2) for r in records],
        "steady_rounds": [r["round"] for r in steady],
        "messages_sent_per_round": mean([r["communication"]["messages"]["sent"] for r in steady]),
        "messages_received_per_round": mean([r["communication"]["messages"]["received"] for r in steady]),
        "sent_mb_per_round": sent / 1e6,
        "received_mb_per_round": received / 1e6,
        "transfer_s_per_site": transfer_s,
    }


def measure_job(topology, logs: Path, checkout: Path, method: str, rate: float, rounds: int) -> dict:
    name = f"{checkout.name}-{method}-{rate:g}mbit-{time.strftime('%H%M%S')}"
    config = {**JOB, "num-server-rounds": rounds, **METHODS[method]}
    started = time.time()
    code = topology.run({**config, "log-dir": str(logs), "experiment-name": name}, timeout=1800, log_name=name)
    folder = logs / name
    if code != 0 or not (folder / "summary.json").is_file():
        raise RuntimeError(f"{method} at {rate:g} Mbit/s failed (exit {code}); see {topology.logs / name}.log")
    summary = json.loads((folder / "summary.json").read_text())
    return {
        "method": method,
        "link_mbit": rate,
        "run_s": time.time() - started,
        "final_accuracy": (summary.get("final") or {}).get("accuracy"),
        **job_figures(rounds_of(folder), rate, topology.num_supernodes),
    }


def measure_floor(topology, work: Path, messages: int, rounds: int) -> float:
    """Steady round seconds of the no-op app with ``messages`` messages per node per round."""
    result = work / f"floor-{messages}-{time.strftime('%H%M%S')}.json"
    config = f"num-server-rounds={rounds} payload-floats=1000 messages-per-round={messages} result-file='{result}'"
    done = topology.flwr("run", str(FLOOR_APP), topology.connection, "--stream", "--run-config", config, timeout=1800)
    if not result.is_file():
        raise RuntimeError(f"floor app failed: {(done.stdout + done.stderr)[-1500:]}")
    per_round = json.loads(result.read_text())["per_round_s"]
    steady = per_round[1:] or per_round
    return sum(steady) / len(steady)


def measure_all(checkouts: list[Path], args, work: Path) -> None:
    """One topology; per rate, method and checkout (alternating: the machine's load drifts) one job."""
    import local_topology  # noqa: PLC0415 (scripts/)
    import netns_topology  # noqa: PLC0415 (scripts/)

    saved_root = local_topology.ROOT
    os.environ.pop("PYTHONPATH", None)  # every ClientApp imports the app of its run's FAB (sys.path[0])
    commits = {c: commit_of(c) for c in checkouts}
    try:
        topology = netns_topology.NetnsTopology(3, directory=work / "topology")
        with topology:
            floor = {m: measure_floor(topology, work, m, args.rounds) for m in (1, 2)} if args.floor else {}
            for rate in args.rates:
                for index in range(topology.num_supernodes):
                    if rate:
                        topology.shape_uplink(index, rate)
                        topology.shape_downlink(index, rate)
                    else:
                        topology.unshape(index)
                for method in args.methods:
                    for checkout in checkouts:
                        local_topology.ROOT = checkout  # `flwr run .` from the checkout: its FAB, its code
                        figures = measure_job(topology, work / "experiments", checkout, method, rate, args.rounds)
                        messages = round(figures["messages_sent_per_round"] / topology.num_supernodes)
                        figures.update(checkout=str(checkout), commit=commits[checkout], floor_s=floor.get(messages))
                        if figures["floor_s"] is not None:
                            rest = figures["round_s_steady"] - figures["floor_s"] - figures["transfer_s_per_site"]
                            figures["app_and_compute_s"] = rest
                        emit("one_message", figures, quick=args.quick)
    finally:
        local_topology.ROOT = saved_root


def table(records: list[dict]) -> str:
    """Markdown: one row per (method, checkout); round seconds per rate, MB and messages per steady round."""
    rates = sorted({r["link_mbit"] for r in records}, key=lambda r: (r != 0, -r))  # unshaped, then fastest first
    latest = {(r["method"], r["checkout"], r["link_mbit"]): r for r in records}
    checkouts = list(dict.fromkeys(r["checkout"] for r in records))
    rate_name = lambda r: "unshaped" if r == 0 else f"{r:g} Mbit/s"  # noqa: E731
    head = "| method | checkout |" + "".join(f" round s, {rate_name(r)} |" for r in rates)
    head += " MB per round sent / received | messages per round sent / received |"
    head += " floor + app/compute + transfer at the slowest rate, s |"
    lines = [head, "|---|---|" + "---|" * len(rates) + "---|---|---|"]
    for method in METHODS:
        for checkout in checkouts:
            row = [latest.get((method, checkout, r)) for r in rates]
            known = [r for r in row if r is not None]
            if not known:
                continue
            cells = "".join(f" {r['round_s_steady']:.1f} |" if r else " - |" for r in row)
            first, slowest = known[0], known[-1]
            split = " - |"
            if slowest.get("floor_s") is not None:
                parts = (slowest["floor_s"], slowest["app_and_compute_s"], slowest["transfer_s_per_site"])
                split = " {:.1f} + {:.1f} + {:.1f} |".format(*parts)
            lines.append(
                f"| {method} | {Path(checkout).name} ({first.get('commit', '?')}) |{cells}"
                f" {first['sent_mb_per_round']:.3f} / {first['received_mb_per_round']:.3f} |"
                f" {first['messages_sent_per_round']:.0f} / {first['messages_received_per_round']:.0f} |{split}"
            )
    return "\n".join(lines)


def plot(records: list[dict], path: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(7, 4))
    latest = {(r["method"], r["checkout"], r["link_mbit"]): r for r in records}
    for method, checkout in dict.fromkeys((m, c) for m, c, _ in latest):
        points = sorted(
            (rate or 1000.0, r["round_s_steady"]) for (m, c, rate), r in latest.items() if (m, c) == (method, checkout)
        )
        style = "-" if checkout == records[-1]["checkout"] else "--"
        ax.plot(*zip(*points, strict=True), style, marker="o", label=f"{method} ({Path(checkout).name})")
    ax.set_xscale("log")
    ax.set_xlabel("link rate per site, both directions (Mbit/s; 1000 = unshaped)")
    ax.set_ylabel("steady round (s)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkout", type=Path, action="append", help="checkouts to measure, in order")
    parser.add_argument(
        "--rates", default="0,10,2", help="Mbit/s per site and direction, comma-separated; 0 = unshaped"
    )
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--no-floor", dest="floor", action="store_false", help="skip the floor app")
    parser.add_argument("--quick", action="store_true", help="print, do not record")
    parser.add_argument("--table", action="store_true", help="only the table and plot from the results file")
    args = parser.parse_args()
    args.rates = [float(r) for r in args.rates.split(",")]
    args.methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        print(f"error: unknown method(s) {unknown}; expected some of {sorted(METHODS)}", file=sys.stderr)
        return 1
    if not args.table:
        with tempfile.TemporaryDirectory(prefix="fedvq-one-message-") as tmp:
            measure_all([c.resolve() for c in (args.checkout or [ROOT])], args, Path(tmp))
    results = RESULTS / "one_message.jsonl"
    if results.is_file():
        records = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
        print(table(records))
        plot(records, RESULTS / "one_message.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
