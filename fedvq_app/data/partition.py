"""Cut the training pool into client partitions with flwr-datasets partitioners.

The partitioners run on an in-memory ``datasets.Dataset`` holding only the labels
and each row's index, so no image is copied and no hub is needed. Every client
computes the same assignment from the same seed and keeps its own share.
"""

from __future__ import annotations

import numpy as np
from datasets import Dataset
from flwr_datasets.partitioner import (
    DirichletPartitioner,
    IidPartitioner,
    Partitioner,
    PathologicalPartitioner,
)

from fedvq_app.config import ConfigError, PartitionSettings
from fedvq_app.data.partitioners import (
    DirichletMinPerClassPartitioner,
    LongTailPartitioner,
)


def build_partitioner(settings: PartitionSettings, num_partitions: int, seed: int) -> Partitioner:
    """The flwr-datasets partitioner named by ``partition.kind``."""
    builders = {
        "iid": lambda: IidPartitioner(num_partitions=num_partitions),
        "dirichlet": lambda: DirichletPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            alpha=settings.alpha,
            min_partition_size=settings.min_partition_size,
            self_balancing=False,
            seed=seed,
        ),
        "dirichlet-min-per-class": lambda: DirichletMinPerClassPartitioner(
            num_partitions, "label", settings.alpha, settings.min_per_class, seed=seed
        ),
        "pathological": lambda: PathologicalPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            num_classes_per_partition=settings.classes_per_client,
            class_assignment_mode="first-deterministic",
            seed=seed,
        ),
        "long-tail": lambda: LongTailPartitioner(
            DirichletPartitioner(
                num_partitions=num_partitions,
                partition_by="label",
                alpha=settings.alpha,
                min_partition_size=settings.min_partition_size,
                self_balancing=False,
                seed=seed,
            ),
            partition_by="label",
            imbalance_factor=settings.imbalance_factor,
            seed=seed,
        ),
    }
    return builders[settings.kind]()


def partition_indices(
    labels: np.ndarray, settings: PartitionSettings, num_partitions: int, seed: int
) -> list[np.ndarray]:
    """Row indices of every partition (deterministic for a seed)."""
    if num_partitions < 1:
        raise ConfigError(f"node-config key 'num-partitions' has invalid value {num_partitions}: expected an int >= 1")
    if num_partitions > len(labels):
        raise ConfigError(
            f"node-config key 'num-partitions' has invalid value {num_partitions}: the training pool has only "
            f"{len(labels)} samples; use at most {len(labels)} partitions (SuperNodes) or more data"
        )
    if settings.kind == "pathological" and settings.classes_per_client > len(np.unique(labels)):
        raise ConfigError(
            f"config key 'partition.classes-per-client' has invalid value "
            f"{settings.classes_per_client}: the dataset has only {len(np.unique(labels))} classes"
        )
    table = Dataset.from_dict({"label": labels.tolist(), "row": list(range(len(labels)))})
    if settings.kind == "iid":  # IidPartitioner cuts contiguous shards: shuffle rows first
        table = table.shuffle(seed=seed)
    partitioner = build_partitioner(settings, num_partitions, seed)
    partitioner.dataset = table
    try:
        return [np.asarray(partitioner.load_partition(i)["row"], dtype=np.int64)
                for i in range(num_partitions)]
    except ValueError as err:
        reason = str(err).splitlines()[0]
        if num_partitions > len(labels):
            hint = f"use at most {len(labels)} partitions (SuperNodes) or more data"
        else:
            hint = "raise partition.alpha or lower partition.min-partition-size"
        raise ConfigError(
            f"partition.kind={settings.kind!r} with alpha={settings.alpha} and "
            f"min-partition-size={settings.min_partition_size} cannot split {len(labels)} "
            f"samples into {num_partitions} partitions ({reason}); {hint}"
        ) from None
