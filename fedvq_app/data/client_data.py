"""One client's view of the data: its train/val split, the global test set, loaders.

Images become normalized float tensors once; rotated clients (covariate shift: seed
001's rotated fraction, or several rotation domains with ``shift.domains``) see their
train, val and test images rotated, i.e. the test set in their own domain.
Seed 000's iteration equalization makes every client run the largest client's
number of batches per epoch, with stronger augmentation below 70 % of its size.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, TensorDataset

from fedvq_app.config import ConfigError, Settings
from fedvq_app.data.cache import PARTITIONS, file_fingerprint
from fedvq_app.data.datasets import ImageData, load_image_data, source_paths
from fedvq_app.data.shifts import rotate_images

STRONG_AUGMENT_BELOW = 0.7


@dataclass
class ClientData:
    """uint8 image tensors of one client plus the facts the server may learn about them."""

    partition_id: int
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    class_names: tuple[str, ...]
    rotated: bool
    max_train_size: int
    #: covariate-shift domain (0 = unshifted; with shift.domains the index of the client's angle)
    domain: int = 0

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_train(self) -> int:
        return int(self.train_y.numel())

    def label_counts(self) -> list[int]:
        """Per-class training counts (a statistic the server may see, never the data)."""
        return np.bincount(self.train_y.numpy(), minlength=self.num_classes).tolist()


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, C) -> uint8 (N, C, H, W); kept as bytes to stay 4x smaller."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()


def normalize_batch(x: torch.Tensor) -> torch.Tensor:
    """uint8 batch -> float in [-1, 1] (done per batch, on the training device)."""
    return (x.float() / 255.0 - 0.5) / 0.5


def val_count(n: int, fraction: float) -> int:
    """Validation samples kept from a partition of size ``n``."""
    if n < 2 or fraction <= 0:
        return 0
    return min(n - 1, max(1, int(round(n * fraction))))


def _split_train_val(
    rows: np.ndarray, labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    n_val = val_count(len(rows), fraction)
    if n_val == 0:
        return rows, rows[:0]
    from sklearn.model_selection import train_test_split  # noqa: PLC0415 - start-up cost: scikit-learn, only on this path

    counts = np.bincount(labels[rows])
    stratify = labels[rows] if counts[counts > 0].min() >= 2 and n_val >= len(counts[counts > 0]) else None
    train, val = train_test_split(rows, test_size=n_val, random_state=seed, stratify=stratify)
    return np.sort(train), np.sort(val)


def _cache_parts(settings: Settings, **extra) -> dict:
    """Everything the arrays depend on: dataset settings, the files read, the seed, + ``extra``."""
    return {
        "dataset": dataclasses.asdict(settings.dataset),
        "sources": [file_fingerprint(p) for p in source_paths(settings.dataset)],
        "seed": settings.seed,
        **extra,
    }


def _client_arrays(settings: Settings, partition_id: int, num_partitions: int, angle: int) -> dict:
    """Partition the training pool (once per host, all clients), split this client's share, shift it."""
    data: ImageData = load_image_data(settings.dataset, settings.seed)
    parts_key = _cache_parts(settings, partition=dataclasses.asdict(settings.partition), num_partitions=num_partitions)
    stored = PARTITIONS.get("partitions", parts_key, lambda: _all_partitions(data.train_y, settings, num_partitions))
    offsets = stored["offsets"]
    parts = np.split(stored["rows"], offsets[1:-1])
    rows = parts[partition_id]
    if len(rows) == 0:
        raise ConfigError(
            f"node-config partition-id={partition_id}: partition {partition_id} of {num_partitions} is empty "
            f"under partition.kind={settings.partition.kind!r}; use fewer partitions or another partition.kind"
        )
    train_rows, val_rows = _split_train_val(
        rows, data.train_y, settings.dataset.val_fraction, settings.seed + partition_id
    )
    shift = (lambda x: rotate_images(x, angle)) if angle % 360 else (lambda x: x)
    frac = settings.dataset.val_fraction
    return {
        "train_x": shift(data.train_x[train_rows]),
        "train_y": data.train_y[train_rows],
        "val_x": shift(data.train_x[val_rows]),
        "val_y": data.train_y[val_rows],
        "class_names": np.array(data.class_names, dtype=str),
        "max_train_size": np.array(max(len(p) - val_count(len(p), frac) for p in parts)),
    }


