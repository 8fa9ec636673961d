"""FedLoGe's network: backbone, frozen sparse ETF classifier SSE-C, global and local heads.

* ``backbone`` -- the project's feature extractor (:func:`build_backbone`); shared.
* ``sse_c`` / ``sse_c_bias`` -- non-persistent buffers: not parameters (never
  trained) and not in the state dict (never sent, stored or aggregated); every node
  rebuilds the same frame and bias from the run seed (``fedloge.sse-c``: the
  reference's random-position frame at norm 0.1 with a random bias, or the
  top-magnitude unit-norm frame without bias).
* ``global_head`` -- a linear head trained on detached features; shared.
* ``local_head`` -- the same shape, trained on detached features; private
  (it stays in the client's ``context.state``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedvq_app.aggregation.etf import realign_global, realign_local, reference_sse_c, sparse_etf
from fedvq_app.models import build_backbone
from fedvq_app.options import PERSONAL_FORMULAS, PERSONAL_GLOBAL_HEADS, SSE_C_KINDS, FedLoGeOptions
from fedvq_app.protocol import BALANCED_SUFFIX

SHARED_PREFIXES = ("backbone.", "global_head.")
MASKED_LOGIT = -1e9  # logit of a class the client never saw (personal mode)
#: diagnostic modes of the personal model's two parts, absent classes masked like the personal mode:
#: local-only = the raw local head (its bias), global-only = the realigned global head (global bias)
HEAD_ONLY_MODES = ("local-only", "global-only")
#: inference modes every evaluation reports on each client's own long-tailed test data (and, as
#: ``val-<mode>-accuracy``, on its own validation split); raw-global = the global head without GLA-FR
#: (ablation); personal = the configured formula, personal-<formula> = each formula (so one run compares them)
MODES = ("generic", "global", "personal", "raw-global", *(f"personal-{f}" for f in PERSONAL_FORMULAS), *HEAD_ONLY_MODES)
#: the client-independent modes, also scored on the global class-balanced test set
BALANCED_MODES = ("generic", "global", "raw-global")
#: every report name: the modes on own data, then "<mode>-balanced"
REPORTED_MODES = MODES + tuple(m + BALANCED_SUFFIX for m in BALANCED_MODES)


class FedLoGeNet(nn.Module):
    """Backbone + SSE-C (frozen) + global head + local head."""

    def __init__(
        self, backbone: nn.Module, feature_dim: int, sse_c: torch.Tensor, sse_c_bias: torch.Tensor | None = None
    ) -> None:
        super().__init__()
        num_classes = int(sse_c.shape[0])
        if int(sse_c.shape[1]) != feature_dim:
            raise ValueError(f"SSE-C has {sse_c.shape[1]} columns, the backbone gives {feature_dim} features")
        self.backbone = backbone
        self.register_buffer("sse_c", sse_c.float(), persistent=False)
        bias = torch.zeros(num_classes) if sse_c_bias is None else sse_c_bias.float()
        self.register_buffer("sse_c_bias", bias, persistent=False)
        self.global_head = nn.Linear(feature_dim, num_classes)
        self.local_head = nn.Linear(feature_dim, num_classes)

    @property
    def num_classes(self) -> int:
        return int(self.sse_c.shape[0])

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def generic_logits(self, features: torch.Tensor) -> torch.Tensor:
        """SSE-C(features): the universal ("generic") classifier (frozen weights and bias)."""
        return F.linear(features, self.sse_c.to(features.device), self.sse_c_bias.to(features.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.generic_logits(self.features(x))


@dataclass(frozen=True)
class GlaFrHeads:
    """The heads of the global and personalized inference modes (after GLA-FR), on CPU.

    Personal formulas, with the classes the client never saw masked out:

    * ``raw-local`` (the reference code): raw local head + the global head's rows
      scaled to the local head's row norms (global bias);
    * ``realigned-local``: that realigned head with the local bias + a global head
      (raw, or realigned to ``tau``);
    * ``raw-heads`` (the reference's per-round ``localtest``): raw local head + raw global head.

    Without realignment the raw local head + the raw global head stand in for both.
    """

    global_weight: torch.Tensor
    global_bias: torch.Tensor
    realigned_global_weight: torch.Tensor
    raw_local_weight: torch.Tensor
    local_weight: torch.Tensor
    local_bias: torch.Tensor
    personal_global_weight: torch.Tensor
    absent: torch.Tensor
    formula: str = "raw-local"

    def raw_global_logits(self, features: torch.Tensor) -> torch.Tensor:
        return F.linear(features, self.global_weight, self.global_bias)

    def global_logits(self, features: torch.Tensor) -> torch.Tensor:
        return F.linear(features, self.realigned_global_weight, self.global_bias)

    def formula_logits(self, features: torch.Tensor, formula: str) -> torch.Tensor:
        """Personalized logits of one formula (absent classes masked)."""
        if formula == "raw-local":
            logits = F.linear(features, self.raw_local_weight, self.local_bias) + F.linear(
                features, self.local_weight, self.global_bias
            )
        elif formula == "realigned-local":
            logits = F.linear(features, self.local_weight, self.local_bias) + F.linear(
                features, self.personal_global_weight, self.global_bias
            )
        elif formula == "raw-heads":
            logits = F.linear(features, self.raw_local_weight, self.local_bias) + F.linear(
                features, self.global_weight, self.global_bias
            )
        else:
            raise ValueError(f"personal formula must be one of {PERSONAL_FORMULAS}, got {formula!r}")
        return logits.masked_fill(self.absent, MASKED_LOGIT)

    def personal_logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.formula_logits(features, self.formula)

    def local_only_logits(self, features: torch.Tensor) -> torch.Tensor:
        """The raw local head alone (diagnostic), absent classes masked."""
        return F.linear(features, self.raw_local_weight, self.local_bias).masked_fill(self.absent, MASKED_LOGIT)

    def global_only_logits(self, features: torch.Tensor) -> torch.Tensor:
        """The realigned global head alone (diagnostic), absent classes masked."""
        return self.global_logits(features).masked_fill(self.absent, MASKED_LOGIT)


@torch.no_grad()
def gla_fr(
    model: FedLoGeNet,
    train_counts,
    tau: float,
    realign: bool = True,
    personal_global: str = "raw",
    formula: str = "raw-local",
) -> GlaFrHeads:
    """Global and local feature realignment of ``model``'s heads for one client (CPU tensors).

    ``formula`` picks the personal mode's formula; ``personal_global`` the global head
    the "realigned-local" formula adds: "raw" or "realigned" (to ``tau``).
    """
    if formula not in PERSONAL_FORMULAS:
        raise ValueError(f"formula must be one of {PERSONAL_FORMULAS}, got {formula!r}")
    if personal_global not in PERSONAL_GLOBAL_HEADS:
        raise ValueError(f"personal_global must be one of {PERSONAL_GLOBAL_HEADS}, got {personal_global!r}")
    g_w = model.global_head.weight.detach().cpu()
    g_b = model.global_head.bias.detach().cpu()
    l_w = model.local_head.weight.detach().cpu()
    l_b = model.local_head.bias.detach().cpu()
    raw_l_w = l_w
    global_w = g_w
    if realign:
        global_w = torch.from_numpy(realign_global(g_w.numpy(), tau))
        l_w = torch.from_numpy(realign_local(g_w.numpy(), l_w.numpy()))  # the local bias stays (seed)
    return GlaFrHeads(
        global_weight=g_w,
        global_bias=g_b,
        realigned_global_weight=global_w,
        raw_local_weight=raw_l_w,
        local_weight=l_w,
        local_bias=l_b,
        personal_global_weight=global_w if personal_global == "realigned" else g_w,
        absent=torch.as_tensor(np.asarray(train_counts) == 0),
        formula=formula,
    )


def is_shared(name: str) -> bool:
    """Backbone and global head travel; the local head never does."""
    return name.startswith(SHARED_PREFIXES)


@lru_cache(maxsize=8)
def sse_c_arrays(kind: str, feature_dim: int, num_classes: int, sparsity: float, seed: int):
    """(weights, bias or None) of SSE-C; cached: every client of a process builds the same one."""
    if kind == "reference":
        return reference_sse_c(feature_dim, num_classes, sparsity, seed)
    if kind == "top-magnitude":
        return sparse_etf(feature_dim, num_classes, sparsity, seed), None
    raise ValueError(f"SSE-C kind must be one of {SSE_C_KINDS}, got {kind!r}")


def build_fedloge_model(settings, info) -> FedLoGeNet:
    """The FedLoGe network for ``info``'s images; SSE-C from the run seed."""
    backbone, dim = build_backbone(settings.model, info.channels, info.size)
    opts = settings.options(FedLoGeOptions)
    weights, bias = sse_c_arrays(opts.sse_c, dim, info.num_classes, opts.sparsity, settings.seed)
    return FedLoGeNet(
        backbone, dim, torch.from_numpy(weights.copy()), None if bias is None else torch.from_numpy(bias.copy())
    )
