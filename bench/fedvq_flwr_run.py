"""The README's ``flwr run`` with method='fedvq' at its defaults against method='fedavg' (issue 13).

Both jobs run through ``fedvq_app.simulation.flwr_run`` (``flwr run . --stream``, its own
FLWR_HOME and SuperLink ports, daemons stopped afterwards) with
``num-supernodes=10 client-resources-num-cpus=1``, the same seed and nothing else set
but the method, the log folder and the experiment name. Figures from each job's
summary.json: final mean global-test accuracy and own-distribution accuracy; FedVQ's
codes used / K and perplexity. Appends to ``bench/results/fedvq_flwr_run.jsonl``.

    python bench/fedvq_flwr_run.py [--seed 42] [--methods fedvq,fedavg]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import emit  # noqa: E402
from fedvq_app.simulation import flwr_run  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FEDERATION = "num-supernodes=10 client-resources-num-cpus=1"
STARTUP_ATTEMPTS = 5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--methods", default="fedvq,fedavg")
    parser.add_argument("--log-dir", default=str(ROOT / "logs" / "bench_fedvq_flwr_run"))
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fedvq only: a run-config override (recorded); the defaults otherwise",
    )
    args = parser.parse_args()
    log_dir = Path(args.log_dir).resolve()
    for method in [m for m in args.methods.split(",") if m]:
        overrides = dict(item.split("=", 1) for item in args.set) if method == "fedvq" else {}
        suffix = "_".join(f"{k.split('.')[-1]}-{v}" for k, v in overrides.items())
        name = f"{method}_{suffix or 'defaults'}_seed{args.seed}"
        config = {"method": method, "seed": args.seed, "log-dir": str(log_dir), "experiment-name": name, **overrides}
        if (log_dir / name).exists():  # the run would refuse the folder and the old summary.json be read back
            raise SystemExit(f"experiment folder {log_dir / name} exists already: move it away or pass --log-dir")
        for _attempt in range(STARTUP_ATTEMPTS):
            with tempfile.TemporaryDirectory(prefix="fedvq_flwr_") as home:
                run = flwr_run(config, Path(home), FEDERATION, timeout=args.timeout)
            # Flower gives its local SuperLink a fixed 15 s to start; on a loaded machine that can fail
            if "Failed to start local SuperLink" not in run.output:
                break
        summary_path = log_dir / name / "summary.json"
        if not summary_path.is_file():
            print(run.output[-3000:])
            raise SystemExit(f"{method}: no summary.json (flwr run rc={run.returncode})")
        summary = json.loads(summary_path.read_text())
        report = summary.get("fedvq", {})
        emit(
            "fedvq_flwr_run",
            {
                "method": method,
                "seed": args.seed,
                "federation": FEDERATION,
                "overrides": overrides,
                "rounds": summary.get("rounds_completed", summary.get("num_rounds")),
                "final_accuracy": summary["final"].get("accuracy"),
                "final_own_test_accuracy": summary["final"].get("own_test_accuracy"),
                "codes_used": report.get("final_codes_used"),
                "codebook_size": report.get("codebook_shape", [None])[0],
                "perplexity": report.get("final_perplexity"),
                "quantizer": report.get("quantizer"),
                "encoder": report.get("encoder"),
                "aggregation": report.get("aggregation"),
                "wall_s": run.wall_s,
                "experiment_dir": str(log_dir / name),
            },
        )


if __name__ == "__main__":
    main()
