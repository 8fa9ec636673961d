"""Typed, validated settings: the only module that reads ``context.run_config``.

Every key of ``[tool.flwr.app.config]`` maps to one field of a frozen dataclass
declared with :func:`option`. ``fedvq_app.registry.load_settings`` parses all of them once
(the common sections here, the chosen method's own section where the methods are registered) and
raises :class:`ConfigError` -- a one-line message naming the key, the bad value
and what is allowed -- on the first bad value. Method-specific sections (``cfl.*``,
``codebook.*``...) are dataclasses declared next to their method and listed in the
method registry; they are parsed by the same code.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

ConfigValue = bool | int | float | str
T = TypeVar("T")


class ConfigError(ValueError):
    """A bad configuration value; the message is one line fit for a user."""


def option(
    key: str,
    default: ConfigValue,
    *,
    choices: tuple[str, ...] | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
    help: str = "",  # noqa: A002 - mirrors argparse
) -> Any:
    """Declare a dataclass field bound to run-config ``key`` with its constraints."""
    meta = {
        "key": key,
        "choices": choices,
        "minimum": minimum,
        "maximum": maximum,
        "exclusive_minimum": exclusive_minimum,
        "help": help,
    }
    return field(default=default, metadata=meta)


def _article(word: str) -> str:
    return f"{'an' if word[:1] in 'aeiou' else 'a'} {word}"


def _allowed_text(meta: Mapping[str, Any], kind: type) -> str:
    if meta["choices"]:
        return "one of " + ", ".join(repr(c) for c in meta["choices"])
    low, high = meta["minimum"], meta["maximum"]
    op = ">" if meta["exclusive_minimum"] else ">="
    kind_text = _article(kind.__name__)
    if low is not None and high is not None:
        return f"{kind_text} {op} {low} and <= {high}"
    if low is not None:
        return f"{kind_text} {op} {low}"
    if high is not None:
        return f"{kind_text} <= {high}"
    return kind_text


def _coerce(key: str, value: Any, kind: type, meta: Mapping[str, Any]) -> Any:
    """Check ``value`` against the field's type and constraints; return it typed."""
    allowed = _allowed_text(meta, kind)
    bad = ConfigError(f"config key '{key}' has invalid value {value!r}: expected {allowed}")
    if kind is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            raise bad
    elif kind is str:
        if not isinstance(value, str):
            raise bad
    if meta["choices"] and value not in meta["choices"]:
        raise bad
    low, high = meta["minimum"], meta["maximum"]
    if low is not None and (value < low or (meta["exclusive_minimum"] and value == low)):
        raise bad
    if high is not None and value > high:
        raise bad
    return value


_TYPES = {"bool": bool, "int": int, "float": float, "str": str}


