"""Sample-level DP-SGD on a client with Opacus (``privacy.mode = sample-dpsgd``; docs/privacy.md).

:func:`dp_compatible` makes a model Opacus can train (``ModuleValidator.fix``
replaces BatchNorm by GroupNorm, in-place activations become out-of-place); server and clients apply it alike, so the
shared arrays keep one schema. :class:`DpSgdSession` turns one round's optimizer
and loader into Opacus' (``PrivacyEngine.make_private``: per-sample clipping to
``privacy.clipping-norm``, Gaussian noise of ``privacy.noise-multiplier`` x that
norm on every step, Poisson sampling of the batches) and keeps the client's RDP
accountant history in ``context.state`` from round to round, so the epsilon it
reports (Opacus' RDP analysis of that history) covers every step the client has
taken in the run.

Data-independent loss terms (FedProx's proximal term) never reach Opacus'
per-sample gradients, so its optimizer would drop them: their gradient is added
after the noise, in the optimizer's step hook (post-processing; no privacy cost).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from flwr.app import ConfigRecord, RecordDict
from torch import nn

from fedvq_app.aggregation.privacy import history_epsilon, quiet_opacus
from fedvq_app.config import ConfigError, PrivacySettings, Settings
from fedvq_app.protocol import DP_EPSILON, DP_NOISE, DP_SAMPLE_RATE, DP_STEPS

SAMPLE_MODE = "sample-dpsgd"
HISTORY_KEY = "dpsgd-accountant"


def dp_compatible(model: nn.Module, settings: Settings) -> nn.Module:
    """``model`` as Opacus can train it under sample-dpsgd (BatchNorm -> GroupNorm); unchanged otherwise."""
    if settings.privacy.mode != SAMPLE_MODE:
        return model
    quiet_opacus()  # before any Opacus import: no second root log handler
    from opacus.validators import ModuleValidator  # noqa: PLC0415 (only DP runs pay the import)

    model = ModuleValidator.fix(model)
    for module in model.modules():  # Opacus' backward hooks cannot see through in-place activations
        if getattr(module, "inplace", False) is True:
            module.inplace = False
    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        raise ConfigError(
            f"config key 'privacy.mode' has invalid value {SAMPLE_MODE!r} for model.name={settings.model.name!r} "
            f"and method {settings.method!r}: Opacus cannot compute per-sample gradients ({errors[0]})"
        )
    return model


def load_history(state: RecordDict) -> list[tuple[float, float, int]]:
    record = state.get(HISTORY_KEY)
    if record is None:
        return []
    return [(float(z), float(q), int(s)) for z, q, s in json.loads(str(record["history"]))]


def save_history(state: RecordDict, history: Sequence[tuple[float, float, int]]) -> None:
    state[HISTORY_KEY] = ConfigRecord({"history": json.dumps([list(h) for h in history])})


def _steps(history: Sequence[tuple[float, float, int]]) -> int:
    return sum(int(s) for _, _, s in history)


@dataclass
class DpSgdSession:
    """One round of DP-SGD: Opacus' optimizer and loader, the accountant carried in ``context.state``."""

    privacy: PrivacySettings
    state: RecordDict
    engine: Any
    module: Any
    optimizer: torch.optim.Optimizer
    loader: Any
    steps_before: int

    @classmethod
    def start(cls, privacy: PrivacySettings, state: RecordDict, model: nn.Module, optimizer, loader, hooks=()):
        """None unless ``privacy.mode`` is sample-dpsgd."""
        if privacy.mode != SAMPLE_MODE:
            return None
        quiet_opacus()
        from opacus import PrivacyEngine  # noqa: PLC0415 - start-up cost: Opacus, only on this path

        engine = PrivacyEngine(accountant="rdp")
        engine.accountant.history = load_history(state)
        module, dp_optimizer, dp_loader = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=privacy.noise_multiplier,
            max_grad_norm=privacy.clipping_norm,
            poisson_sampling=True,
        )
        _add_regularisers_after_noise(dp_optimizer, model, hooks)
        return cls(privacy, state, engine, module, dp_optimizer, dp_loader, _steps(engine.accountant.history))

    def finish(self) -> dict[str, float | int]:
        """Remove Opacus' hooks, store the accountant, return the train-reply metrics."""
        self.module._close()
        history = list(self.engine.accountant.history)
        save_history(self.state, history)
        return {
            DP_EPSILON: history_epsilon(history, self.privacy.target_delta),
            DP_STEPS: _steps(history) - self.steps_before,
            DP_SAMPLE_RATE: float(self.loader.sample_rate),
            DP_NOISE: float(self.privacy.noise_multiplier),
        }


def _add_regularisers_after_noise(optimizer, model: nn.Module, hooks) -> None:
    """Chain a step hook adding the gradient of the hooks' ``extra_loss`` to Opacus' noised gradient."""
    hooks = list(hooks)
    if not hooks:
        return
    accountant_hook = optimizer.step_hook

    def step_hook(opt) -> None:
        if accountant_hook is not None:
            accountant_hook(opt)
        terms = [t for t in (h.extra_loss(model) for h in hooks) if t is not None]
        if not terms:
            return
        params = [p for group in opt.param_groups for p in group["params"] if p.requires_grad]
        grads = torch.autograd.grad(sum(terms), params, allow_unused=True)
        for p, g in zip(params, grads, strict=True):
            if g is not None:
                p.grad = g if p.grad is None else p.grad + g

    optimizer.step_hook = step_hook
