"""Synthetic clustered data split across federated clients (for federated k-means).

Writes ``client_<i>.npz`` (``data``: float64 rows, ``labels``: the true cluster of
each row), ``metadata.json`` (the options, per-client cluster counts, the cluster
spreads) and ``cluster_centers.npy`` into ``--output-dir``. Clients load their file
by partition id; point ``kmeans.data-path`` (or ``TEST_DATA_PATH``) at the folder.

How the options shape the data:

* ``--non-iid-factor f``: client ``i`` draws its rows from the mixture
  ``(1 - f) * uniform + f * [cluster i mod k]``; 0 = every client sees every cluster
  equally often, 1 = every client sees only its own cluster.
* ``--overlap-factor o``: centres are placed at random (box [-10, 10]^d, widened if
  needed) but at least ``3 (1 - o) (std_a + std_b)`` apart; 0 = well separated,
  1 = no separation enforced and the box shrinks to 20 % of its size.
* ``--density-variation v``: each cluster's std is ``cluster_std * 2**u`` with
  ``u ~ U(-v, v)``; 0 = equal spreads, 1 = spreads from half to double.

Usage: ``python data_gen/generate_test_data.py --num-clients 3 --num-clusters 4
--num-features 10 --non-iid-factor 0.5 --output-dir data/kmeans_10d``
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class GeneratorOptions:
    """The generator's command-line options (same names, same defaults)."""

    num_clients: int = 5
    samples_per_client: int = 100
    num_features: int = 2
    num_clusters: int = 3
    cluster_std: float = 1.0
    non_iid_factor: float = 0.5
    overlap_factor: float = 0.0
    density_variation: float = 0.0
    random_state: int = 42

    def check(self) -> None:
        """Reject values the generator cannot honour, naming the option."""
        positive = ("num_clients", "samples_per_client", "num_features", "num_clusters")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.cluster_std <= 0:
            raise ValueError(f"--cluster-std must be > 0, got {self.cluster_std}")
        for name in ("non_iid_factor", "overlap_factor", "density_variation"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"--{name.replace('_', '-')} must be in [0, 1], got {value}")


@dataclass(frozen=True)
class GeneratedData:
    """Every client's rows and true clusters, plus the ground truth."""

    options: GeneratorOptions
    clients: list[tuple[np.ndarray, np.ndarray]]
    centers: np.ndarray
    stds: np.ndarray

    def metadata(self) -> dict:
        k = self.options.num_clusters
        return {
            "config": asdict(self.options),
            "num_clients": len(self.clients),
            "num_features": self.options.num_features,
            "num_clusters": k,
            "total_samples": int(sum(len(y) for _, y in self.clients)),
            "cluster_stds": self.stds.tolist(),
            "clients": [
                {
                    "client_id": i,
                    "file": f"client_{i}.npz",
                    "num_samples": int(len(y)),
                    "cluster_counts": np.bincount(y, minlength=k).tolist(),
                }
                for i, (_, y) in enumerate(self.clients)
            ],
        }


def _cluster_stds(opts: GeneratorOptions, rng: np.random.Generator) -> np.ndarray:
    exponents = rng.uniform(-opts.density_variation, opts.density_variation, opts.num_clusters)
    return opts.cluster_std * np.power(2.0, exponents)


def _centers(opts: GeneratorOptions, stds: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random centres, each pair at least the separation the overlap factor asks for."""
    half_width = 10.0 * (1.0 - 0.8 * opts.overlap_factor)
    separation = 3.0 * (1.0 - opts.overlap_factor)
    centers: list[np.ndarray] = []
    failures = 0
    while len(centers) < opts.num_clusters:
        candidate = rng.uniform(-half_width, half_width, opts.num_features)
        j = len(centers)
        far_enough = all(
            np.linalg.norm(candidate - c) >= separation * (stds[i] + stds[j]) for i, c in enumerate(centers)
        )
        if far_enough:
            centers.append(candidate)
            continue
        failures += 1
        if failures % 100 == 0:  # the box is too crowded for this many clusters: widen it
            half_width *= 1.25
    return np.array(centers)


def _client_mixture(opts: GeneratorOptions, client: int) -> np.ndarray:
    k = opts.num_clusters
    mixture = np.full(k, (1.0 - opts.non_iid_factor) / k)
    mixture[client % k] += opts.non_iid_factor
    return mixture


def generate(opts: GeneratorOptions) -> GeneratedData:
    """Draw the clusters and every client's rows (deterministic for ``random_state``)."""
    opts.check()
    rng = np.random.default_rng(opts.random_state)
    stds = _cluster_stds(opts, rng)
    centers = _centers(opts, stds, rng)
    clients = []
    for client in range(opts.num_clients):
        counts = rng.multinomial(opts.samples_per_client, _client_mixture(opts, client))
        labels = np.repeat(np.arange(opts.num_clusters), counts)
        rows = centers[labels] + rng.normal(size=(len(labels), opts.num_features)) * stds[labels, None]
        order = rng.permutation(len(labels))
        clients.append((rows[order], labels[order].astype(np.int64)))
    return GeneratedData(opts, clients, centers, stds)


def write(data: GeneratedData, output_dir: str | Path) -> Path:
    """Write the client files, ``metadata.json`` and ``cluster_centers.npy``."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for i, (rows, labels) in enumerate(data.clients):
        np.savez(out / f"client_{i}.npz", data=rows, labels=labels)
    np.save(out / "cluster_centers.npy", data.centers)
    (out / "metadata.json").write_text(json.dumps(data.metadata(), indent=2) + "\n")
    return out


def parse_args(argv: list[str] | None = None) -> tuple[GeneratorOptions, Path]:
    defaults = GeneratorOptions()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-clients", type=int, default=defaults.num_clients, help="federated clients")
    parser.add_argument("--samples-per-client", type=int, default=defaults.samples_per_client, help="rows per client")
    parser.add_argument("--num-features", type=int, default=defaults.num_features, help="features per row")
    parser.add_argument("--num-clusters", type=int, default=defaults.num_clusters, help="true clusters")
    parser.add_argument("--cluster-std", type=float, default=defaults.cluster_std, help="std of each cluster")
    parser.add_argument(
        "--non-iid-factor", type=float, default=defaults.non_iid_factor, help="0 = IID .. 1 = one cluster per client"
    )
    parser.add_argument(
        "--overlap-factor", type=float, default=defaults.overlap_factor, help="0 = separated .. 1 = overlapping"
    )
    parser.add_argument(
        "--density-variation", type=float, default=defaults.density_variation, help="0 = equal .. 1 = 0.5x-2x spread"
    )
    parser.add_argument("--random-state", type=int, default=defaults.random_state, help="random seed")
    parser.add_argument("--output-dir", default="./data", help="folder for client_<i>.npz and metadata.json")
    args = vars(parser.parse_args(argv))
    output_dir = Path(args.pop("output_dir"))
    return GeneratorOptions(**args), output_dir


def main(argv: list[str] | None = None) -> None:
    opts, output_dir = parse_args(argv)
    try:
        data = generate(opts)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    out = write(data, output_dir)
    meta = data.metadata()
    print(f"wrote {meta['num_clients']} clients, {meta['total_samples']} rows, {opts.num_features} features to {out}")
    for client in meta["clients"]:
        print(f"  client_{client['client_id']}: {client['num_samples']} rows, clusters {client['cluster_counts']}")


if __name__ == "__main__":
    main()
