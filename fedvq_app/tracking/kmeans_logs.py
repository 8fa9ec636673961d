"""The per-round k-means log layout (seed 004) inside the experiment folder.

::

    <experiment>/
    ├── global_means/round_XXX_global_means.npy   centroids (k x dim, cluster space; round 000 = init)
    │                round_XXX_metadata.json      round, clusters, convergence change, clients
    ├── local_means/client_<id>/
    │       round_XXX_local_means.npy    local means the client shared (NaN = withheld or empty)
    │       round_XXX_sample_counts.npy  their counts (after the client's privacy filter)
    │       round_XXX_metadata.json      counts before and after the filter, withheld clusters
    │       round_XXX_assignments.npy    nearest global centroid of every row (runs x rows)
    │       points_2d.npy                the client's rows in the 2-D view (for the animation)
    ├── client_logs/client_<id>.log
    ├── server_logs/server.log
    ├── transform.npz                 global mean/std, PCA components (for the 2-D view)
    ├── experiment_summary.json
    └── federated_kmeans_metrics.json

Who writes what: the server writes ``global_means/``, the shared local means and
counts it received (``*_local_means.npy``, ``*_sample_counts.npy``, for the run it
kept), ``server_logs/`` and the summaries -- after the Lloyd loop, once the best of
the ``n-init`` runs is known. Each client writes its own metadata, assignments,
2-D points and ``client_logs/`` during the run, on its own disk (the same folder in
a simulation, the SuperNode's machine in a deployment). Ids are partition ids.
Nothing a client holds back (a mean of fewer than ``privacy-threshold`` rows) is
written anywhere.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from fedvq_app.aggregation.kmeans import FeatureTransform
from fedvq_app.tracking.experiment import write_json

GLOBAL_MEANS = "global_means"
LOCAL_MEANS = "local_means"
CLIENT_LOGS = "client_logs"
SERVER_LOGS = "server_logs"
TRANSFORM_FILE = "transform.npz"
EXPERIMENT_SUMMARY = "experiment_summary.json"
METRICS_FILE = "federated_kmeans_metrics.json"
_ROUND = re.compile(r"round_(\d{3,})_global_means\.npy$")


def round_prefix(server_round: int) -> str:
    return f"round_{server_round:03d}"


def _write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, payload)


class KMeansLogs:
    """Reads and writes one experiment folder's k-means logs."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # ---------------------------------------------------------------- server side
    def write_global_means(self, server_round: int, centroids: np.ndarray, metadata: dict[str, Any]) -> None:
        folder = self.root / GLOBAL_MEANS
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / f"{round_prefix(server_round)}_global_means.npy", np.asarray(centroids))
        meta = {"round_number": server_round, "num_clusters": int(len(centroids)), **metadata}
        _write_json(folder / f"{round_prefix(server_round)}_metadata.json", meta)

    def write_transform(self, transform: FeatureTransform) -> None:
        arrays = {"mean": transform.mean, "std": transform.std, "cluster_on_pca": np.array(transform.cluster_on_pca)}
        if transform.components is not None:
            arrays["components"] = transform.components
        np.savez(self.root / TRANSFORM_FILE, **arrays)

    def write_experiment_summary(self, payload: dict[str, Any]) -> None:
        _write_json(self.root / EXPERIMENT_SUMMARY, payload)

    def write_metrics(self, payload: dict[str, Any]) -> None:
        _write_json(self.root / METRICS_FILE, payload)

    @contextmanager
    def server_log(self, logger_name: str = "flwr") -> Iterator[Path]:
        """Copy the server's log lines into server_logs/server.log while the block runs."""
        path = self.root / SERVER_LOGS / "server.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger = logging.getLogger(logger_name)
        logger.addHandler(handler)
        try:
            yield path
        finally:
            logger.removeHandler(handler)
            handler.close()

    # ---------------------------------------------------------------- client side
    def client_dir(self, client_id: int) -> Path:
        return self.root / LOCAL_MEANS / f"client_{client_id}"

    def write_local_means(self, client_id: int, server_round: int, means: np.ndarray, counts: np.ndarray) -> None:
        """A client's shared local means (NaN where none was shared) and counts, as the server received them."""
        folder = self.client_dir(client_id)
        folder.mkdir(parents=True, exist_ok=True)
        prefix = round_prefix(server_round)
        np.save(folder / f"{prefix}_local_means.npy", means)
        np.save(folder / f"{prefix}_sample_counts.npy", counts)

    def write_client_round(
        self, client_id: int, server_round: int, assignments: np.ndarray, metadata: dict[str, Any]
    ) -> None:
        """The client's own record of a round: counts before/after its filter, row assignments."""
        folder = self.client_dir(client_id)
        folder.mkdir(parents=True, exist_ok=True)
        prefix = round_prefix(server_round)
        np.save(folder / f"{prefix}_assignments.npy", assignments.astype(np.int32))
        meta = {"round_number": server_round, "client_id": client_id, **metadata}
        _write_json(folder / f"{prefix}_metadata.json", meta)

    def write_client_points(self, client_id: int, points_2d: np.ndarray) -> None:
        folder = self.client_dir(client_id)
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "points_2d.npy", points_2d)

    def client_log(self, client_id: int, line: str) -> None:
        path = self.root / CLIENT_LOGS / f"client_{client_id}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as fh:
            fh.write(f"{datetime.now():%Y-%m-%d %H:%M:%S} {line}\n")

    # ---------------------------------------------------------------- readers
    def global_rounds(self) -> list[int]:
        folder = self.root / GLOBAL_MEANS
        found = (_ROUND.search(p.name) for p in folder.glob("round_*_global_means.npy")) if folder.is_dir() else ()
        return sorted(int(m.group(1)) for m in found if m)

    def read_global(self, server_round: int) -> tuple[np.ndarray, dict[str, Any]]:
        folder, prefix = self.root / GLOBAL_MEANS, round_prefix(server_round)
        meta_path = folder / f"{prefix}_metadata.json"
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        return np.load(folder / f"{prefix}_global_means.npy"), meta

    def client_ids(self) -> list[int]:
        folder = self.root / LOCAL_MEANS
        if not folder.is_dir():
            return []
        return sorted(int(p.name.split("_", 1)[1]) for p in folder.glob("client_*") if p.name[7:].isdigit())

    def read_local(self, client_id: int, server_round: int) -> dict[str, Any] | None:
        """A client's logged round (means, counts, assignments, metadata) or None."""
        folder, prefix = self.client_dir(client_id), round_prefix(server_round)
        means_path = folder / f"{prefix}_local_means.npy"
        if not means_path.is_file():
            return None
        out: dict[str, Any] = {"means": np.load(means_path), "counts": np.load(folder / f"{prefix}_sample_counts.npy")}
        assignments = folder / f"{prefix}_assignments.npy"
        out["assignments"] = np.load(assignments) if assignments.is_file() else None
        meta = folder / f"{prefix}_metadata.json"
        out["metadata"] = json.loads(meta.read_text()) if meta.is_file() else {}
        return out

    def read_client_points(self, client_id: int) -> np.ndarray | None:
        path = self.client_dir(client_id) / "points_2d.npy"
        return np.load(path) if path.is_file() else None

    def read_transform(self) -> FeatureTransform | None:
        path = self.root / TRANSFORM_FILE
        if not path.is_file():
            return None
        with np.load(path) as npz:
            components = npz["components"] if "components" in npz else None
            return FeatureTransform(npz["mean"], npz["std"], components, bool(npz["cluster_on_pca"]))

    def read_json(self, name: str) -> dict[str, Any]:
        path = self.root / name
        return json.loads(path.read_text()) if path.is_file() else {}
