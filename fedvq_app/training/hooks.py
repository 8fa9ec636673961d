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
    """SCAFFOLD's drift correction w <- w - lr (c - c_i), applied after each step.

    The correction is a constant vector for the whole round. Added to the gradient
    (as in the paper's plain SGD) it would pass through the momentum buffer and be
    amplified ~1/(1-beta): with momentum 0.9 SCAFFOLD diverged on digits. So the
    optimizer (momentum, Adam...) sees only the client's own gradient and the
    correction moves the weights as one plain SGD term; with momentum 0 this is
    exactly the paper's update. The hook also sums the raw minibatch gradients:
    their mean is the new client control variate c_i+ (option II's
    (x - y_i) / (K lr) equals it only for plain SGD).
    """

    def __init__(self, global_c: dict[str, torch.Tensor], local_c: dict[str, torch.Tensor], lr: float) -> None:
        self.correction = {n: global_c[n] - local_c[n] for n in global_c}
        self.grad_sum = {n: torch.zeros_like(c) for n, c in global_c.items()}
        self.lr = lr
        self.steps = 0

    def before_step(self, model: nn.Module) -> None:
        for name, param in _parameters(model, self.correction):
            if param.grad is not None:
                self.grad_sum[name] += param.grad.detach().cpu()

    @torch.no_grad()
    def after_step(self, model: nn.Module) -> None:
        for name, param in _parameters(model, self.correction):
            param.add_(self.correction[name].to(param.device), alpha=-self.lr)
        self.steps += 1

    def mean_gradient(self) -> dict[str, torch.Tensor]:
        """The new client control variate c_i+ (zeros if no step was taken)."""
        return {n: g / max(self.steps, 1) for n, g in self.grad_sum.items()}
