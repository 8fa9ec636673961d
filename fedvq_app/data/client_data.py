"""One client's view of the data: its train/val split, the global test set, loaders.

Images become normalized float tensors once; rotated clients (covariate shift: seed
001's rotated fraction, or several rotation domains with ``shift.domains``) see their
train, val and test images rotated, i.e. the test set in their own domain.
Seed 000's iteration equalization makes every client run the largest client's
number of batches per epoch, with stronger augmentation below 70 % of its size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, TensorDataset

from fedvq_app.config import Settings
from fedvq_app.data.datasets import ImageData, load_image_data
from fedvq_app.data.partition import cached_partition
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
    from sklearn.model_selection import train_test_split  # noqa: PLC0415

    counts = np.bincount(labels[rows])
    stratify = labels[rows] if counts[counts > 0].min() >= 2 and n_val >= len(counts[counts > 0]) else None
    train, val = train_test_split(rows, test_size=n_val, random_state=seed, stratify=stratify)
    return np.sort(train), np.sort(val)


def load_client_data(settings: Settings, partition_id: int, num_partitions: int) -> ClientData:
    """Partition the training pool, split this client's share, apply its shift."""
    data: ImageData = load_image_data(settings.dataset, settings.seed)
    parts = cached_partition(
        data.train_y.astype(np.int64).tobytes(), settings.partition, num_partitions, settings.seed
    )
    rows = parts[partition_id]
    train_rows, val_rows = _split_train_val(
        rows, data.train_y, settings.dataset.val_fraction, settings.seed + partition_id
    )
    angle = settings.shift.angle_of(partition_id, num_partitions)
    rotated = angle % 360 != 0
    shift = (lambda x: rotate_images(x, angle)) if rotated else (lambda x: x)
    frac = settings.dataset.val_fraction
    return ClientData(
        partition_id=partition_id,
        train_x=to_tensor(shift(data.train_x[train_rows])),
        train_y=torch.from_numpy(data.train_y[train_rows]),
        val_x=to_tensor(shift(data.train_x[val_rows])),
        val_y=torch.from_numpy(data.train_y[val_rows]),
        test_x=to_tensor(shift(data.test_x)),
        test_y=torch.from_numpy(data.test_y),
        class_names=data.class_names,
        rotated=rotated,
        domain=settings.shift.domain_of(partition_id, num_partitions),
        max_train_size=max(len(p) - val_count(len(p), frac) for p in parts),
    )


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
    from torchvision.transforms import v2  # noqa: PLC0415

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
