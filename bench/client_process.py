"""What one ClientApp process costs before Flower's own work: the code a SuperNode runs per message.

In a deployment every message starts a fresh process that imports Flower, then the
app's ClientApp, then answers the message. This script times, in fresh interpreters
for each checkout and method given (alternating, so a change in the shared machine's
load hits all of them), the app's part of a train message on digits:

* ``app``: importing ``fedvq_app.client_app``, resolving the method, building the
  client (settings, data of partition 1 of 3 from whatever cache the checkout has,
  warmed by a first process) -- what this script measured before issue 30;
* ``model``: building the method's model and one optimizer step on one batch: the
  rest of what a message pays before its real work (FedVQ's quantizer library is
  imported here, and the first optimizer step used to import ``torch._dynamo``).
  k-means has no model: 0.

Reported: wall seconds and CPU seconds (user + system of the child: robust to other
jobs on the machine) of ``import flwr`` and of each part, and each method's app+model
CPU seconds minus FedAvg's of the same checkout.

    python bench/client_process.py --checkout /work/wt-base --checkout . --method fedavg --method fedvq
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
import json, resource, sys, time
METHOD = sys.argv[1]
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
config = full_run_config(method=METHOD, **{"partition.kind": "iid"})
context = Context(run_id=1, node_id=2, node_config={"partition-id": 1, "num-partitions": 3}, state=RecordDict(),
                  run_config=config)
settings = load_settings(config)
client = get_method(METHOD).client(settings, context)
w2, c2 = time.time(), cpu()
if hasattr(client, "build_model"):
    import torch
    from fedvq_app.data.client_data import normalize_batch
    from fedvq_app.training.loop import make_optimizer
    model = client.build_model()
    model.train()
    optimizer = make_optimizer(client.trainable_parameters(model), settings.train)
    x, y = client.data.train_x[:32], client.data.train_y[:32]
    loss, _ = client.batch_loss(model, normalize_batch(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
w3, c3 = time.time(), cpu()
print(json.dumps({"flwr_wall_s": w1 - w0, "flwr_cpu_s": c1 - c0, "app_wall_s": w2 - w1, "app_cpu_s": c2 - c1,
                  "model_wall_s": w3 - w2, "model_cpu_s": c3 - c2, "modules": len(sys.modules),
                  "dynamo": int("torch._dynamo" in sys.modules)}))
"""


def once(checkout: Path, cache: Path, method: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(checkout), "FEDVQ_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, method], cwd=checkout, env=env, capture_output=True, text=True, timeout=900
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", type=Path, action="append")
    parser.add_argument("--method", action="append", help="methods to time (default: fedavg)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    checkouts = [c.resolve() for c in (args.checkout or [ROOT])]
    methods = args.method or ["fedavg"]
    cases = [(c, m) for c in checkouts for m in methods]
    samples: dict[str, list[dict]] = {f"{c}:{m}": [] for c, m in cases}
    with tempfile.TemporaryDirectory() as tmp:
        for c in checkouts:  # warm-up: the first process of a host fills its cache (when it has one)
            once(c, Path(tmp) / c.name, methods[0])
        for _ in range(args.repeats):
            for c, m in cases:
                samples[f"{c}:{m}"].append(once(c, Path(tmp) / c.name, m))
    result = {case: {k: statistics.median(s[k] for s in runs) for k in runs[0]} for case, runs in samples.items()}
    for row in result.values():
        row["app_model_cpu_s"] = row["app_cpu_s"] + row["model_cpu_s"]
        row["app_model_wall_s"] = row["app_wall_s"] + row["model_wall_s"]
    for c in checkouts:
        base = result.get(f"{c}:fedavg")
        if base is None:
            continue
        for m in methods:
            row = result[f"{c}:{m}"]
            row["app_model_cpu_over_fedavg_s"] = row["app_model_cpu_s"] - base["app_model_cpu_s"]
    figures = {
        "checkouts": result,
        "methods": methods,
        "repeats": args.repeats,
        "samples": samples,
        "note": "fresh interpreter per sample, cases alternating; CPU seconds are robust to the shared "
        "machine's load, wall seconds are not",
    }
    if len(checkouts) == 2:
        for m in methods:
            before, after = (result[f"{c}:{m}"] for c in checkouts)
            figures[f"{m}_app_model_cpu_after_over_before"] = after["app_model_cpu_s"] / before["app_model_cpu_s"]
    emit("client_process", figures)
    for case, row in result.items():
        print(
            f"{case}: app {row['app_cpu_s']:.2f} s CPU + model/step {row['model_cpu_s']:.2f} s = "
            f"{row['app_model_cpu_s']:.2f} s (wall {row['app_model_wall_s']:.2f} s; torch._dynamo imported: "
            f"{bool(row['dynamo'])}; over FedAvg {row.get('app_model_cpu_over_fedavg_s', float('nan')):+.2f} s)"
        )


if __name__ == "__main__":
    main()
