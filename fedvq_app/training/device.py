"""Pick the torch device: CUDA when present (``device=auto``), CPU otherwise."""

from __future__ import annotations

import torch

from fedvq_app.config import ConfigError
from fedvq_app.training.threads import limit_native_threads


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda if available else cpu; an explicit CUDA device must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"config key 'device' has invalid value {name!r}: no CUDA device is available here; use 'auto' or 'cpu'"
        )
    return torch.device(name)


def configure_threads(num_threads: int) -> None:
    """Cap torch's intra-op threads and the BLAS/OpenMP pools (0 keeps the defaults) so parallel clients do
    not fight."""
    limit_native_threads(num_threads)
