"""Federated k-means vs scikit-learn KMeans on the pooled, standardized data.

Runs the real ServerApp/ClientApp in-process (``run_local``) on each scenario and
the centralized baseline (``StandardScaler`` + ``KMeans(k, n_init=10)``) on the rows
of all clients pooled together -- something only a benchmark may do -- and prints
a Markdown table: inertia, ARI, silhouette and rounds/iterations to converge.

    python bench/compare_kmeans.py                  # the three documented scenarios
    python bench/compare_kmeans.py --seeds 0 1 2 3  # robustness over seeds
    python bench/compare_kmeans.py --extra          # plus label skew, overlap, other tables
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, silhouette_score
from sklearn.preprocessing import StandardScaler

from data_gen.generate_test_data import GeneratorOptions, generate, write
from fedvq_app.aggregation.kmeans import simplified_silhouette
from fedvq_app.client_app import app as client_app
from fedvq_app.data.tabular import load_tabular_partition
from fedvq_app.local_grid import full_run_config, run_local
from fedvq_app.server_app import app as server_app


@dataclass(frozen=True)
class Scenario:
    name: str
    k: int
    clients: int
    source: str
    generator: GeneratorOptions | None = None
    overrides: dict = field(default_factory=dict)


SCENARIOS = (
    Scenario(
        "generated 2-D",
        4,
        3,
        "generated",
        GeneratorOptions(num_clients=3, num_clusters=4, num_features=2, non_iid_factor=0.5),
    ),
    Scenario(
        "generated 10-D",
        4,
        3,
        "generated",
        GeneratorOptions(num_clients=3, num_clusters=4, num_features=10, non_iid_factor=0.5),
    ),
    Scenario("wine (IID)", 3, 3, "wine"),
)
EXTRA_SCENARIOS = (
    Scenario("wine (label skew 0.5)", 3, 3, "wine", overrides={"kmeans.split": "label-skew"}),
    Scenario("iris (IID)", 3, 3, "iris"),
    Scenario("breast-cancer (IID)", 2, 3, "breast-cancer"),
    Scenario(
        "generated 2-D, overlap 0.5, density 0.5",
        4,
        3,
        "generated",
        GeneratorOptions(
            num_clients=3, num_clusters=4, num_features=2, non_iid_factor=0.5, overlap_factor=0.5, density_variation=0.5
        ),
    ),
    Scenario(
        "generated 10-D, non-IID 1.0, 5 clients",
        4,
        5,
        "generated",
        GeneratorOptions(num_clients=5, num_clusters=4, num_features=10, non_iid_factor=1.0),
    ),
)


def pooled(scenario: Scenario, data_path: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """All clients' rows and labels (for the centralized baseline only)."""
    split = {"split": scenario.overrides["kmeans.split"]} if "kmeans.split" in scenario.overrides else {}
    parts = [
        load_tabular_partition(scenario.source, i, scenario.clients, data_path=data_path, seed=seed, **split)
        for i in range(scenario.clients)
    ]
    return np.vstack([p.x for p in parts]), np.concatenate([p.labels for p in parts])


def centralized(x: np.ndarray, y: np.ndarray, k: int, seed: int) -> dict:
    z = StandardScaler().fit_transform(x)
    model = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(z)
    return {
        "inertia": model.inertia_,
        "ari": adjusted_rand_score(y, model.labels_),
        "silhouette": silhouette_score(z, model.labels_),
        "simplified_silhouette": float(simplified_silhouette(z, model.cluster_centers_).mean()),
        "rounds": int(model.n_iter_),
    }


def federated(scenario: Scenario, data_path: str, seed: int, log_dir: Path) -> dict:
    name = f"{scenario.source}_{seed}"
    config = full_run_config(
        method="kmeans",
        seed=seed,
        **{
            "log-dir": str(log_dir),
            "experiment-name": name,
            "kmeans.k": scenario.k,
            "kmeans.data-source": scenario.source,
            "kmeans.data-path": data_path,
            "kmeans.silhouette-sample": 100_000,
            **scenario.overrides,
        },
    )
    run_local(server_app, client_app, scenario.clients, config)
    return json.loads((log_dir / name / "summary.json").read_text())


def compare(scenario: Scenario, seed: int, work: Path) -> dict:
    data_path = ""
    if scenario.generator is not None:
        opts = GeneratorOptions(**{**scenario.generator.__dict__, "random_state": seed})
        data_path = str(write(generate(opts), work / f"data_{scenario.name.replace(' ', '_')}_{seed}"))
    fed = federated(scenario, data_path, seed, work / "logs")
    central = centralized(*pooled(scenario, data_path, seed), scenario.k, seed)
    return {"scenario": scenario.name, "seed": seed, "federated": fed, "centralized": central}


def table(rows: list[dict]) -> str:
    lines = [
        "| scenario | seed | inertia fed. | inertia central. | ARI fed. | ARI central. | ARI diff. | "
        "simplified silhouette fed. / central. | silhouette central. | rounds fed.: all runs (kept run) | "
        "iterations central. |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        f, c = r["federated"], r["centralized"]
        lines.append(
            f"| {r['scenario']} | {r['seed']} | {f['inertia']:.3f} | {c['inertia']:.3f} | {f['ari']:.4f} | "
            f"{c['ari']:.4f} | {f['ari'] - c['ari']:+.4f} | {f['silhouette']:.4f} / {c['simplified_silhouette']:.4f} | "
            f"{c['silhouette']:.4f} | {f['rounds']}{'' if f['converged'] else ' (not converged)'} "
            f"({f['kmeans']['kept_run_converged_round']}) | {c['rounds']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42], help="run seeds (data, partition, init)")
    parser.add_argument("--extra", action="store_true", help="also run harder scenarios (skew, overlap, ...)")
    parser.add_argument("--json", help="also write the raw results to this file")
    args = parser.parse_args(argv)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="kmeans_compare_"))
    try:
        scenarios = SCENARIOS + (EXTRA_SCENARIOS if args.extra else ())
        rows = [compare(s, seed, work) for s in scenarios for seed in args.seeds]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2, default=float) + "\n")


if __name__ == "__main__":
    from fedvq_app.errors import cli  # noqa: PLC0415

    sys.exit(cli(main))
