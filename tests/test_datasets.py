"""Dataset loading from local files, shapes, shifts and client loaders."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from fedvq_app.config import ConfigError, DatasetSettings
from fedvq_app.data.client_data import load_client_data, train_loader
from fedvq_app.data.datasets import dataset_info, load_image_data
from fedvq_app.registry import load_settings


def _write_medmnist(path, n_train=30, n_val=6, n_test=12, rgb=True, classes=9):
    rng = np.random.default_rng(0)
    shape = (28, 28, 3) if rgb else (28, 28)
    np.savez(
        path,
        train_images=rng.integers(0, 255, (n_train, *shape), dtype=np.uint8),
        train_labels=rng.integers(0, classes, (n_train, 1)),
        val_images=rng.integers(0, 255, (n_val, *shape), dtype=np.uint8),
        val_labels=rng.integers(0, classes, (n_val, 1)),
        test_images=rng.integers(0, 255, (n_test, *shape), dtype=np.uint8),
        test_labels=rng.integers(0, classes, (n_test, 1)),
    )


def test_digits_are_28x28_uint8_with_a_stratified_test_split():
    data = load_image_data(DatasetSettings(), 42)
    assert data.train_x.shape[1:] == (28, 28, 1) and data.train_x.dtype == np.uint8
    assert len(data.train_y) + len(data.test_y) == 1797
    assert len(data.test_y) == 360
    assert np.bincount(data.test_y).min() >= 35  # stratified: ~36 per class
    assert data.num_classes == 10


def test_channels_are_converted_on_request():
    data = load_image_data(DatasetSettings(channels=3), 42)
    assert data.train_x.shape[-1] == 3
    assert np.array_equal(data.train_x[..., 0], data.train_x[..., 2])


def test_medmnist_npz_written_by_the_test_loads_with_info_metadata(tmp_path):
    _write_medmnist(tmp_path / "pathmnist.npz")
    settings = DatasetSettings(name="pathmnist", data_dir=str(tmp_path))
    data = load_image_data(settings, 0)
    assert data.train_x.shape == (36, 28, 28, 3)  # train + val form the training pool
    assert data.test_x.shape == (12, 28, 28, 3)
    assert data.train_y.ndim == 1
    assert data.num_classes == 9 and "adipose" in data.class_names
    assert dataset_info(settings, 0).channels == 3


def test_missing_medmnist_file_names_the_file(tmp_path):
    settings = DatasetSettings(name="dermamnist", data_dir=str(tmp_path))
    with pytest.raises(ConfigError) as err:
        load_image_data(settings, 0)
    assert str(tmp_path / "dermamnist.npz") in str(err.value)
    assert "dataset.download=true" in str(err.value)


def test_other_sizes_read_flag_underscore_size(tmp_path):
    with pytest.raises(ConfigError, match="bloodmnist_64.npz"):
        load_image_data(DatasetSettings(name="bloodmnist", data_dir=str(tmp_path), size=64), 0)


def test_multilabel_flag_is_refused_clearly(tmp_path):
    with pytest.raises(ConfigError, match="multi-label"):
        load_image_data(DatasetSettings(name="chestmnist", data_dir=str(tmp_path)), 0)


def test_generic_npz_without_test_split_gets_a_held_out_split(tmp_path):
    rng = np.random.default_rng(1)
    np.savez(
        tmp_path / "own.npz",
        train_images=rng.integers(0, 255, (50, 16, 16), dtype=np.uint8),
        train_labels=np.repeat(np.arange(5), 10),
    )
    data = load_image_data(DatasetSettings(name="npz", npz_file="own.npz", data_dir=str(tmp_path)), 0)
    assert data.train_x.shape == (40, 28, 28, 1)  # resized to dataset.size
    assert len(data.test_y) == 10 and data.num_classes == 5


def test_rotated_clients_see_rotated_images(run_config):
    settings = load_settings(run_config(**{"shift.rotate-fraction": 0.5, "partition.kind": "iid"}))
    plain = load_settings(run_config(**{"partition.kind": "iid"}))
    upright, rotated = load_client_data(settings, 0, 4), load_client_data(settings, 3, 4)
    assert not upright.rotated and rotated.rotated
    reference = load_client_data(plain, 3, 4)
    assert torch.equal(rotated.train_x, torch.rot90(reference.train_x, 2, dims=(2, 3)))
    assert torch.equal(rotated.test_x, torch.rot90(reference.test_x, 2, dims=(2, 3)))


def test_iteration_equalization_runs_the_largest_clients_batches(run_config):
    settings = load_settings(run_config(**{"train.equalize-iterations": True, "partition.alpha": 0.3}))
    sizes = [load_client_data(settings, i, 5).num_train for i in range(5)]
    small = load_client_data(settings, int(np.argmin(sizes)), 5)
    batches = len(train_loader(small, settings, torch.Generator().manual_seed(0)))
    assert small.max_train_size == max(sizes)
    assert batches == max(sizes) // settings.train.batch_size
    plain = dataclasses.replace(settings, train=dataclasses.replace(settings.train, equalize_iterations=False))
    assert len(train_loader(small, plain, torch.Generator())) == -(-small.num_train // settings.train.batch_size)


def _write_idx(path, array: np.ndarray) -> None:
    """IDX file as NIST/torchvision store it: big-endian magic (type 0x08 = uint8, ndim), dims, bytes."""
    header = np.array([0x0800 + array.ndim, *array.shape], dtype=">i4").tobytes()
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_emnist_reads_local_idx_files_and_untransposes(tmp_path):
    raw = tmp_path / "EMNIST" / "raw"
    raw.mkdir(parents=True)
    images = np.zeros((4, 28, 28), dtype=np.uint8)
    images[:, 3, 20] = 255  # stored transposed: row 3, column 20 -> displayed row 20, column 3
    labels = np.array([0, 5, 10, 61], dtype=np.uint8)
    for split in ("train", "test"):
        _write_idx(raw / f"emnist-byclass-{split}-images-idx3-ubyte", images)
        _write_idx(raw / f"emnist-byclass-{split}-labels-idx1-ubyte", labels)
    data = load_image_data(DatasetSettings(name="emnist", data_dir=str(tmp_path)), 0)
    assert data.train_x.shape == (4, 28, 28, 1)
    assert data.train_y.tolist() == [0, 5, 10, 61]
    assert data.train_x[0, 20, 3, 0] == 255 and data.train_x[0, 3, 20, 0] == 0
    assert len(data.class_names) == 62


def test_missing_cifar10_names_the_folder_and_the_download_switch(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_image_data(DatasetSettings(name="cifar10", data_dir=str(tmp_path)), 0)
    message = str(err.value)
    assert "dataset.data-dir" in message and str(tmp_path) in message
    assert "dataset.download=true" in message and "\n" not in message


def test_every_configurable_dataset_has_exactly_one_loader():
    from fedvq_app.config import DATASETS
    from fedvq_app.data.datasets import _LOADERS

    assert sorted(_LOADERS) == sorted(DATASETS)
