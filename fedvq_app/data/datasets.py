"""Image datasets by name, loaded into memory as uint8 arrays (N, H, W, C).

``digits`` ships inside scikit-learn and is the offline default. MedMNIST flags are
read from ``<data-dir>/<flag>.npz`` (``<flag>_<size>.npz`` for other sizes) by our own
npz reader -- medmnist's classes assert the official sample counts, which would
reject the small files tests write -- while labels, channels and task come from
``medmnist.INFO`` and the download (only when ``dataset.download=true``) goes
through medmnist. EMNIST and CIFAR-10 come through torchvision from a local root.
Fashion-MNIST is read from its four original IDX files, gzip-compressed or not, in
``dataset.data-dir`` or torchvision's ``<data-dir>/FashionMNIST/raw/``; left at its default,
``dataset.data-dir`` is the Debian package's folder ``/usr/share/datasets/fashion-mnist``
when that exists (``apt-get install -y dataset-fashion-mnist``). torchvision downloads the
files only when ``dataset.download=true``.

``dataset.max-train-samples`` / ``dataset.max-test-samples`` keep a stratified, seeded
subset of the training pool / the test split of any dataset. For a dataset without an
official test split (digits, an npz without test arrays) the test split is held out of the
whole data first (``dataset.test-fraction``), the training subset is drawn from the rest,
and each client's validation split (``dataset.val-fraction``) comes out of its partition of
that subset.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from fedvq_app.config import MEDMNIST_2D, ConfigError, DatasetSettings, option_keys
from fedvq_app.data.idx import read_idx

#: ``dataset.data-dir`` as declared: left at it, a dataset installed by a system package is read from its folder
DEFAULT_DATA_DIR = option_keys(DatasetSettings)["dataset.data-dir"]
#: folders an operating-system package installs a dataset into (Debian: ``apt-get install -y dataset-fashion-mnist``)
SYSTEM_DATA_DIRS = {"fashion-mnist": Path("/usr/share/datasets/fashion-mnist")}
#: split -> (images file, labels file) of Fashion-MNIST, as published (and as torchvision stores them, un-gzipped)
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
#: where torchvision's FashionMNIST keeps the files under its root
TORCHVISION_RAW = Path("FashionMNIST") / "raw"


@dataclass(frozen=True)
class ImageData:
    """A dataset split into the training pool and the global test set."""

    name: str
    train_x: np.ndarray  # uint8 (N, H, W, C)
    train_y: np.ndarray  # int64 (N,)
    test_x: np.ndarray
    test_y: np.ndarray
    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return int(self.train_x.shape[-1])


@dataclass(frozen=True)
class DatasetInfo:
    """What the server needs to build a model, without touching the images."""

    name: str
    num_classes: int
    channels: int
    size: int
    class_names: tuple[str, ...]


def _as_nhwc(images: np.ndarray, where: str = "images") -> np.ndarray:
    """uint8 (N, H, W, C) from (N, H, W) or (N, H, W, C); anything else is refused with one line.

    Rules (docs/reliability.md): pixel values are whole numbers 0..255 -- float
    images scaled to [0, 1], NaN/inf, negative or larger values are refused, never
    clipped or cast silently; 1 or 3 channels.
    """
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[0] < 1 or min(images.shape[1:3]) < 1:
        raise ConfigError(f"{where} must have shape (N, H, W) or (N, H, W, C) with N >= 1, got {images.shape}")
    if images.shape[-1] not in (1, 3):
        raise ConfigError(f"{where} has {images.shape[-1]} channels (shape {images.shape}); expected 1 or 3")
    if images.dtype == np.uint8:
        return images
    if images.dtype.kind not in "iuf":
        raise ConfigError(f"{where} has dtype {images.dtype}; expected uint8 pixel values 0..255")
    if images.dtype.kind == "f" and not np.isfinite(images).all():
        bad = int(np.size(images) - np.isfinite(images).sum())
        raise ConfigError(f"{where} contains {bad} NaN or inf pixel values; expected uint8 pixel values 0..255")
    low, high = float(images.min()), float(images.max())
    if images.dtype.kind == "f" and high <= 1.0:
        raise ConfigError(
            f"{where} is {images.dtype} in [{low:g}, {high:g}]: looks scaled to [0, 1]; expected uint8 pixel "
            "values 0..255 (store np.round(images * 255).astype(np.uint8))"
        )
    if low < 0 or high > 255 or (images.dtype.kind == "f" and not np.all(images == np.round(images))):
        raise ConfigError(
            f"{where} has {images.dtype} values in [{low:g}, {high:g}]; expected whole pixel values 0..255 (uint8)"
        )
    return images.astype(np.uint8)


def _labels(labels: np.ndarray, where: str = "labels", num_images: int | None = None) -> np.ndarray:
    """int64 (N,) class indices; non-integer, negative or NaN labels are refused with one line."""
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise ConfigError(f"{where} must be one integer class per image (shape (N,) or (N, 1)), got {labels.shape}")
    if num_images is not None and len(labels) != num_images:
        raise ConfigError(f"{where} has {len(labels)} labels for {num_images} images; expected one label per image")
    if labels.dtype.kind not in "iuf" or labels.dtype == np.bool_:
        raise ConfigError(f"{where} has dtype {labels.dtype}; expected integer class indices 0..C-1")
    if labels.dtype.kind == "f":
        whole = np.isfinite(labels) & (labels == np.round(np.nan_to_num(labels)))
        if not whole.all():
            bad = labels[~whole][:3].tolist()
            raise ConfigError(f"{where} has non-integer labels {bad}; expected integer class indices 0..C-1")
    if len(labels) and labels.min() < 0:
        raise ConfigError(f"{where} has negative labels (min {labels.min():g}); expected integer class indices 0..C-1")
    return labels.astype(np.int64)


def check_classes(train_y: np.ndarray, test_y: np.ndarray, num_classes: int | None, where: str) -> int:
    """The number of classes; labels must lie in 0..C-1 and (C inferred) every class must occur in training.

    A few stray labels (e.g. 100 among 0..9) would otherwise make a 101-class
    problem with 91 empty classes.
    """
    if num_classes is not None:
        for name, y in (("train", train_y), ("test", test_y)):
            if len(y) and y.max() >= num_classes:
                raise ConfigError(
                    f"{where}: {name} labels go up to {int(y.max())} but the dataset has {num_classes} classes "
                    f"(labels 0..{num_classes - 1})"
                )
        return num_classes
    inferred = int(train_y.max()) + 1
    missing = np.flatnonzero(np.bincount(train_y, minlength=inferred) == 0)
    if len(missing):
        shown = ", ".join(str(int(c)) for c in missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise ConfigError(
            f"{where}: labels must be 0..C-1 with every class in the training data, but the labels go up to "
            f"{inferred - 1} and classes {shown} ({len(missing)} of {inferred}) never occur"
        )
    if len(test_y) and test_y.max() >= inferred:
        raise ConfigError(
            f"{where}: test labels go up to {int(test_y.max())} but the training labels only to {inferred - 1}"
        )
    return inferred


def _held_out_split(
    x: np.ndarray, y: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Stratified train/test split for datasets that ship without a test split."""
    from sklearn.model_selection import train_test_split  # noqa: PLC0415 - start-up cost: scikit-learn, only on this path

    try:
        x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=fraction, random_state=seed, stratify=y)
    except ValueError as err:
        raise ConfigError(
            f"config key 'dataset.test-fraction' has invalid value {fraction}: cannot hold out a stratified test "
            f"split from {len(y)} samples of {len(np.unique(y))} classes ({str(err).splitlines()[0]}); "
            "every class needs at least 2 samples, or ship test_images/test_labels"
        ) from None
    return x_tr, y_tr, x_te, y_te