def parse_section(cls: type[T], run_config: Mapping[str, ConfigValue]) -> T:
    """Build dataclass ``cls`` from the run-config keys its fields are bound to."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        meta = f.metadata
        if "key" not in meta:
            continue
        kind = f.type if isinstance(f.type, type) else _TYPES[f.type]
        raw = run_config.get(meta["key"], f.default)
        values[f.name] = _coerce(meta["key"], raw, kind, meta)
    return cls(**values)


def option_keys(cls: type) -> dict[str, ConfigValue]:
    """The run-config keys (and defaults) a settings dataclass reads."""
    return {f.metadata["key"]: f.default for f in dataclasses.fields(cls) if "key" in f.metadata}


# ----------------------------------------------------------------------------
# Common sections
# ----------------------------------------------------------------------------
#: MedMNIST's 2-D flags (the one list; ``fedvq_app.data.datasets`` reads it)
MEDMNIST_2D = (
    "pathmnist",
    "chestmnist",
    "dermamnist",
    "octmnist",
    "pneumoniamnist",
    "retinamnist",
    "breastmnist",
    "bloodmnist",
    "tissuemnist",
    "organamnist",
    "organcmnist",
    "organsmnist",
)
#: every ``dataset.name`` (each has one loader in ``fedvq_app.data.datasets``)
DATASETS = ("digits", *MEDMNIST_2D, "emnist", "cifar10", "fashion-mnist", "npz")
PARTITIONS = ("iid", "dirichlet", "dirichlet-min-per-class", "pathological", "long-tail")
DEVICES_HELP = "'auto', 'cpu', 'cuda' or 'cuda:N'"


@dataclass(frozen=True)
class DatasetSettings:
    """Which images, where they live, and how they are shaped for the model."""

    name: str = option(
        "dataset.name",
        "digits",
        choices=DATASETS,
        help=(
            "image dataset: digits (scikit-learn, offline default), fashion-mnist, a 2D MedMNIST flag, emnist, "
            "cifar10, or npz"
        ),
    )
    data_dir: str = option(
        "dataset.data-dir",
        "data",
        help=(
            "folder of <flag>.npz MedMNIST files / torchvision roots / Fashion-MNIST's idx files (left at 'data': "
            "/usr/share/datasets/fashion-mnist when it exists); node-config data-dir overrides it"
        ),
    )
    download: bool = option(
        "dataset.download", False, help="let medmnist/torchvision download missing files (needs internet)"
    )
    npz_file: str = option(
        "dataset.npz-file",
        "",
        help="for dataset.name=npz: file with train_images, train_labels [, test_images, test_labels]",
    )
    size: int = option(
        "dataset.size",
        28,
        choices=None,
        minimum=8,
        maximum=224,
        help="image side length the images are resized to (MedMNIST files: <flag>_<size>.npz)",
    )
    channels: int = option(
        "dataset.channels", 0, minimum=0, maximum=3, help="0 = native channels; 1 or 3 converts (gray <-> RGB)"
    )
    val_fraction: float = option(
        "dataset.val-fraction",
        0.15,
        minimum=0.0,
        maximum=0.5,
        help="share of each client's partition held out as its local validation split",
    )
    test_fraction: float = option("dataset.test-fraction", 0.2, minimum=0.0, maximum=0.5, exclusive_minimum=True)
    max_train_samples: int = option(
        "dataset.max-train-samples",
        0,
        minimum=0,
        help="0 = the whole training pool; N = a stratified, seeded subset of N training samples",
    )
    max_test_samples: int = option(
        "dataset.max-test-samples",
        0,
        minimum=0,
        help="0 = the whole test split; N = a stratified, seeded subset of N test samples",
    )


@dataclass(frozen=True)
class PartitionSettings:
    """How the training split is cut into client partitions."""

    kind: str = option(
        "partition.kind",
        "dirichlet",
        choices=PARTITIONS,
        help="iid | dirichlet | dirichlet-min-per-class (seed 000) | pathological | long-tail",
    )
    alpha: float = option(
        "partition.alpha",
        0.5,
        minimum=0.0,
        exclusive_minimum=True,
        help="Dirichlet concentration (smaller = more label skew): dirichlet, dirichlet-min-per-class, long-tail",
    )
    min_partition_size: int = option(
        "partition.min-partition-size",
        10,
        minimum=0,
        help="dirichlet/long-tail: resample (max 10 tries) until every client has this many samples",
    )
    min_per_class: int = option(
        "partition.min-per-class",
        2,
        minimum=0,
        help="dirichlet-min-per-class: samples of every class each client gets before the Dirichlet split",
    )
    classes_per_client: int = option(
        "partition.classes-per-client", 2, minimum=1, help="pathological: number of classes per client"
    )
    imbalance_factor: float = option(
        "partition.imbalance-factor",
        0.01,
        minimum=0.0,
        maximum=1.0,
        exclusive_minimum=True,
        help="long-tail: n_tail / n_head of the exponential class profile (0.01 = 100x)",
    )


@dataclass(frozen=True)
class ShiftSettings:
    """Covariate shift: rotate the images of a fraction of the clients."""

    rotate_fraction: float = option(
        "shift.rotate-fraction",
        0.0,
        minimum=0.0,
        maximum=1.0,
        help="covariate shift: rotate the images of the last round(fraction x N) clients (seed 001: 0.5)",
    )
    rotate_degrees: int = option(
        "shift.rotate-degrees", 180, choices=None, help="rotation angle of the shifted clients (seed 001: 180)"
    )
    domains: str = option(
        "shift.domains",
        "",
        help="multi-domain shift: comma-separated rotation angles, one per domain; the clients are cut into that many "
        "contiguous, equal groups by partition id (UEFL: '0,-50,120'); empty = off; excludes shift.rotate-fraction",
    )

    @property
    def angles(self) -> tuple[int, ...]:
        """Rotation angle of every domain (``()`` when ``shift.domains`` is off)."""
        return parse_angles(self.domains)

    def domain_of(self, partition_id: int, num_partitions: int) -> int:
        """Domain index of a client: 0 = unshifted (or the first of ``shift.domains``)."""
        if self.angles:
            return min(partition_id * len(self.angles) // max(num_partitions, 1), len(self.angles) - 1)
        return int(partition_id in rotated_partitions(num_partitions, self.rotate_fraction))

    def angle_of(self, partition_id: int, num_partitions: int) -> int:
        """Rotation (degrees, counter-clockwise) of a client's train, val and test images."""
        domain = self.domain_of(partition_id, num_partitions)
        if self.angles:
            return self.angles[domain]
        return self.rotate_degrees if domain else 0


