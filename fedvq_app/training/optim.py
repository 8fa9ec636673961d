"""torch.optim's SGD and Adam without the torch.compile hooks that import ``torch._dynamo``.

torch.optim decorates ``Optimizer.add_param_group``, ``zero_grad``, ``state_dict`` and
``load_state_dict`` with ``torch._disable_dynamo`` and wraps every ``step`` in a graph-break hook;
both import ``torch._dynamo`` the first time they run. That import takes 1.7-2.7 s here, and in a
deployment every ClientApp message is a fresh process, so each site paid it on every message
(see docs/deployment.md). Nothing in this project is compiled, so these subclasses call the
undecorated functions: the arithmetic, the state and the step hooks are torch's own (a test
checks the parameters are bit-identical to torch.optim's after several steps, and that
``torch._dynamo`` stays unimported).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch


def _undecorated(method) -> Any:
    """The plain function under torch's decorators (``functools.wraps`` keeps it as ``__wrapped__``)."""
    return inspect.unwrap(method.__func__)


class EagerOptimizer:
    """Mixin, before a ``torch.optim.Optimizer`` subclass: the same methods, minus their dynamo hooks."""

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        _undecorated(super().add_param_group)(self, param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        _undecorated(super().zero_grad)(self, set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return _undecorated(super().state_dict)(self)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        _undecorated(super().load_state_dict)(self, state_dict)

    def step(self, closure=None):
        # what torch's hook does around step, less its torch.compile graph break
        with torch.set_grad_enabled(self.defaults["differentiable"]):
            return _undecorated(super().step)(self, closure)


class SGD(EagerOptimizer, torch.optim.SGD):
    """``torch.optim.SGD`` for eager training."""


class Adam(EagerOptimizer, torch.optim.Adam):
    """``torch.optim.Adam`` for eager training."""