def _load_digits(settings: DatasetSettings, seed: int) -> ImageData:
    from sklearn.datasets import load_digits  # noqa: PLC0415 - start-up cost: scikit-learn, only on this path

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    x_tr, y_tr, x_te, y_te = _held_out_split(
        _as_nhwc(images), digits.target.astype(np.int64), settings.test_fraction, seed
    )
    names = tuple(str(c) for c in range(10))
    return ImageData("digits", x_tr, y_tr, x_te, y_te, names)


def medmnist_file(settings: DatasetSettings) -> Path:
    """Where the npz for a MedMNIST flag is expected."""
    suffix = "" if settings.size == 28 else f"_{settings.size}"
    return Path(settings.data_dir).expanduser() / f"{settings.name}{suffix}.npz"


def _medmnist_info(flag: str) -> dict:
    from medmnist import INFO  # noqa: PLC0415 - start-up cost: medmnist, only on this path

    return INFO[flag]


def _download_medmnist(settings: DatasetSettings) -> None:
    import medmnist  # noqa: PLC0415 - start-up cost: medmnist, only on this path

    info = _medmnist_info(settings.name)
    data_class = getattr(medmnist, info["python_class"])
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    kwargs = {"size": settings.size} if settings.size != 28 else {}
    data_class(split="test", root=settings.data_dir, download=True, **kwargs)