def rotated_partitions(num_partitions: int, fraction: float) -> frozenset[int]:
    """Partition ids whose images are rotated: the last ``round(fraction * N)`` ids."""
    count = int(round(fraction * num_partitions))
    return frozenset(range(num_partitions - count, num_partitions))


def parse_angles(text: str) -> tuple[int, ...]:
    """``'0, -50,120'`` -> ``(0, -50, 120)``; ConfigError naming ``shift.domains`` otherwise."""
    if not text.strip():
        return ()
    try:
        angles = tuple(int(part) for part in text.split(","))
    except ValueError:
        angles = ()
    if len(angles) < 2:
        raise ConfigError(
            f"config key 'shift.domains' has invalid value {text!r}: expected at least two comma-separated "
            "integer angles in degrees, e.g. '0,-50,120' (or '' for none)"
        )
    return angles


def _check_shift(shift: ShiftSettings) -> None:
    if shift.angles and shift.rotate_fraction > 0:
        raise ConfigError(
            f"config key 'shift.domains' ({shift.domains!r}) cannot be combined with shift.rotate-fraction="
            f"{shift.rotate_fraction}: expected one of them (set shift.rotate-fraction=0 to use domains)"
        )


@dataclass(frozen=True)
class ModelSettings:
    """Which network to build."""

    name: str = option(
        "model.name",
        "cnn",
        choices=("cnn", "resnet18"),
        help="cnn (2-conv CNN, CPU default) or resnet18 (torchvision, weights=None)",
    )
    weights: str = option(
        "model.weights", "", help="optional local .pth state_dict for resnet18 (nothing is downloaded at run time)"
    )


@dataclass(frozen=True)
class TrainSettings:
    """Local training on each client."""

    local_epochs: int = option("train.local-epochs", 2, minimum=0, help="local epochs per round")
    lr: float = option(
        "train.lr",
        0.05,
        minimum=0.0,
        exclusive_minimum=True,
        help="client learning rate (sent each round in the ConfigRecord as 'lr')",
    )
    batch_size: int = option("train.batch-size", 32, minimum=1, help="client batch size")
    optimizer: str = option("train.optimizer", "sgd", choices=("sgd", "adam"), help="sgd (with momentum) or adam")
    momentum: float = option("train.momentum", 0.9, minimum=0.0, maximum=1.0, help="SGD momentum")
    weight_decay: float = option("train.weight-decay", 0.0001, minimum=0.0, help="L2 weight decay")
    equalize_iterations: bool = option(
        "train.equalize-iterations",
        False,
        help="seed 000: all clients run the largest client's batches per epoch; strong augmentation below 70 %",
    )
    augment: bool = option("train.augment", False, help="random affine augmentation for every client")
    num_threads: int = option(
        "train.num-threads",
        1,
        minimum=0,
        help="threads per native pool of a client process: torch intra-op, BLAS and OpenMP via threadpoolctl "
        "(k-means too; 0 = the libraries' defaults)",
    )


@dataclass(frozen=True)
class MetricsSettings:
    """Extra measurements every classification method can report."""

    gradient_dissimilarity: bool = option(
        "metrics.gradient-dissimilarity",
        False,
        help="each evaluation, clients send the gradient of their local loss at the global parameters and the "
        "server reports Gamma = sum p_i ||g_i||^2 / ||sum p_i g_i||^2 (seed 003)",
    )
    gradient_batches: int = option(
        "metrics.gradient-batches",
        10,
        minimum=1,
        help="batches (of train.batch-size, a fixed random subset of the local train split) behind that gradient",
    )
    pooled_validation: bool = option(
        "metrics.pooled-validation",
        False,
        help="benchmarks in simulation: each client also scores its model on the union of every client's validation "
        "split (pooled-val-*), held-out training rows of every class, to choose settings where a client's own "
        "validation split lacks the classes it never trained on; it reads the other partitions' validation rows, "
        "which a deployed client does not hold",
    )


