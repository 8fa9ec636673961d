"""Fashion-MNIST from its IDX files (gz or not) and the stratified subsets (issue 25).

Every test writes its own tiny IDX files; the real files are never needed.
"""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from fedvq_app.config import ConfigError, DatasetSettings
from fedvq_app.data import datasets
from fedvq_app.data.datasets import load_image_data, source_paths, training_pool_size
from fedvq_app.local_grid import full_run_config
from fedvq_app.registry import load_settings

SIDE = 6  # tiny images; dataset.size=8 resizes them
TRAIN, TEST = (
    ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
)


def _idx(array: np.ndarray) -> bytes:
    header = np.array([0x0800 + array.ndim, *array.shape], dtype=">i4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def _write(path, payload: bytes, gz: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


def write_fashion(folder, n_train=40, n_test=20, gz=True, seed=0, **replace) -> dict[str, np.ndarray]:
    """The four files in ``folder``; ``replace[stem] = bytes`` swaps one file's content."""
    rng = np.random.default_rng(seed)
    arrays = {
        TRAIN[0]: rng.integers(0, 256, (n_train, SIDE, SIDE)),
        TRAIN[1]: np.arange(n_train) % 10,
        TEST[0]: rng.integers(0, 256, (n_test, SIDE, SIDE)),
        TEST[1]: np.arange(n_test) % 10,
    }
    for stem, array in arrays.items():
        _write(folder / stem, replace.get(stem, _idx(array)), gz)
    return arrays


def fashion(folder, **kwargs) -> DatasetSettings:
    return DatasetSettings(**{"name": "fashion-mnist", "data_dir": str(folder), "size": 8, **kwargs})


@pytest.fixture(autouse=True)
def _fresh_cache():
    load_image_data.cache_clear()
    yield
    load_image_data.cache_clear()


@pytest.mark.parametrize("gz", [True, False])
def test_idx_files_load_gz_or_plain(tmp_path, gz):
    arrays = write_fashion(tmp_path, gz=gz)
    data = load_image_data(fashion(tmp_path, size=SIDE), 0)
    assert data.name == "fashion-mnist" and data.train_x.shape == (40, SIDE, SIDE, 1) and data.test_x.shape[0] == 20
    assert np.array_equal(data.train_x[..., 0], arrays[TRAIN[0]]) and data.train_y.tolist() == arrays[TRAIN[1]].tolist()
    assert data.num_classes == 10 and data.class_names[0] == "T-shirt/top" and data.class_names[9] == "Ankle boot"
    assert load_image_data(fashion(tmp_path), 0).train_x.shape == (40, 8, 8, 1)  # dataset.size resizes


def test_torchvisions_raw_layout_is_found_under_the_data_dir(tmp_path):
    write_fashion(tmp_path / "FashionMNIST" / "raw", gz=False)
    settings = fashion(tmp_path)
    assert load_image_data(settings, 0).train_x.shape[0] == 40
    assert [p.name for p in source_paths(settings)] == [*TRAIN, *TEST]


def test_the_default_data_dir_is_the_debian_folder_when_it_exists(tmp_path, monkeypatch):
    debian, local = tmp_path / "debian", tmp_path / "cwd"
    write_fashion(debian, n_train=30)
    write_fashion(local / "data", n_train=50)
    monkeypatch.chdir(local)
    monkeypatch.setitem(datasets.SYSTEM_DATA_DIRS, "fashion-mnist", debian)
    default = DatasetSettings(name="fashion-mnist", size=8)
    assert default.data_dir == "data" and datasets.data_folder(default) == debian
    assert load_image_data(default, 0).train_x.shape[0] == 30
    assert load_image_data(fashion(local / "data"), 0).train_x.shape[0] == 50  # an explicit data-dir wins
    monkeypatch.setitem(datasets.SYSTEM_DATA_DIRS, "fashion-mnist", tmp_path / "not-installed")
    load_image_data.cache_clear()
    assert load_image_data(default, 0).train_x.shape[0] == 50  # no Debian folder: ./data as before
    medmnist = DatasetSettings(name="pathmnist")
    assert datasets.data_folder(medmnist) == datasets.Path("data")  # other datasets keep 'data'


def test_a_missing_file_is_one_line_naming_it_and_both_ways_to_get_it(tmp_path):
    write_fashion(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(ConfigError) as err:
        load_image_data(fashion(tmp_path), 0)
    message = str(err.value)
    assert "\n" not in message and "'t10k-labels-idx1-ubyte'" in message and str(tmp_path) in message
    assert "apt-get install -y dataset-fashion-mnist" in message and "dataset.download=true" in message


def test_download_goes_through_torchvision_only_when_asked(tmp_path, monkeypatch):
    import torchvision.datasets

    calls = []

    class FakeFashionMNIST:
        classes = torchvision.datasets.FashionMNIST.classes

        def __init__(self, root, train, download):
            calls.append((root, train, download))
            write_fashion(datasets.Path(root) / "FashionMNIST" / "raw", gz=False)

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", FakeFashionMNIST)
    with pytest.raises(ConfigError, match="dataset.download=true"):
        load_image_data(fashion(tmp_path), 0)
    assert calls == []
    data = load_image_data(fashion(tmp_path, download=True), 0)
    assert data.train_x.shape[0] == 40 and calls == [(str(tmp_path), True, True), (str(tmp_path), False, True)]


@pytest.mark.parametrize(
    ("stem", "payload", "expected"),
    [
        (TRAIN[0], _idx(np.zeros((4, SIDE), np.uint8)), "magic number 0x00000802, expected 0x00000803"),
        (TRAIN[1], b"\x00\x00\x0d\x01" + _idx(np.zeros(40))[4:], "magic number 0x00000d01"),
        (TRAIN[0], _idx(np.zeros((40, SIDE, SIDE)))[:-7], "but its header (40, 6, 6) announces 1440"),
        (TEST[0], b"\x00\x00", "fewer than an IDX header"),
        (TRAIN[1], _idx(np.arange(39) % 10), "has 39 labels for 40 images"),
        (TEST[1], _idx(np.full(20, 10)), "test labels go up to 10 but the dataset has 10 classes"),
        (TEST[0], _idx(np.zeros((20, SIDE + 1, SIDE))), "test images have shape (7, 6), training images (6, 6)"),
    ],
)
def test_a_bad_file_is_one_line_naming_it(tmp_path, stem, payload, expected):
    write_fashion(tmp_path, gz=False, **{stem: payload})
    with pytest.raises(ConfigError) as err:
        load_image_data(fashion(tmp_path), 0)
    message = str(err.value)
    assert expected in message and "\n" not in message and str(tmp_path) in message


def test_a_cut_gzip_file_is_one_line_naming_it(tmp_path):
    write_fashion(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(ConfigError, match=r"train-images-idx3-ubyte.gz' cannot be read \(EOFError"):
        load_image_data(fashion(tmp_path), 0)


# ----------------------------------------------------------------------------- subsets
def test_max_train_samples_keeps_a_stratified_seeded_subset_and_the_full_test_split(tmp_path):
    write_fashion(tmp_path, n_train=100, n_test=30)
    data = load_image_data(fashion(tmp_path, max_train_samples=20), 0)
    assert len(data.train_y) == 20 and np.bincount(data.train_y).tolist() == [2] * 10  # stratified
    assert len(data.test_y) == 30  # the test split stays whole
    again = load_image_data(fashion(tmp_path, max_train_samples=20), 0)
    other = load_image_data(fashion(tmp_path, max_train_samples=20), 1)
    assert np.array_equal(again.train_x, data.train_x) and not np.array_equal(other.train_x, data.train_x)
    assert training_pool_size(fashion(tmp_path, max_train_samples=20), 0) == 20
    assert len(load_image_data(fashion(tmp_path, max_train_samples=100), 0).train_y) == 100  # = all
    assert len(load_image_data(fashion(tmp_path, max_train_samples=99), 0).train_y) == 99  # 1 left out: random cut
    test = load_image_data(fashion(tmp_path, max_test_samples=10), 0)
    assert np.bincount(test.test_y).tolist() == [1] * 10 and len(test.train_y) == 100


def test_max_train_samples_larger_than_the_pool_or_too_small_to_stratify_is_refused(tmp_path):
    write_fashion(tmp_path)
    with pytest.raises(ConfigError) as err:
        load_image_data(fashion(tmp_path, max_train_samples=41), 0)
    assert str(err.value) == (
        "config key 'dataset.max-train-samples' has invalid value 41: the training pool has 40 samples; "
        "expected 0 (all) or an int <= 40"
    )
    with pytest.raises(ConfigError, match=r"'dataset.max-train-samples' has invalid value 5: cannot draw a strat"):
        load_image_data(fashion(tmp_path, max_train_samples=5), 0)  # fewer samples than classes
    with pytest.raises(ConfigError, match=r"'dataset.max-test-samples' has invalid value 21"):
        load_image_data(fashion(tmp_path, max_test_samples=21), 0)


def test_negative_limits_and_the_name_are_validated_with_the_config(run_config):
    with pytest.raises(ConfigError, match=r"'dataset.max-train-samples' has invalid value -1: expected an int >= 0"):
        load_settings(run_config(**{"dataset.max-train-samples": -1}))
    settings = load_settings(full_run_config(**{"dataset.name": "fashion-mnist", "dataset.max-train-samples": 12000}))
    assert settings.dataset.name == "fashion-mnist" and settings.dataset.max_train_samples == 12000


def test_digits_hold_out_their_test_split_before_the_training_subset():
    whole = load_image_data(DatasetSettings(), 42)
    subset = load_image_data(DatasetSettings(max_train_samples=500), 42)
    assert len(whole.train_y) == 1437 and len(subset.train_y) == 500
    assert np.array_equal(subset.test_x, whole.test_x)  # the same 360 held-out images
    assert np.abs(np.bincount(subset.train_y) - 50).max() <= 2  # stratified
