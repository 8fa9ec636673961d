"""Checks the server makes before it writes anything or sends round 1.

Only what the server can know on its own: the experiment folder rules (an
existing experiment is never modified except by an accepted resume), a writable
``log-dir``, and, once the dataset's classes are known, whether the partition
settings can work at all. Whatever only a client can know (its data files, its
device, its node config) comes back as a ConfigError reply, and the round loop
stops when every reply of a round carries one (:mod:`fedvq_app.server.failures`).
"""

from __future__ import annotations

import os
from pathlib import Path

from fedvq_app.config import ConfigError, Settings, resolve_log_root


def check_log_dir(log_dir: str) -> Path:
    """The experiments root must be a folder we can create and write (or create)."""
    root = resolve_log_root(log_dir)
    existing = root
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise ConfigError(
            f"config key 'log-dir' has invalid value {log_dir!r}: {str(existing)!r} is a file, not a folder"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"config key 'log-dir' has invalid value {log_dir!r}: {str(existing)!r} is not writable")
    return root


def check_resume(settings: Settings) -> None:
    """resume-from must name an existing experiment whose checkpoint this config may continue."""
    from fedvq_app.server.checkpoint import check_compatible, load_checkpoint  # noqa: PLC0415 (imports torch)

    folder = Path(settings.resume_from).expanduser()
    if not folder.is_dir():
        raise ConfigError(
            f"config key 'resume-from' has invalid value {settings.resume_from!r}: no such experiment folder"
        )
    try:
        checkpoint = load_checkpoint(folder)
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 - a truncated or foreign file is bad input, not a bug
        raise ConfigError(
            f"config key 'resume-from' has invalid value {settings.resume_from!r}: "
            f"its checkpoint.npz cannot be read ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        ) from None
    check_compatible(settings, checkpoint)


def check_new_experiment(settings: Settings, root: Path) -> None:
    """A named experiment that exists already is refused (resume it with resume-from)."""
    if settings.experiment_name and (root / settings.experiment_name).exists():
        raise ConfigError(
            f"config key 'experiment-name' has invalid value {settings.experiment_name!r}: "
            f"{str(root / settings.experiment_name)!r} exists already; choose another name, or continue it "
            f"with resume-from='{root / settings.experiment_name}'"
        )


def shares_the_clients_machine(grid) -> bool:
    """Simulation (Flower's in-memory grid) and the in-process LocalGrid run clients on this machine."""
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid  # noqa: PLC0415 - start-up cost: Flower's in-memory grid, only on this path

    from fedvq_app.local_grid import LocalGrid  # noqa: PLC0415 - start-up cost: Flower's in-memory grid, only on this path

    return isinstance(grid, InMemoryGrid | LocalGrid)


def check_device_here(settings: Settings) -> None:
    """A CUDA device the clients would need, checked where the clients run (simulation only)."""
    from fedvq_app.training.device import resolve_device  # noqa: PLC0415 - start-up cost: torch, only on this path

    resolve_device(settings.device)


def preflight(settings: Settings, grid=None) -> None:
    """Everything the server can refuse before it creates or touches a folder."""
    if settings.device.startswith("cuda") and grid is not None and shares_the_clients_machine(grid):
        check_device_here(settings)  # 'auto' and 'cpu' always work: no torch import for them
    if settings.resume_from:
        check_resume(settings)
        return
    check_new_experiment(settings, check_log_dir(settings.log_dir))


def check_partition_feasible(settings: Settings, num_classes: int) -> None:
    """Partition settings that cannot work for a dataset of ``num_classes`` classes."""
    part = settings.partition
    if part.kind == "pathological" and part.classes_per_client > num_classes:
        raise ConfigError(
            f"config key 'partition.classes-per-client' has invalid value {part.classes_per_client}: "
            f"expected an int <= {num_classes}, the number of classes of dataset.name={settings.dataset.name!r}"
        )