def _check_single_label(flag: str, task: str) -> None:
    if task.startswith("multi-label"):
        raise ConfigError(
            f"config key 'dataset.name' has invalid value {flag!r}: it is a {task} task and the "
            "project's classifiers are single-label; choose a multi-class or binary flag"
        )


def _read_npz(path: Path, key: str) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise ConfigError(
            f"config key '{key}': data file {str(path)!r} does not exist; put the file there "
            "or set dataset.download=true on a machine with internet access"
        )
    try:
        with np.load(path, allow_pickle=False) as archive:
            if not hasattr(archive, "files"):
                raise ValueError("a single .npy array, not an .npz archive")
            return {k: archive[k] for k in archive.files}
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 - not a zip, truncated, pickled objects: bad input, one line
        detail = str(err).splitlines()[0] if str(err) else ""
        raise ConfigError(
            f"config key '{key}': data file {str(path)!r} is not a readable npz archive "
            f"({type(err).__name__}: {detail})"
        ) from None


def _split_arrays(arrays: dict[str, np.ndarray], path: Path, seed: int, fraction: float, num_classes: int | None):
    """Train pool (train+val) and test split from a MedMNIST-style npz archive."""
    required = ("train_images", "train_labels")
    missing = [k for k in required if k not in arrays]
    if missing:
        raise ConfigError(
            f"data file {str(path)!r} lacks keys {missing}; expected train_images, train_labels "
            "and optionally val_images, val_labels, test_images, test_labels"
        )

    def pair(split: str) -> tuple[np.ndarray, np.ndarray]:
        if f"{split}_labels" not in arrays:
            raise ConfigError(f"data file {str(path)!r} has {split}_images but no {split}_labels")
        x = _as_nhwc(arrays[f"{split}_images"], f"{split}_images of {str(path)!r}")
        return x, _labels(arrays[f"{split}_labels"], f"{split}_labels of {str(path)!r}", len(x))

    pairs = [pair("train")] + ([pair("val")] if "val_images" in arrays else [])
    if len({x.shape[1:] for x, _ in pairs}) > 1:
        raise ConfigError(f"data file {str(path)!r}: train and val images differ in shape")
    x, y = np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])
    check_classes(y, y[:0], num_classes, f"data file {str(path)!r}")
    if "test_images" in arrays:
        x_te, y_te = pair("test")
        if x_te.shape[1:] != x.shape[1:]:
            raise ConfigError(
                f"data file {str(path)!r}: test images have shape {x_te.shape[1:]}, train images {x.shape[1:]}"
            )
        return x, y, x_te, y_te
    return _held_out_split(x, y, fraction, seed)


