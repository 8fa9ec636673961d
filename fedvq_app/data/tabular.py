"""Tabular client data for federated k-means: generated files or scikit-learn tables.

``generated``: the client reads ``client_<partition-id>.npz`` (``data``, optional
``labels``) written by ``data_gen/generate_test_data.py`` from a folder chosen, in
order, by ``kmeans.data-path``, the ``TEST_DATA_PATH`` environment variable (the
seed's convention) or ``dataset.data-dir`` (which a SuperNode's ``data-dir`` node
config overrides, so each site can keep its file where it likes).

``iris``, ``wine``, ``breast-cancer``: the scikit-learn table (offline) is cut into
``num-partitions`` shares by flwr-datasets' IID or Dirichlet-by-label partitioner
-- the same partitioners the image datasets use -- and the client keeps its share.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from fedvq_app.options import DATA_PATH_ENV, SKLEARN_TABLES, TABULAR_SOURCES, SPLITS
from fedvq_app.config import ConfigError, PartitionSettings
from fedvq_app.data.cache import PARTITIONS, file_fingerprint



@dataclass(frozen=True)
class TabularPartition:
    """One client's rows (float64, N x d) and, when known, their true labels."""

    x: np.ndarray
    labels: np.ndarray | None
    source: str

    @property
    def num_features(self) -> int:
        return int(self.x.shape[1])

    @property
    def num_classes(self) -> int:
        """Classes the labels can take (max label + 1; 0 without labels)."""
        return int(self.labels.max()) + 1 if self.labels is not None and len(self.labels) else 0


def generated_data_dir(data_path: str, fallback_dir: str) -> Path:
    """Folder of the generated client files: config, then $TEST_DATA_PATH, then data-dir."""
    chosen = data_path or os.environ.get(DATA_PATH_ENV, "") or fallback_dir
    return Path(chosen).expanduser()


def load_generated_partition(directory: Path, partition_id: int) -> TabularPartition:
    """``client_<partition_id>.npz`` of a generated data folder (memoized per process by path, size, mtime)."""
    path = directory / f"client_{partition_id}.npz"
    arrays = PARTITIONS.get("generated", {"file": file_fingerprint(path.resolve())},
                            lambda: _read_generated(directory, path), disk=False)
    return TabularPartition(arrays["data"], arrays.get("labels"), "generated")


def _read_generated(directory: Path, path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        present = sorted(p.name for p in directory.glob("client_*.npz")) if directory.is_dir() else []
        raise ConfigError(
            f"generated data file {path} not found (folder has {present or 'no client files'}); "
            f"run data_gen/generate_test_data.py and set kmeans.data-path or {DATA_PATH_ENV}"
        )
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "data" not in npz:
                raise ConfigError(f"{path} has no 'data' array (keys: {sorted(npz.files)})")
            x = np.asarray(npz["data"], dtype=np.float64)
            labels = np.asarray(npz["labels"]) if "labels" in npz else None
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 - not an npz, truncated, text in 'data': bad input, one line
        raise ConfigError(f"generated data file {path} is not a readable npz of numbers ({type(err).__name__})") from None
    if x.ndim != 2 or len(x) < 1:
        raise ConfigError(f"{path}: 'data' must be a 2-D array (rows x features), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ConfigError(f"{path}: 'data' has {int((~np.isfinite(x)).sum())} NaN or inf values")
    if labels is not None:
        if labels.shape != (len(x),) or labels.dtype.kind not in "iu" or (len(labels) and labels.min() < 0):
            raise ConfigError(
                f"{path}: 'labels' must be {len(x)} non-negative integers (one per row), got {labels.dtype} "
                f"of shape {labels.shape}"
            )
        labels = labels.astype(np.int64)
    return {"data": x} if labels is None else {"data": x, "labels": labels}


@lru_cache(maxsize=4)
def _sklearn_table(name: str) -> tuple[np.ndarray, np.ndarray]:
    from sklearn import datasets  # noqa: PLC0415 - only clients of this method need it

    loaders = {"iris": datasets.load_iris, "wine": datasets.load_wine, "breast-cancer": datasets.load_breast_cancer}
    table = loaders[name]()
    return np.asarray(table.data, dtype=np.float64), np.asarray(table.target, dtype=np.int64)


def load_sklearn_partition(
    name: str, partition_id: int, num_partitions: int, split: str, skew_alpha: float, seed: int
) -> TabularPartition:
    """This client's share of a scikit-learn table, IID or skewed by label (Dirichlet)."""
    x, y = _sklearn_table(name)
    key = {"table": name, "split": split, "skew_alpha": skew_alpha, "seed": seed, "num_partitions": num_partitions}
    stored = PARTITIONS.get("table-partitions", key, lambda: _table_partitions(y, num_partitions, split,
                                                                               skew_alpha, seed))
    start, stop = stored["offsets"][partition_id], stored["offsets"][partition_id + 1]
    rows = stored["rows"][start:stop]
    return TabularPartition(x[rows], y[rows], name)


def _table_partitions(y: np.ndarray, num_partitions: int, split: str, skew_alpha: float, seed: int) -> dict:
    """Every partition's sorted rows (concatenated, with offsets); flwr-datasets is imported only here."""
    from fedvq_app.data.partition import partition_indices  # noqa: PLC0415 - start-up cost: flwr-datasets and datasets, only on this path

    if split == "iid":
        settings = PartitionSettings(kind="iid")
    else:
        settings = PartitionSettings(kind="dirichlet", alpha=skew_alpha, min_partition_size=max(2, len(y) // 50))
    # the tables are sorted by class and flwr-datasets' IidPartitioner cuts contiguous
    # shards, so the rows are shuffled (with the run's seed) before partitioning
    order = np.random.default_rng(seed).permutation(len(y))
    parts = [np.sort(order[p]) for p in partition_indices(y[order], settings, num_partitions, seed)]
    offsets = np.cumsum([0, *map(len, parts)])
    return {"rows": np.concatenate(parts).astype(np.int64), "offsets": offsets.astype(np.int64)}


def load_tabular_partition(
    source: str,
    partition_id: int,
    num_partitions: int,
    *,
    data_path: str = "",
    fallback_dir: str = "data",
    split: str = "iid",
    skew_alpha: float = 0.5,
    seed: int = 42,
) -> TabularPartition:
    """One client's tabular data for ``source`` (one of :data:`TABULAR_SOURCES`)."""
    if source == "generated":
        return load_generated_partition(generated_data_dir(data_path, fallback_dir), partition_id)
    return load_sklearn_partition(source, partition_id, num_partitions, split, skew_alpha, seed)