PRIVACY_MODES = ("none", "client-fixed", "client-adaptive", "sample-dpsgd")
CLIENT_LEVEL_MODES = ("client-fixed", "client-adaptive")


@dataclass(frozen=True)
class PrivacySettings:
    """Differential privacy of the training (docs/privacy.md): what is clipped, the noise, the delta."""

    mode: str = option(
        "privacy.mode",
        "none",
        choices=PRIVACY_MODES,
        help="none | client-fixed / client-adaptive (server clips every client update, noise on the mean; "
        "Flower's DP wrappers) | sample-dpsgd (Opacus DP-SGD on every client)",
    )
    noise_multiplier: float = option(
        "privacy.noise-multiplier",
        1.0,
        minimum=0.0,
        exclusive_minimum=True,
        help="Gaussian noise std / clipping norm (client-level: on the sum of clipped updates; sample: per step)",
    )
    clipping_norm: float = option(
        "privacy.clipping-norm",
        1.0,
        minimum=0.0,
        exclusive_minimum=True,
        help="L2 bound: of each client update (client-fixed; the start value for client-adaptive) or of each "
        "per-sample gradient (sample-dpsgd)",
    )
    target_delta: float = option(
        "privacy.target-delta",
        1e-5,
        minimum=0.0,
        maximum=0.1,
        exclusive_minimum=True,
        help="delta at which epsilon is reported (keep it below 1 / number of clients or samples)",
    )
    target_quantile: float = option(
        "privacy.target-quantile",
        0.5,
        minimum=0.0,
        maximum=1.0,
        help="client-adaptive: share of updates left unclipped the norm adapts to (Andrew et al. 2021)",
    )
    clip_lr: float = option(
        "privacy.clip-lr",
        0.2,
        minimum=0.0,
        exclusive_minimum=True,
        help="client-adaptive: geometric step size of the clipping-norm update",
    )
    clipped_count_stddev: float = option(
        "privacy.clipped-count-stddev",
        0.0,
        minimum=0.0,
        help="client-adaptive: noise std of the clipped-update count (> noise-multiplier / 2); 0 = the noise "
        "multiplier, so the count takes 1/4 of the privacy budget",
    )

    @property
    def client_level(self) -> bool:
        return self.mode in CLIENT_LEVEL_MODES

    @property
    def enabled(self) -> bool:
        return self.mode != "none"


SECAGG_MODES = ("off", "secaggplus")