def _all_partitions(labels: np.ndarray, settings: Settings, num_partitions: int) -> dict:
    """Every partition's rows, concatenated, with offsets (flwr-datasets is imported only here)."""
    from fedvq_app.data.partition import partition_indices  # noqa: PLC0415 - start-up cost: flwr-datasets and datasets, only on this path

    parts = partition_indices(labels.astype(np.int64), settings.partition, num_partitions, settings.seed)
    offsets = np.cumsum([0, *map(len, parts)])
    return {"rows": np.concatenate(parts).astype(np.int64), "offsets": offsets.astype(np.int64)}


def _test_arrays(settings: Settings, angle: int) -> dict:
    data: ImageData = load_image_data(settings.dataset, settings.seed)
    test_x = rotate_images(data.test_x, angle) if angle % 360 else data.test_x
    return {"test_x": test_x, "test_y": data.test_y}


def load_client_data(settings: Settings, partition_id: int, num_partitions: int) -> ClientData:
    """Partition the training pool, split this client's share, apply its shift.

    The arrays come from the host's partition cache (:mod:`fedvq_app.data.cache`): they
    are computed on the first message of a run's settings and read back on the next
    ones, in this process or in the next ClientApp process of the same SuperNode.
    """
    angle = settings.shift.angle_of(partition_id, num_partitions)
    client_key = _cache_parts(
        settings,
        partition=dataclasses.asdict(settings.partition),
        shift=dataclasses.asdict(settings.shift),
        num_partitions=num_partitions,
        partition_id=partition_id,
    )
    arrays = PARTITIONS.get("client", client_key, lambda: _client_arrays(settings, partition_id, num_partitions,
                                                                         angle))
    test = PARTITIONS.get("test", _cache_parts(settings, rotate_degrees=angle % 360),
                          lambda: _test_arrays(settings, angle))
    return ClientData(
        partition_id=partition_id,
        train_x=to_tensor(arrays["train_x"]),
        train_y=torch.from_numpy(arrays["train_y"]),
        val_x=to_tensor(arrays["val_x"]),
        val_y=torch.from_numpy(arrays["val_y"]),
        test_x=to_tensor(test["test_x"]),
        test_y=torch.from_numpy(test["test_y"]),
        class_names=tuple(str(c) for c in arrays["class_names"]),
        rotated=angle % 360 != 0,
        max_train_size=int(arrays["max_train_size"]),
        domain=settings.shift.domain_of(partition_id, num_partitions),
    )


def pooled_validation(settings: Settings, num_partitions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every partition's validation split, concatenated (``metrics.pooled-validation``; benchmarks in simulation)."""
    parts = [load_client_data(settings, pid, num_partitions) for pid in range(num_partitions)]
    return torch.cat([p.val_x for p in parts]), torch.cat([p.val_y for p in parts])


class AugmentedTensors(Dataset):
    """Tensor pairs passed through a torchvision transform on access."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform) -> None:
        self.x, self.y, self.transform = x, y, transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.transform(self.x[i]), self.y[i]


def augmentation(strong: bool):
    """Mild (or, for small clients, strong) geometric/photometric augmentation."""
    from torchvision.transforms import v2  # noqa: PLC0415 - start-up cost: torchvision, only on this path

    if strong:
        return v2.Compose([
            v2.RandomAffine(degrees=15, translate=(0.12, 0.12), scale=(0.85, 1.15)),
            v2.ColorJitter(brightness=0.2, contrast=0.2),
        ])
    return v2.RandomAffine(degrees=10, translate=(0.08, 0.08))


def train_loader(data: ClientData, settings: Settings, generator: torch.Generator) -> DataLoader:
    """Shuffled training batches; equalized to the largest client when configured."""
    cfg = settings.train
    dataset: Dataset = TensorDataset(data.train_x, data.train_y)
    small = data.num_train < STRONG_AUGMENT_BELOW * data.max_train_size
    if cfg.augment or (cfg.equalize_iterations and small):
        dataset = AugmentedTensors(data.train_x, data.train_y, augmentation(strong=small))
    num_samples = data.num_train
    if cfg.equalize_iterations:
        num_samples = max(data.max_train_size // cfg.batch_size, 1) * cfg.batch_size
    sampler = RandomSampler(dataset, num_samples=num_samples, generator=generator)
    drop_last = cfg.equalize_iterations and num_samples >= cfg.batch_size
    return DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, drop_last=drop_last)


def eval_loader(x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> DataLoader:
    """Ordered batches for evaluation."""
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)
