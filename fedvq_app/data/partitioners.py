"""Two partitioners flwr-datasets lacks, as ``Partitioner`` subclasses.

* :class:`DirichletMinPerClassPartitioner` -- seed 000's split: every client first
  receives ``min_per_class`` samples of every class, the rest of each class is then
  divided by Dirichlet(alpha) proportions.
* :class:`LongTailPartitioner` -- subsample the classes with an exponential profile
  n_c = n_max * IF^(c / (C-1)) (class 0 is the head), then hand the long-tailed
  pool to any inner partitioner (Dirichlet in practice).
"""

from __future__ import annotations

import numpy as np
from datasets import Dataset
from flwr_datasets.partitioner import Partitioner


class DirichletMinPerClassPartitioner(Partitioner):
    """Dirichlet label skew with a guaranteed minimum of samples per class per client."""

    def __init__(
        self,
        num_partitions: int,
        partition_by: str,
        alpha: float,
        min_per_class: int,
        seed: int | None = 42,
    ) -> None:
        super().__init__()
        if num_partitions < 1:
            raise ValueError(f"num_partitions must be >= 1, got {num_partitions}")
        if alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        if min_per_class < 0:
            raise ValueError(f"min_per_class must be >= 0, got {min_per_class}")
        self._num_partitions = num_partitions
        self._partition_by = partition_by
        self._alpha = float(alpha)
        self._min_per_class = min_per_class
        self._seed = seed
        self._indices: list[list[int]] | None = None

    @property
    def num_partitions(self) -> int:
        return self._num_partitions

    def load_partition(self, partition_id: int) -> Dataset:
        if not 0 <= partition_id < self._num_partitions:
            raise ValueError(f"partition_id {partition_id} outside 0..{self._num_partitions - 1}")
        if self._indices is None:
            self._indices = self._assign()
        return self.dataset.select(self._indices[partition_id])

    def _assign(self) -> list[list[int]]:
        rng = np.random.default_rng(self._seed)
        labels = np.asarray(self.dataset[self._partition_by])
        parts: list[list[int]] = [[] for _ in range(self._num_partitions)]
        for cls in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == cls))
            guaranteed = min(self._min_per_class, len(idx) // self._num_partitions)
            for pid in range(self._num_partitions):
                parts[pid].extend(idx[pid * guaranteed : (pid + 1) * guaranteed].tolist())
            rest = idx[guaranteed * self._num_partitions :]
            shares = rng.dirichlet([self._alpha] * self._num_partitions)
            cuts = (np.cumsum(shares) * len(rest)).astype(int)[:-1]
            for pid, chunk in enumerate(np.split(rest, cuts)):
                parts[pid].extend(chunk.tolist())
        return [rng.permutation(p).tolist() for p in parts]


def long_tail_counts(class_sizes: np.ndarray, imbalance_factor: float) -> np.ndarray:
    """Per-class sample counts of an exponential long-tail profile (class 0 = head)."""
    num_classes = len(class_sizes)
    n_max = int(class_sizes.max())
    exponents = np.arange(num_classes) / max(num_classes - 1, 1)
    wanted = np.floor(n_max * imbalance_factor**exponents).astype(int)
    return np.maximum(np.minimum(wanted, class_sizes), 1)


class LongTailPartitioner(Partitioner):
    """Long-tailed subsampling of the classes, then an inner partitioner."""

    def __init__(
        self,
        inner: Partitioner,
        partition_by: str,
        imbalance_factor: float,
        seed: int | None = 42,
    ) -> None:
        super().__init__()
        if not 0 < imbalance_factor <= 1:
            raise ValueError(f"imbalance_factor must be in (0, 1], got {imbalance_factor}")
        self._inner = inner
        self._partition_by = partition_by
        self._imbalance_factor = imbalance_factor
        self._seed = seed

    @property
    def num_partitions(self) -> int:
        return self._inner.num_partitions

    def load_partition(self, partition_id: int) -> Dataset:
        if not self._inner.is_dataset_assigned():
            self._inner.dataset = self._long_tailed_pool()
        return self._inner.load_partition(partition_id)

    def _long_tailed_pool(self) -> Dataset:
        rng = np.random.default_rng(self._seed)
        labels = np.asarray(self.dataset[self._partition_by])
        classes = np.unique(labels)
        sizes = np.array([(labels == c).sum() for c in classes])
        keep = long_tail_counts(sizes, self._imbalance_factor)
        chosen = [
            rng.choice(np.flatnonzero(labels == c), size=k, replace=False)
            for c, k in zip(classes, keep, strict=True)
        ]
        return self.dataset.select(np.sort(np.concatenate(chosen)).tolist())
