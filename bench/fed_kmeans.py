"""Federated vs centralized k-means over a grid of generated data and real tables.

Generated data: 2, 10 and 50 features x 3, 10 and 20 clients x non-IID factor
0, 0.5 and 0.9; plus iris, wine and breast cancer split IID over 3 clients. For
each: ARI and inertia of the federated run (the real ServerApp/ClientApp on the
in-process grid) against scikit-learn ``KMeans(n_init=10)`` on the pooled,
standardized rows; federated rounds against Lloyd iterations; and the bytes each
client sent (Flower's ``count_bytes`` of every reply record).

    python bench/fed_kmeans.py            # the full grid (~30 scenarios)
    python bench/fed_kmeans.py --quick    # smoke test: 2 scenarios
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import emit  # noqa: E402
from bench.compare_kmeans import Scenario, centralized, pooled  # noqa: E402
from data_gen.generate_test_data import GeneratorOptions, generate, write  # noqa: E402
from fedvq_app.client_app import app as client_app  # noqa: E402
from fedvq_app.local_grid import full_run_config, run_local  # noqa: E402
from fedvq_app.server_app import app as server_app  # noqa: E402


def grid(quick: bool) -> list[Scenario]:
    """The scenarios of the issue: generated grid + three real tables."""
    features, clients, skews = ([2], [3], [0.5]) if quick else ([2, 10, 50], [3, 10, 20], [0.0, 0.5, 0.9])
    scenarios = [
        Scenario(
            f"generated {f}-D, {c} clients, non-IID {s}",
            4,
            c,
            "generated",
            GeneratorOptions(num_clients=c, num_clusters=4, num_features=f, non_iid_factor=s),
        )
        for f in features
        for c in clients
        for s in skews
    ]
    tables = [("wine", 3)] if quick else [("iris", 3), ("wine", 3), ("breast-cancer", 2)]
    return scenarios + [Scenario(f"{name} (IID, 3 clients)", k, 3, name) for name, k in tables]


def federated(scenario: Scenario, data_path: str, seed: int, work: Path) -> tuple[dict, dict]:
    name = f"run_{abs(hash((scenario.name, seed)))}"
    config = full_run_config(
        method="kmeans",
        seed=seed,
        **{
            "log-dir": str(work),
            "experiment-name": name,
            "kmeans.k": scenario.k,
            "kmeans.data-source": scenario.source,
            "kmeans.data-path": data_path,
            "kmeans.silhouette-sample": 100_000,
            **scenario.overrides,
        },
    )
    grid_ = run_local(server_app, client_app, scenario.clients, config)
    return json.loads((work / name / "summary.json").read_text()), grid_.reply_bytes


def measure(scenario: Scenario, seed: int, work: Path) -> dict:
    data_path = ""
    if scenario.generator is not None:
        options = GeneratorOptions(**{**scenario.generator.__dict__, "random_state": seed})
        data_path = str(write(generate(options), work / f"data_{abs(hash(scenario.name))}"))
    fed, sent = federated(scenario, data_path, seed, work)
    central = centralized(*pooled(scenario, data_path, seed), scenario.k, seed)
    return {
        "scenario": scenario.name,
        "ari_fed": fed["ari"],
        "ari_central": central["ari"],
        "ari_ratio": fed["ari"] / central["ari"] if central["ari"] > 0 else None,
        "inertia_fed": fed["inertia"],
        "inertia_central": central["inertia"],
        "rounds_fed": fed["rounds"],
        "iterations_central": central["rounds"],
        "rounds_ratio": fed["rounds"] / max(central["rounds"], 1),
        "converged": fed["converged"],
        "bytes_per_client": float(np.mean(list(sent.values()))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="fed_kmeans_"))
    try:
        rows = [measure(s, args.seed, work) for s in grid(args.quick)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ratios = [r["ari_ratio"] for r in rows if r["ari_ratio"] is not None]
    emit(
        "fed_kmeans",
        {
            "seed": args.seed,
            "scenarios": rows,
            "min_ari_ratio": min(ratios),
            "max_rounds_ratio": max(r["rounds_ratio"] for r in rows),
            "targets": {"ari_ratio_at_least": 0.99, "rounds_ratio_at_most": 1.5},
        },
        quick=args.quick,
    )


if __name__ == "__main__":
    from fedvq_app.errors import cli  # noqa: PLC0415

    sys.exit(cli(main))
