"""The per-round k-means log layout (seed 004) inside the experiment folder.

::

    <experiment>/
    ├── global_means/round_XXX_global_means.npy   centroids (k x dim, cluster space; round 000 = init)
    │                round_XXX_metadata.json      round, clusters, convergence change, clients
    ├── local_means/round_XXX_clients.jsonl   one line per client: the local means and counts it
    │                                         shared (every run; null = withheld or empty), its
    │                                         counts before/after its filter, withheld clusters,
    │                                         row assignments (runs x rows)
    │   points_2d.jsonl                  one line per client: its rows in the 2-D view
    │   round_XXX_server.npz             debug only (kmeans.debug-server-local-means): what the
    │                                    server received (client_ids, local_means, sample_counts)
    ├── client_logs/clients.log          every client's log lines, prefixed "client <id>:"
    ├── server_logs/server.log
    ├── transform.npz                 global mean/std, PCA components (for the 2-D view)
    ├── experiment_summary.json
    └── federated_kmeans_metrics.json

Who writes what: the server writes ``global_means/``, ``server_logs/`` and the
summaries -- after the Lloyd loop, once the best of the ``n-init`` runs is known.
It never writes a single site's statistics unless ``kmeans.debug-server-local-means``
asks (off by default; refused with secure aggregation). Each client writes its own
shared local means, counts, metadata, assignments, 2-D points and log lines during
the run, on its own disk (the same folder in a simulation, the SuperNode's machine in
a deployment), one appended line per client in one file per round -- and only when
the federation has at most ``tracking.per-client-limit`` clients and
``kmeans.client-logs`` is on. Ids are partition ids. Nothing a client holds back (a
mean of fewer than ``privacy-threshold`` rows) is written anywhere.
"""

from __future__ import annotations

import json
import logging
import os
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
CLIENT_LOG = "clients.log"
POINTS_FILE = "points_2d.jsonl"
_ROUND = re.compile(r"round_(\d{3,})_global_means\.npy$")


def round_prefix(server_round: int) -> str:
    return f"round_{server_round:03d}"


def _write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, payload)


def append_line(path: Path, line: str) -> None:
    """Append one line with a single ``write`` on an O_APPEND descriptor.

    Clients of a simulation (threads or Ray workers) append to the same file; one
    write per line keeps their lines whole.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (line.rstrip("\n") + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _nan_to_none(array: np.ndarray) -> Any:
    values = np.asarray(array, dtype=np.float64)
    return np.where(np.isnan(values), None, values).tolist()


class KMeansLogs:
    """Reads and writes one experiment folder's k-means logs."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        #: one-line-per-client files already read (path -> client id -> record)
        self._cache: dict[Path, dict[int, dict[str, Any]]] = {}

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

    def write_server_local_means(
        self, server_round: int, client_ids: list[int], means: np.ndarray, counts: np.ndarray
    ) -> None:
        """Debug only: every client's shared local means (NaN = none) and counts as the server received them."""
        folder = self.root / LOCAL_MEANS
        folder.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            folder / f"{round_prefix(server_round)}_server.npz",
            client_ids=np.asarray(client_ids, dtype=np.int64),
            local_means=np.asarray(means),
            sample_counts=np.asarray(counts),
        )

    # ---------------------------------------------------------------- client side
    def client_round_file(self, server_round: int) -> Path:
        return self.root / LOCAL_MEANS / f"{round_prefix(server_round)}_clients.jsonl"

    def write_client_round(
        self,
        client_id: int,
        server_round: int,
        means: np.ndarray,
        counts: np.ndarray,
        assignments: np.ndarray,
        metadata: dict[str, Any],
    ) -> None:
        """The client's own record of a round, one line of the round's file.

        ``means`` (runs, k, d) are the local means it shared (NaN = withheld or
        empty), ``counts`` (runs, k) their counts after its privacy filter,
        ``assignments`` (runs, rows) the nearest global centroid of every row.
        """
        record = {
            "client_id": client_id,
            "round_number": server_round,
            **metadata,
            "local_means": _nan_to_none(means),
            "sample_counts": np.asarray(counts).tolist(),
            "assignments": np.asarray(assignments).astype(int).tolist(),
        }
        append_line(self.client_round_file(server_round), json.dumps(record, separators=(",", ":")))

    def write_client_points(self, client_id: int, points_2d: np.ndarray) -> None:
        line = json.dumps({"client_id": client_id, "points_2d": np.asarray(points_2d).tolist()})
        append_line(self.root / LOCAL_MEANS / POINTS_FILE, line)

    def client_log(self, client_id: int, line: str) -> None:
        append_line(
            self.root / CLIENT_LOGS / CLIENT_LOG, f"{datetime.now():%Y-%m-%d %H:%M:%S} client {client_id}: {line}"
        )

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

    def _client_lines(self, path: Path) -> dict[int, dict[str, Any]]:
        """client id -> its record in a one-line-per-client file (read once, then cached)."""
        if path not in self._cache:
            lines = path.read_text().splitlines() if path.is_file() else []
            self._cache[path] = {int(r["client_id"]): r for r in (json.loads(x) for x in lines if x.strip())}
        return self._cache[path]

    def client_ids(self) -> list[int]:
        """Every client that wrote its points or a round (sorted)."""
        folder = self.root / LOCAL_MEANS
        if not folder.is_dir():
            return []
        ids = set(self._client_lines(folder / POINTS_FILE))
        for path in folder.glob("round_*_clients.jsonl"):
            ids.update(self._client_lines(path))
        return sorted(ids)

    def read_local(self, client_id: int, server_round: int) -> dict[str, Any] | None:
        """A client's logged round (means and counts of every run, assignments, metadata) or None."""
        record = self._client_lines(self.client_round_file(server_round)).get(client_id)
        if record is None:
            return None
        arrays = ("local_means", "sample_counts", "assignments")
        return {
            "means": np.array(record["local_means"], dtype=np.float64),
            "counts": np.asarray(record["sample_counts"]),
            "assignments": np.asarray(record["assignments"]),
            "metadata": {k: v for k, v in record.items() if k not in arrays},
        }

    def read_client_points(self, client_id: int) -> np.ndarray | None:
        record = self._client_lines(self.root / LOCAL_MEANS / POINTS_FILE).get(client_id)
        return None if record is None else np.asarray(record["points_2d"], dtype=np.float64)

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