def _load_medmnist(settings: DatasetSettings, seed: int) -> ImageData:
    info = _medmnist_info(settings.name)
    _check_single_label(settings.name, info["task"])
    path = medmnist_file(settings)
    if not path.is_file() and settings.download:
        _download_medmnist(settings)
    arrays = _read_npz(path, "dataset.data-dir")
    names = tuple(info["label"][k] for k in sorted(info["label"], key=int))
    x_tr, y_tr, x_te, y_te = _split_arrays(arrays, path, seed, settings.test_fraction, len(names))
    check_classes(y_tr, y_te, len(names), f"data file {str(path)!r}")
    return ImageData(settings.name, x_tr, y_tr, x_te, y_te, names)


def _load_npz(settings: DatasetSettings, seed: int) -> ImageData:
    if not settings.npz_file:
        raise ConfigError(
            "config key 'dataset.npz-file' is empty: dataset.name='npz' needs the path of an "
            "npz file with train_images and train_labels (test_images/test_labels optional)"
        )
    path = Path(settings.npz_file).expanduser()
    if not path.is_absolute():
        path = Path(settings.data_dir).expanduser() / path
    arrays = _read_npz(path, "dataset.npz-file")
    x_tr, y_tr, x_te, y_te = _split_arrays(arrays, path, seed, settings.test_fraction, None)
    num_classes = check_classes(y_tr, y_te, None, f"data file {str(path)!r}")
    return ImageData("npz", x_tr, y_tr, x_te, y_te, tuple(str(c) for c in range(num_classes)))


def _torchvision_arrays(dataset) -> tuple[np.ndarray, np.ndarray]:
    data = dataset.data
    data = data.numpy() if hasattr(data, "numpy") else np.asarray(data)
    targets = dataset.targets
    targets = targets.numpy() if hasattr(targets, "numpy") else np.asarray(targets)
    return _as_nhwc(data), targets.astype(np.int64)


def _load_torchvision(settings: DatasetSettings, seed: int) -> ImageData:
    from torchvision import datasets  # noqa: PLC0415 - start-up cost: torchvision, only on this path

    root = Path(settings.data_dir).expanduser()
    try:
        if settings.name == "emnist":
            make = lambda train: datasets.EMNIST(  # noqa: E731
                str(root), split="byclass", train=train, download=settings.download
            )
        else:
            make = lambda train: datasets.CIFAR10(  # noqa: E731
                str(root), train=train, download=settings.download
            )
        train, test = make(True), make(False)
    except RuntimeError as err:
        raise ConfigError(
            f"config key 'dataset.data-dir': {settings.name} not found under {str(root)!r} "
            f"({err}); put torchvision's files there or set dataset.download=true"
        ) from None
    x_tr, y_tr = _torchvision_arrays(train)
    x_te, y_te = _torchvision_arrays(test)
    if settings.name == "emnist":  # EMNIST is stored transposed
        x_tr, x_te = x_tr.transpose(0, 2, 1, 3), x_te.transpose(0, 2, 1, 3)
    names = tuple(str(c) for c in getattr(train, "classes", range(int(y_tr.max()) + 1)))
    return ImageData(settings.name, x_tr, y_tr, x_te, y_te, names)


def data_folder(settings: DatasetSettings) -> Path:
    """``dataset.data-dir``; left at its default, the system package's folder of the dataset when that exists."""
    system = SYSTEM_DATA_DIRS.get(settings.name)
    if settings.data_dir == DEFAULT_DATA_DIR and system is not None and system.is_dir():
        return system
    return Path(settings.data_dir).expanduser()


def _idx_path(folder: Path, stem: str) -> Path | None:
    """``stem`` or ``stem.gz`` in ``folder`` or in torchvision's ``folder/FashionMNIST/raw``; None: in neither."""
    for base in (folder, folder / TORCHVISION_RAW):
        for name in (stem, f"{stem}.gz"):
            if (base / name).is_file():
                return base / name
    return None


def fashion_mnist_files(folder: Path) -> dict[str, Path | None]:
    """Each of the four Fashion-MNIST files -> where it was found under ``folder`` (None: missing)."""
    return {stem: _idx_path(folder, stem) for pair in FASHION_MNIST_FILES.values() for stem in pair}