@dataclass(frozen=True)
class SecAggSettings:
    """Secure aggregation (docs/privacy.md): the server learns only sums over the clients (Flower's SecAgg+)."""

    mode: str = option(
        "secagg.mode",
        "off",
        choices=SECAGG_MODES,
        help="off | secaggplus (every exchange the server only sums goes through Flower's SecAgg+: the server "
        "sees masked vectors and the sum; methods that need one client's values refuse it)",
    )
    num_shares: float = option(
        "secagg.num-shares",
        1.0,
        minimum=0.0,
        exclusive_minimum=True,
        help="shares of each client's secrets: <= 1 = that fraction of the sampled clients, else a whole number > 2",
    )
    reconstruction_threshold: float = option(
        "secagg.reconstruction-threshold",
        0.6,
        minimum=0.0,
        exclusive_minimum=True,
        help="shares that rebuild a secret: <= 1 = that fraction of num-shares (at least 2), else a whole number "
        "< num-shares; more clients lost after the key exchange than the shares allow drop the round",
    )
    clipping_range: float = option(
        "secagg.clipping-range",
        8.0,
        minimum=0.0,
        exclusive_minimum=True,
        help="model exchanges: every weighted array entry is clipped to [-range, range] before quantization",
    )
    quantization_range: int = option(
        "secagg.quantization-range",
        0,
        minimum=0,
        maximum=2**30,
        help="integer levels of the quantization: 0 = auto, the most Flower's 2**32 modulus allows for the "
        "clients of each sum (2**29 for 5, 2**26 for 50, 2**22 for 1,000), else >= 256 with clients x levels "
        "< 2**32; each summed entry is within clients x 2 x clipping-range / levels of the exact sum",
    )

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    def levels(self, clients: int) -> int:
        """Quantization levels of a sum over ``clients`` (auto: the largest power of two whose sum fits 2**32)."""
        if self.quantization_range:
            return self.quantization_range
        return min(2**30, 1 << (((2**32 - 1) // max(clients, 1)).bit_length() - 1))

    def sum_error_bound(self, clients: int, clipping_range: float | None = None, sampled: int | None = None) -> float:
        """Largest error of one summed entry over ``clients`` contributors of ``sampled`` (default: the same)
        (stochastic rounding: under one level per client)."""
        levels = self.levels(sampled or clients)
        return clients * 2.0 * (clipping_range or self.clipping_range) / levels


@dataclass(frozen=True)
class TrackingSettings:
    """Where a run's figures go besides its experiment folder's JSON files."""

    tensorboard: bool = option(
        "tracking.tensorboard",
        True,
        help="write TensorBoard event files into the experiment folder (tensorboard --logdir <log-dir>)",
    )
    mlflow_uri: str = option(
        "tracking.mlflow-uri",
        "",
        help="MLflow tracking URI (http://host:port, sqlite:///mlflow.db or a local mlruns folder); "
        "needs the [mlflow] extra; empty = off",
    )
    mlflow_experiment: str = option(
        "tracking.mlflow-experiment", "fedvq", help="MLflow experiment the runs are logged under"
    )
    per_client_limit: int = option(
        "tracking.per-client-limit",
        100,
        minimum=0,
        help="per-client records (rounds.jsonl train/communication 'clients', k-means local_means/ and "
        "client_logs/) are written only for rounds with at most this many clients; above it counts and "
        "ranges only (0 = no limit)",
    )


@dataclass(frozen=True)
class _TopLevel:
    method: str = option("method", "fedavg", help="registered method name (see the method table)")
    num_server_rounds: int = option("num-server-rounds", 15, minimum=1, help="federated rounds")
    seed: int = option("seed", 42, minimum=0, help="seed of partitioning, model init and local shuffling")
    device: str = option("device", "auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    log_dir: str = option(
        "log-dir", "logs", help="experiments root; a relative path resolves against the ServerApp's working directory"
    )
    experiment_name: str = option(
        "experiment-name", "", help="experiment folder name (empty = <method>_<dataset>_<timestamp>)"
    )
    resume_from: str = option("resume-from", "", help="experiment folder to resume from its last checkpointed round")
    round_timeout: float = option(
        "round-timeout",
        600.0,
        minimum=0.0,
        exclusive_minimum=True,
        help="seconds the server waits for replies in a round; late nodes count as dropped",
    )
    fraction_train: float = option(
        "fraction-train",
        1.0,
        minimum=0.0,
        maximum=1.0,
        help="fraction of connected nodes sampled for training each round",
    )
    fraction_evaluate: float = option(
        "fraction-evaluate", 1.0, minimum=0.0, maximum=1.0, help="fraction of connected nodes sampled for evaluation"
    )
    min_train_nodes: int = option("min-train-nodes", 2, minimum=1, help="minimum nodes sampled for training")
    min_evaluate_nodes: int = option("min-evaluate-nodes", 2, minimum=0, help="minimum nodes sampled for evaluation")
    min_available_nodes: int = option(
        "min-available-nodes", 2, minimum=1, help="nodes that must be connected before a round starts"
    )
    eval_every: int = option("eval-every", 1, minimum=1, help="evaluate every k rounds (and always after the last)")
    evaluate_with_train: bool = option(
        "evaluate-with-train",
        True,
        help="one message per site per round: the next train message carries the evaluation of the model "
        "it sends (same figures); false = a separate evaluate message every round",
    )


@dataclass(frozen=True)
class Settings(_TopLevel):
    """Everything a run needs, validated once: the top-level keys (inherited), the common
    sections, and the chosen method's own options (:meth:`options`)."""

    dataset: DatasetSettings = field(default_factory=DatasetSettings)
    partition: PartitionSettings = field(default_factory=PartitionSettings)
    shift: ShiftSettings = field(default_factory=ShiftSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    tracking: TrackingSettings = field(default_factory=TrackingSettings)
    privacy: PrivacySettings = field(default_factory=PrivacySettings)
    secagg: SecAggSettings = field(default_factory=SecAggSettings)
    #: the method's options dataclass (its ``MethodSpec.options_type``), None when it has none
    method_options: object | None = None
    raw: Mapping[str, ConfigValue] = field(default_factory=dict, compare=False)

    def options(self, kind: type[T]) -> T:
        """The method's options, typed: ``settings.options(FedVQOptions)``."""
        if not isinstance(self.method_options, kind):
            raise TypeError(
                f"method {self.method!r} carries {type(self.method_options).__name__} options, not {kind.__name__}"
            )
        return self.method_options

    def to_dict(self) -> dict[str, Any]:
        """The resolved run config, flat and JSON-friendly (``config.json``)."""
        return dict(sorted(self.raw.items()))


COMMON_SECTIONS: tuple[type, ...] = (
    _TopLevel,
    DatasetSettings,
    PartitionSettings,
    ShiftSettings,
    ModelSettings,
    TrainSettings,
    MetricsSettings,
    TrackingSettings,
    PrivacySettings,
    SecAggSettings,
)


def _check_device(device: str) -> None:
    valid = device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())
    if not valid:
        raise ConfigError(f"config key 'device' has invalid value {device!r}: expected {DEVICES_HELP}")


def _check_experiment_name(name: str) -> None:
    if name and (os.sep in name or name in (".", "..")):
        raise ConfigError(
            f"config key 'experiment-name' has invalid value {name!r}: "
            "expected a plain folder name without path separators"
        )


def load_common_settings(
    run_config: Mapping[str, ConfigValue],
    method_names: tuple[str, ...],
    node_config: Mapping[str, ConfigValue] | None = None,
) -> Settings:
    """Validate every common key once: the top level (``method`` against ``method_names``) and
    every common section; the method's own options are left to the registry, which knows them
    (``fedvq_app.registry.load_settings``, the function to call).

    ``node_config`` may carry a site's own ``data-dir`` (a real deployment sets it
    per SuperNode with ``--node-config``); it overrides ``dataset.data-dir``.
    """
    top = parse_section(_TopLevel, run_config)
    if top.method not in method_names:
        raise ConfigError(
            f"config key 'method' has invalid value {top.method!r}: expected one of "
            + ", ".join(repr(m) for m in method_names)
        )
    _check_device(top.device)
    _check_experiment_name(top.experiment_name)
    dataset = parse_section(DatasetSettings, run_config)
    if node_config and "data-dir" in node_config:
        dataset = dataclasses.replace(dataset, data_dir=str(node_config["data-dir"]))
    shift = parse_section(ShiftSettings, run_config)
    _check_shift(shift)
    return Settings(
        **{f.name: getattr(top, f.name) for f in dataclasses.fields(_TopLevel)},
        dataset=dataset,
        partition=parse_section(PartitionSettings, run_config),
        shift=shift,
        model=parse_section(ModelSettings, run_config),
        train=parse_section(TrainSettings, run_config),
        metrics=parse_section(MetricsSettings, run_config),
        tracking=parse_section(TrackingSettings, run_config),
        privacy=parse_section(PrivacySettings, run_config),
        secagg=_check_secagg(parse_section(SecAggSettings, run_config)),
        raw=dict(run_config),
    )


def check_privacy(settings: Settings, method_refusal: str | None) -> None:
    """Refuse privacy modes whose epsilon would not cover what the run discloses (docs/privacy.md).

    ``method_refusal`` is the method's own reason (its ``MethodSpec.privacy_check``), if any.
    """
    privacy = settings.privacy
    if not privacy.enabled:
        return
    refusal = method_refusal
    if refusal is None and settings.metrics.gradient_dissimilarity:
        refusal = "metrics.gradient-dissimilarity sends raw local gradients that no privacy mode covers"
    stddev = privacy.clipped_count_stddev
    if privacy.mode == "client-adaptive" and 0 < stddev <= privacy.noise_multiplier / 2:
        raise ConfigError(
            f"config key 'privacy.clipped-count-stddev' has invalid value {stddev}: expected 0 (auto) or a float "
            f"> privacy.noise-multiplier / 2 ({privacy.noise_multiplier / 2})"
        )
    if refusal is not None:
        raise ConfigError(
            f"config key 'privacy.mode' has invalid value {privacy.mode!r} for method {settings.method!r}: {refusal}"
        )


def _whole(key: str, value: float, bound: str) -> None:
    if value > 1 and value != int(value):
        raise ConfigError(f"config key '{key}' has invalid value {value!r}: expected a fraction <= 1 or {bound}")


def _check_secagg(secagg: SecAggSettings) -> SecAggSettings:
    """Flower's own rules for the share counts, checked here once (one line) instead of inside a round."""
    shares, threshold = secagg.num_shares, secagg.reconstruction_threshold
    _whole("secagg.num-shares", shares, "a whole number > 2")
    if 1 < shares <= 2:
        raise ConfigError(
            f"config key 'secagg.num-shares' has invalid value {shares!r}: "
            "expected a fraction <= 1 or a whole number > 2"
        )
    _whole("secagg.reconstruction-threshold", threshold, "a whole number < secagg.num-shares")
    if 0 < secagg.quantization_range < 256:
        raise ConfigError(
            f"config key 'secagg.quantization-range' has invalid value {secagg.quantization_range}: "
            "expected 0 (auto) or an int >= 256 and <= 1073741824"
        )
    if threshold > 1 and shares > 1 and threshold >= shares:
        raise ConfigError(
            f"config key 'secagg.reconstruction-threshold' has invalid value {threshold!r}: expected a whole number "
            f"< secagg.num-shares ({shares:g}) or a fraction <= 1"
        )
    return secagg


#: why a client-level privacy mode cannot run under secure aggregation
SECAGG_DP_REFUSAL = (
    "the server clips each client's update by its own norm, which secure aggregation hides; use "
    "privacy.mode='sample-dpsgd' (clipping and noise on the client) with secure aggregation"
)


def check_secagg(settings: Settings, method_refusal: str | None) -> None:
    """Refuse ``secagg.mode`` where the server must see one client's values (docs/privacy.md).

    ``method_refusal`` is the method's own reason (its ``MethodSpec.secagg_check``), if any.
    """
    if not settings.secagg.enabled:
        return
    refusal = method_refusal
    if refusal is None and settings.privacy.client_level:
        refusal = f"privacy.mode={settings.privacy.mode!r} needs per-client norms: {SECAGG_DP_REFUSAL}"
    if refusal is None and settings.metrics.gradient_dissimilarity:
        refusal = "metrics.gradient-dissimilarity sends each client's raw gradient, which the server must see"
    if refusal is not None:
        raise ConfigError(
            f"config key 'secagg.mode' has invalid value {settings.secagg.mode!r} for method {settings.method!r}: "
            f"{refusal}"
        )


def common_option_keys() -> dict[str, ConfigValue]:
    """Every key the common sections read, with its default (the methods' keys: the registry)."""
    keys: dict[str, ConfigValue] = {}
    for cls in COMMON_SECTIONS:
        keys.update(option_keys(cls))
    return keys


def _node_int(node_config: Mapping[str, ConfigValue], key: str, minimum: int, maximum: int | None = None) -> int:
    value = node_config.get(key)
    bounds = f">= {minimum}" + (f" and < num-partitions={maximum}" if maximum is not None else "")
    if value is None:
        raise ConfigError(
            f"node-config key '{key}' is missing: start the SuperNode with --node-config "
            f'"partition-id=<i> num-partitions=<N>" (an int {bounds})'
        )
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < minimum
        or (maximum is not None and value >= maximum)
    ):
        raise ConfigError(f"node-config key '{key}' has invalid value {value!r}: expected an int {bounds}")
    return value


def check_node_config(node_config: Mapping[str, ConfigValue]) -> None:
    """A SuperNode's ``--node-config``: partition-id in 0..num-partitions-1, an existing data-dir."""
    num_partitions = _node_int(node_config, "num-partitions", 1)
    _node_int(node_config, "partition-id", 0, num_partitions)
    if "privacy-threshold" in node_config:
        _node_int(node_config, "privacy-threshold", 1)
    if "data-dir" in node_config:
        data_dir = node_config["data-dir"]
        if not isinstance(data_dir, str) or not data_dir:
            raise ConfigError(f"node-config key 'data-dir' has invalid value {data_dir!r}: expected a folder path")
        if not Path(data_dir).expanduser().is_dir():
            raise ConfigError(f"node-config key 'data-dir' has invalid value {data_dir!r}: no such folder on this node")


def resolve_log_root(log_dir: str) -> Path:
    """Absolute experiments root; a relative ``log-dir`` is taken from the cwd once."""
    return Path(log_dir).expanduser().resolve()
