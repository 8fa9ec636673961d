"""Training hooks of the baselines: FedProx's proximal term, SCAFFOLD's correction."""

from __future__ import annotations

import torch
from torch import nn

from fedvq_app.training.loop import TrainHook


def _parameters(model: nn.Module, names) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if n in names]


class ProximalTerm(TrainHook):
    """(mu / 2) * ||w - w_global||^2 over the shared parameters (FedProx)."""

    def __init__(self, model: nn.Module, mu: float, shared: set[str]) -> None:
        self.mu = mu
        self.anchor = {n: p.detach().clone() for n, p in _parameters(model, shared)}

    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        if self.mu == 0:
            return None
        terms = [((p - self.anchor[n]) ** 2).sum() for n, p in _parameters(model, self.anchor)]
        return 0.5 * self.mu * torch.stack(terms).sum()


class ScaffoldCorrection(TrainHook):
    """g <- g + c - c_i on every corrected parameter; counts the local steps."""

    def __init__(self, global_c: dict[str, torch.Tensor], local_c: dict[str, torch.Tensor]) -> None:
        self.correction = {n: global_c[n] - local_c[n] for n in global_c}
        self.steps = 0

    def before_step(self, model: nn.Module) -> None:
        for name, param in _parameters(model, self.correction):
            if param.grad is not None:
                param.grad.add_(self.correction[name].to(param.grad.device))

    def after_step(self, model: nn.Module) -> None:
        self.steps += 1
