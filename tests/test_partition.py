"""Partitioners: sizes, determinism, per-class minimums, pathological classes, long tail."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fedvq_app.config import ConfigError, PartitionSettings
from fedvq_app.data.partition import partition_indices
from fedvq_app.data.partitioners import long_tail_counts

LABELS = np.repeat(np.arange(10), 100)  # 1,000 samples, 10 balanced classes


def _parts(kind: str, seed: int = 0, n: int = 10, **kw) -> list[np.ndarray]:
    settings = dataclasses.replace(PartitionSettings(), kind=kind, **kw)
    return partition_indices(LABELS, settings, n, seed)


@pytest.mark.parametrize("kind", ["iid", "dirichlet", "dirichlet-min-per-class", "pathological"])
def test_partitions_are_disjoint_and_deterministic(kind):
    parts = _parts(kind)
    flat = np.concatenate(parts)
    assert len(flat) == len(set(flat.tolist()))
    assert all(np.array_equal(a, b) for a, b in zip(parts, _parts(kind), strict=True))
    if kind != "pathological":  # every sample is used
        assert len(flat) == len(LABELS)


def test_seed_changes_a_dirichlet_split():
    a, b = _parts("dirichlet", seed=0), _parts("dirichlet", seed=1)
    assert [len(p) for p in a] != [len(p) for p in b]


def test_iid_sizes_are_equal_and_mixed_even_on_label_sorted_data():
    parts = _parts("iid")
    assert {len(p) for p in parts} == {100}
    assert all(len(np.unique(LABELS[p])) == 10 for p in parts)  # LABELS is sorted by class


def test_dirichlet_respects_min_partition_size_and_skews_labels():
    parts = _parts("dirichlet", alpha=0.3, min_partition_size=20)
    assert min(len(p) for p in parts) >= 20
    dominant = [np.bincount(LABELS[p], minlength=10).max() / len(p) for p in parts]
    assert np.mean(dominant) > 0.3  # IID would give ~0.1


def test_dirichlet_min_per_class_guarantees_every_class():
    parts = _parts("dirichlet-min-per-class", alpha=0.1, min_per_class=5)
    counts = np.array([np.bincount(LABELS[p], minlength=10) for p in parts])
    assert counts.min() >= 5
    assert counts.sum() == len(LABELS)


def test_pathological_gives_k_classes_per_client():
    parts = _parts("pathological", classes_per_client=2)
    assert [len(np.unique(LABELS[p])) for p in parts] == [2] * 10


def test_long_tail_profile_follows_the_imbalance_factor():
    counts = long_tail_counts(np.full(10, 100), 0.01)
    assert counts[0] == 100 and counts[-1] == 1
    assert np.all(np.diff(counts) <= 0)
    assert counts[5] == int(np.floor(100 * 0.01 ** (5 / 9)))
    parts = _parts("long-tail", imbalance_factor=0.1, alpha=1.0, min_partition_size=0)
    pooled = np.bincount(LABELS[np.concatenate(parts)], minlength=10)
    assert pooled.tolist() == long_tail_counts(np.full(10, 100), 0.1).tolist()


def test_impossible_dirichlet_is_a_one_line_config_error():
    with pytest.raises(ConfigError, match="cannot split 1000 samples into 10 partitions") as err:
        _parts("dirichlet", alpha=0.01, min_partition_size=99)
    assert "\n" not in str(err.value)


def test_too_many_pathological_classes_is_a_config_error():
    with pytest.raises(ConfigError, match="partition.classes-per-client"):
        _parts("pathological", classes_per_client=11)
