"""Pick the torch device: CUDA when present (``device=auto``), CPU otherwise."""

from __future__ import annotations

import torch

from fedvq_app.config import ConfigError


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda if available else cpu; an explicit CUDA device must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"config key 'device' has invalid value {name!r}: no CUDA device is available here; "
            "use 'auto' or 'cpu'"
        )
    return torch.device(name)


def configure_threads(num_threads: int) -> None:
    """Cap intra-op threads (0 keeps torch's default) so parallel clients do not fight."""
    if num_threads > 0 and torch.get_num_threads() != num_threads:
        torch.set_num_threads(num_threads)
