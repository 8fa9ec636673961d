"""Round time and bytes per round over slow uplinks: 3 sites, each in its own network namespace.

``scripts/netns_topology.py`` brings up a SuperLink host and 3 site hosts (needs root and
``ip netns``); for every uplink rate every site's ``eth0`` is shaped with tbf, and each method
runs the same small job (digits, 3 IID partitions, 1 local epoch, evaluation in the last
round only) through ``flwr run``:

* ``fedavg``: the whole model goes up every round;
* ``fedvq``: lloyd codebook aggregation (per-code counts and sums, no codebook), private
  encoder: the VQ layer's statistics, the decoder and the classifier go up;
* ``fusedspace``: decoder-only: the private encoders never leave the sites;
* ``kmeans``: federated k-means (wine, Lloyd steps of per-cluster sums and counts).

Figures per (method, rate): mean wall seconds of the training rounds after the first
(steady), bytes the server received per round and per site (what the shaped uplink
carries), and the time that upload takes at that rate.

    sudo python bench/uplink.py                       # 100, 10, 2 Mbit/s x 4 methods, 3 rounds each
    sudo python bench/uplink.py --rates 2 --methods fedavg,fedvq --quick
    python bench/uplink.py --plot                     # table and plot from bench/results/uplink.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench.common import RESULTS, emit, rounds_of  # noqa: E402

METHODS = {
    "fedavg": {"method": "fedavg"},
    "fedvq": {"method": "fedvq", "codebook.aggregation": "lloyd", "fedvq.encoder": "private"},
    "fusedspace": {"method": "fusedspace"},
    "kmeans": {
        "method": "kmeans",
        "kmeans.max-rounds": 3,
        "kmeans.tol": 1e-12,
        "kmeans.n-init": 1,
        "kmeans.client-logs": False,
        "kmeans.silhouette-sample": 0,
    },
}
JOB = {"train.local-epochs": 1, "partition.kind": "iid", "round-timeout": 600.0}


def measure(topology, logs: Path, method: str, rate: float, rounds: int) -> dict:
    name = f"{method}-{rate:g}mbit-{time.strftime('%H%M%S')}"
    config = {**JOB, "num-server-rounds": rounds, "eval-every": rounds, **METHODS[method]}
    started = time.time()
    code = topology.run({**config, "log-dir": str(logs), "experiment-name": name}, timeout=1800, log_name=name)
    total = time.time() - started
    folder = logs / name
    if code != 0 or not (folder / "summary.json").is_file():
        raise RuntimeError(f"{method} at {rate:g} Mbit/s failed (exit {code}); see {topology.logs / name}.log")
    records = rounds_of(folder)
    steady = records[1:] if len(records) > 1 else records
    # rounds that trained only: the last one also evaluates
    training = [r for r in steady if r["round"] < len(records)] or steady
    received = [r["communication"]["received_bytes"] for r in records]
    sites = max(r["num_sampled_train"] for r in records)
    per_site = sum(received) / len(received) / sites
    return {
        "method": method,
        "uplink_mbit": rate,
        "rounds": len(records),
        "round_s_steady": sum(r["wall_time_s"] for r in training) / len(training),
        "round_s_first": records[0]["wall_time_s"],
        "round_s_all": [round(r["wall_time_s"], 2) for r in records],
        "uplink_bytes_per_round_per_site": per_site,
        "downlink_bytes_per_round": sum(r["communication"]["sent_bytes"] for r in records) / len(records),
        "upload_s_at_rate": per_site * 8 / (rate * 1e6),
        "run_s": total,
        "summary_accuracy": json.loads((folder / "summary.json").read_text()).get("final", {}).get("accuracy"),
    }


def run(args) -> None:
    import netns_topology  # noqa: PLC0415 (scripts/)

    with tempfile.TemporaryDirectory(prefix="fedvq-uplink-") as tmp:
        topology = netns_topology.NetnsTopology(3, directory=Path(tmp) / "topology")
        with topology:
            for rate in args.rates:
                for index in range(3):
                    topology.shape_uplink(index, rate)
                for method in args.methods:
                    figures = measure(topology, Path(tmp) / "experiments", method, rate, args.rounds)
                    emit("uplink", figures, quick=args.quick)


def table(records: list[dict]) -> str:
    """Markdown: one row per method, round time and upload per site at each rate."""
    rates = sorted({r["uplink_mbit"] for r in records}, reverse=True)
    latest = {(r["method"], r["uplink_mbit"]): r for r in records}
    head = "| method | uplink per site and round |" + "".join(f" round s @ {r:g} Mbit/s |" for r in rates)
    lines = [head, "|---|---|" + "---|" * len(rates)]
    for method in METHODS:
        row = [latest[(method, r)] for r in rates if (method, r) in latest]
        if not row:
            continue
        size = row[0]["uplink_bytes_per_round_per_site"]
        cells = "".join(
            f" {latest[(method, r)]['round_s_steady']:.1f} (upload {latest[(method, r)]['upload_s_at_rate']:.2f}) |"
            if (method, r) in latest
            else " - |"
            for r in rates
        )
        lines.append(f"| {method} | {size / 1e3:,.1f} kB |{cells}")
    return "\n".join(lines)


def plot(records: list[dict], path: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    latest = {(r["method"], r["uplink_mbit"]): r for r in records}
    for method in METHODS:
        points = sorted((rate, r) for (m, rate), r in latest.items() if m == method)
        if not points:
            continue
        rates = [p[0] for p in points]
        left.plot(rates, [p[1]["round_s_steady"] for p in points], marker="o", label=method)
        right.plot(rates, [p[1]["upload_s_at_rate"] for p in points], marker="o", label=method)
    for ax, title in ((left, "measured round time (s)"), (right, "upload time per site and round (s)")):
        ax.set_xscale("log")
        ax.set_xlabel("uplink (Mbit/s, tbf)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    right.set_yscale("log")
    left.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="100,10,2", help="uplink Mbit/s, comma-separated")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="print, do not record")
    parser.add_argument("--plot", action="store_true", help="only the table and plot from the results file")
    args = parser.parse_args()
    args.rates = [float(r) for r in args.rates.split(",")]
    args.methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        print(f"error: unknown method(s) {unknown}; expected some of {sorted(METHODS)}", file=sys.stderr)
        return 1
    if not args.plot:
        run(args)
    results = RESULTS / "uplink.jsonl"
    if results.is_file():
        records = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
        print(table(records))
        plot(records, RESULTS / "uplink.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
