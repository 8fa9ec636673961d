"""Split a model's state into what travels (shared) and what stays on the client."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import numpy as np
import torch
from flwr.app import ArrayRecord
from torch import nn

from fedvq_app.records import to_record

LOCAL_ONLY_SUFFIXES = ("num_batches_tracked",)


def _entries(model: nn.Module, keep: Callable[[str], bool]) -> OrderedDict[str, np.ndarray]:
    return OrderedDict(
        (name, tensor.detach().cpu().numpy().copy()) for name, tensor in model.state_dict().items() if keep(name)
    )


def shared_arrays(model: nn.Module, is_shared: Callable[[str], bool]) -> ArrayRecord:
    """The shared part of the state dict (BatchNorm step counters never travel)."""
    keep = lambda n: is_shared(n) and not n.endswith(LOCAL_ONLY_SUFFIXES)  # noqa: E731
    return to_record(_entries(model, keep))


def private_arrays(model: nn.Module, is_shared: Callable[[str], bool]) -> ArrayRecord:
    """Everything that is not shared: kept in ``context.state`` between rounds."""
    keep = lambda n: not is_shared(n) or n.endswith(LOCAL_ONLY_SUFFIXES)  # noqa: E731
    return to_record(_entries(model, keep))


def load_arrays(model: nn.Module, record: ArrayRecord) -> None:
    """Copy the tensors of ``record`` into ``model``; every name must exist there."""
    state = model.state_dict()
    unknown = [k for k in record.keys() if k not in state]
    if unknown:
        raise KeyError(f"arrays not in the model: {unknown[:5]}")
    with torch.no_grad():
        for name, array in record.items():
            target = state[name]
            target.copy_(torch.from_numpy(np.asarray(array.numpy())).to(target.dtype))
