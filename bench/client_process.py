"""What one ClientApp process costs before Flower's own work: the code a SuperNode runs per message.

In a deployment every message starts a fresh process that imports Flower, then the
app's ClientApp, then answers the message. This script times, in fresh interpreters
for each checkout given (alternating, so a change in the shared machine's load hits
all of them), the app's part of a FedAvg train message on digits: importing
``fedvq_app.client_app``, resolving the method, building the client (settings, data
of partition 1 of 3 from whatever cache the checkout has, warmed by a first process).
Reported: wall seconds and CPU seconds (user + system of the child: robust to other
jobs on the machine) of ``import flwr`` and of the app's part.

    python bench/client_process.py --checkout /work/wt-17-base --checkout .
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import emit  # noqa: E402

CHILD = """
import json, resource, time
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
w0, c0 = time.time(), cpu()
import flwr.app, flwr.clientapp  # noqa: F401  (Flower's part: the same in every checkout)
w1, c1 = time.time(), cpu()
from flwr.app import Context, RecordDict
import fedvq_app.client_app  # noqa: F401
from fedvq_app.registry import load_settings
from fedvq_app.local_grid import full_run_config
from fedvq_app.registry import get_method
config = full_run_config(method="fedavg", **{"partition.kind": "iid"})
context = Context(run_id=1, node_id=2, node_config={"partition-id": 1, "num-partitions": 3}, state=RecordDict(),
                  run_config=config)
settings = load_settings(config)
client = get_method("fedavg").client(settings, context)
w2, c2 = time.time(), cpu()
import sys
print(json.dumps({"flwr_wall_s": w1 - w0, "flwr_cpu_s": c1 - c0, "app_wall_s": w2 - w1, "app_cpu_s": c2 - c1,
                  "modules": len(sys.modules)}))
"""


def once(checkout: Path, cache: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(checkout), "FEDVQ_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", CHILD], cwd=checkout, env=env, capture_output=True, text=True, timeout=900
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", type=Path, action="append")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    checkouts = [c.resolve() for c in (args.checkout or [ROOT])]
    samples: dict[str, list[dict]] = {str(c): [] for c in checkouts}
    with tempfile.TemporaryDirectory() as tmp:
        for c in checkouts:  # warm-up: the first process of a host fills its cache (when it has one)
            once(c, Path(tmp) / c.name)
        for _ in range(args.repeats):
            for c in checkouts:
                samples[str(c)].append(once(c, Path(tmp) / c.name))
    result = {c: {k: statistics.median(s[k] for s in runs) for k in runs[0]} for c, runs in samples.items()}
    figures = {
        "checkouts": result,
        "repeats": args.repeats,
        "samples": samples,
        "note": "fresh interpreter per sample, checkouts alternating; CPU seconds are robust to the shared "
        "machine's load, wall seconds are not",
    }
    if len(checkouts) == 2:
        before, after = (result[str(c)] for c in checkouts)
        figures["app_cpu_after_over_before"] = after["app_cpu_s"] / before["app_cpu_s"]
        figures["process_cpu_after_over_before"] = (after["app_cpu_s"] + after["flwr_cpu_s"]) / (
            before["app_cpu_s"] + before["flwr_cpu_s"]
        )
    emit("client_process", figures)


if __name__ == "__main__":
    main()