def _download_fashion_mnist(root: Path) -> None:
    from torchvision.datasets import FashionMNIST  # noqa: PLC0415 - start-up cost: torchvision, only on this path

    try:
        for train in (True, False):
            FashionMNIST(str(root), train=train, download=True)
    except (RuntimeError, OSError) as err:  # URLError is an OSError
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(
            f"config key 'dataset.download': Fashion-MNIST could not be downloaded into {str(root)!r} ({detail}); "
            "without internet install it with 'apt-get install -y dataset-fashion-mnist'"
        ) from None


def _fashion_mnist_split(files: dict[str, Path | None], split: str) -> tuple[np.ndarray, np.ndarray]:
    images_stem, labels_stem = FASHION_MNIST_FILES[split]
    images_path, labels_path = files[images_stem], files[labels_stem]
    images = _as_nhwc(read_idx(images_path, 3, "dataset.data-dir"), f"data file {str(images_path)!r}")
    labels = read_idx(labels_path, 1, "dataset.data-dir")
    where = f"data file {str(labels_path)!r} (labels of {images_path.name})"
    return images, _labels(labels, where, len(images))


def _load_fashion_mnist(settings: DatasetSettings, seed: int) -> ImageData:
    from torchvision.datasets import FashionMNIST  # noqa: PLC0415 - start-up cost: torchvision, only on this path

    folder = data_folder(settings)
    files = fashion_mnist_files(folder)
    if None in files.values() and settings.download:
        folder = Path(settings.data_dir).expanduser()
        _download_fashion_mnist(folder)
        files = fashion_mnist_files(folder)
    missing = [stem for stem, path in files.items() if path is None]
    if missing:
        raise ConfigError(
            f"config key 'dataset.data-dir': Fashion-MNIST file {missing[0]!r} (or {missing[0]}.gz) is not in "
            f"{str(folder)!r} nor in its {str(TORCHVISION_RAW)!r} ({len(missing)} of 4 files missing); install "
            "them with 'apt-get install -y dataset-fashion-mnist' (into /usr/share/datasets/fashion-mnist) "
            "or set dataset.download=true"
        )
    x_tr, y_tr = _fashion_mnist_split(files, "train")
    x_te, y_te = _fashion_mnist_split(files, "test")
    if x_te.shape[1:] != x_tr.shape[1:]:
        raise ConfigError(
            f"data folder {str(folder)!r}: Fashion-MNIST test images have shape {x_te.shape[1:3]}, "
            f"training images {x_tr.shape[1:3]}"
        )
    names = tuple(FashionMNIST.classes)
    check_classes(y_tr, y_te, len(names), f"data folder {str(folder)!r}")
    return ImageData("fashion-mnist", x_tr, y_tr, x_te, y_te, names)


def stratified_subset(
    x: np.ndarray, y: np.ndarray, limit: int, seed: int, key: str, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """At most ``limit`` samples (0 = all), stratified by class and seeded, in their original order."""
    if limit == 0 or limit == len(y):
        return x, y
    if limit > len(y):
        raise ConfigError(
            f"config key '{key}' has invalid value {limit}: the {what} has {len(y)} samples; "
            f"expected 0 (all) or an int <= {len(y)}"
        )
    from sklearn.model_selection import train_test_split  # noqa: PLC0415 - start-up cost: scikit-learn, only on this path

    # scikit-learn stratifies only when both sides hold every class: fewer left out than classes -> a random cut
    stratify = y if len(y) - limit >= len(np.unique(y)) else None
    try:
        rows, _ = train_test_split(np.arange(len(y)), train_size=limit, random_state=seed, stratify=stratify)
    except ValueError as err:
        raise ConfigError(
            f"config key '{key}' has invalid value {limit}: cannot draw a stratified subset of the {what} "
            f"({len(y)} samples, {len(np.unique(y))} classes): {str(err).splitlines()[0]}"
        ) from None
    rows = np.sort(rows)
    return x[rows], y[rows]


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    if images.shape[1] == size and images.shape[2] == size:
        return images
    import torch  # noqa: PLC0415 - start-up cost: torch, only on this path
    import torch.nn.functional as F  # noqa: PLC0415 - start-up cost: torch, only on this path

    t = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
    return t.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _to_channels(images: np.ndarray, channels: int) -> np.ndarray:
    have = images.shape[-1]
    if channels in (0, have):
        return images
    if have == 1 and channels == 3:
        return np.repeat(images, 3, axis=-1)
    if have == 3 and channels == 1:
        gray = images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        return np.round(gray)[..., None].astype(np.uint8)
    raise ConfigError(f"config key 'dataset.channels': cannot convert {have} channels to {channels}")


_LOADERS = {
    "digits": _load_digits,
    "npz": _load_npz,
    "emnist": _load_torchvision,
    "cifar10": _load_torchvision,
    "fashion-mnist": _load_fashion_mnist,
    **{flag: _load_medmnist for flag in MEDMNIST_2D},
}


def _npz_source(settings: DatasetSettings) -> list[Path]:
    path = Path(settings.npz_file).expanduser()
    return [path if path.is_absolute() else Path(settings.data_dir).expanduser() / path]


def _fashion_mnist_sources(settings: DatasetSettings) -> list[Path]:
    folder = data_folder(settings)
    files = fashion_mnist_files(folder)
    return [folder] if None in files.values() else list(files.values())


#: dataset name -> the files (or folder) it is read from (absent: shipped in a package, e.g. digits)
_SOURCES = {
    "npz": _npz_source,
    "emnist": lambda settings: [Path(settings.data_dir).expanduser()],
    "cifar10": lambda settings: [Path(settings.data_dir).expanduser()],
    "fashion-mnist": _fashion_mnist_sources,
    **{flag: lambda settings: [medmnist_file(settings)] for flag in MEDMNIST_2D},
}


def source_paths(settings: DatasetSettings) -> list[Path]:
    """The files (or folder) a dataset is read from; none for data shipped in a package (digits)."""
    sources = _SOURCES.get(settings.name)
    return sources(settings) if sources is not None else []


@lru_cache(maxsize=2)
def load_image_data(settings: DatasetSettings, seed: int) -> ImageData:
    """Load, resize and channel-convert a dataset (cached per process)."""
    raw = _LOADERS[settings.name](settings, seed)
    train_x, train_y = stratified_subset(
        raw.train_x, raw.train_y, settings.max_train_samples, seed, "dataset.max-train-samples", "training pool"
    )
    test_x, test_y = stratified_subset(
        raw.test_x, raw.test_y, settings.max_test_samples, seed, "dataset.max-test-samples", "test split"
    )
    shape = lambda x: _to_channels(_resize(x, settings.size), settings.channels)  # noqa: E731
    return ImageData(raw.name, shape(train_x), train_y, shape(test_x), test_y, raw.class_names)


def dataset_info(settings: DatasetSettings, seed: int) -> DatasetInfo:
    """Shape and classes of a dataset; MedMNIST answers from INFO without the file."""
    if settings.name in MEDMNIST_2D:
        info = _medmnist_info(settings.name)
        _check_single_label(settings.name, info["task"])
        channels = settings.channels or int(info["n_channels"])
        names = tuple(info["label"][k] for k in sorted(info["label"], key=int))
        return DatasetInfo(settings.name, len(names), channels, settings.size, names)
    data = load_image_data(settings, seed)
    return DatasetInfo(data.name, data.num_classes, data.channels, settings.size, data.class_names)


def training_pool_size(settings: DatasetSettings, seed: int) -> int | None:
    """Samples the clients' partitions are cut from (an upper bound of any client's num-examples)."""
    if settings.name in MEDMNIST_2D:
        counts = _medmnist_info(settings.name).get("n_samples", {})
        pool = int(counts.get("train", 0)) + int(counts.get("val", 0))
        return (min(pool, settings.max_train_samples) if settings.max_train_samples else pool) or None
    return len(load_image_data(settings, seed).train_y)
