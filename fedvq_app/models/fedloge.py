"""FedLoGe's network: backbone, frozen sparse ETF classifier SSE-C, global and local heads.

* ``backbone`` -- the project's feature extractor (:func:`build_backbone`); shared.
* ``sse_c`` -- a non-persistent buffer: not a parameter (never trained) and not in
  the state dict (never sent, stored or aggregated); every node rebuilds the same
  matrix from the run seed.
* ``global_head`` -- a linear head trained on detached features; shared.
* ``local_head`` -- the same shape, trained on detached features; private
  (it stays in the client's ``context.state``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedvq_app.aggregation.etf import realign_global, realign_local, sparse_etf
from fedvq_app.models import build_backbone

SHARED_PREFIXES = ("backbone.", "global_head.")
MASKED_LOGIT = -1e9  # logit of a class the client never saw (personal mode)
#: inference modes every evaluation reports on each client's own long-tailed test data;
#: raw-global = the global head without GLA-FR (ablation)
MODES = ("generic", "global", "personal", "raw-global")
#: the client-independent modes, also scored on the global class-balanced test set
BALANCED_MODES = ("generic", "global", "raw-global")
BALANCED_SUFFIX = "-balanced"
#: every report name: the modes on own data, then "<mode>-balanced"
REPORTED_MODES = MODES + tuple(m + BALANCED_SUFFIX for m in BALANCED_MODES)
#: which global head the personal mode adds to the realigned local head
PERSONAL_GLOBAL_HEADS = ("raw", "realigned")


class FedLoGeNet(nn.Module):
    """Backbone + SSE-C (frozen) + global head + local head."""

    def __init__(self, backbone: nn.Module, feature_dim: int, sse_c: torch.Tensor) -> None:
        super().__init__()
        num_classes = int(sse_c.shape[0])
        if int(sse_c.shape[1]) != feature_dim:
            raise ValueError(f"SSE-C has {sse_c.shape[1]} columns, the backbone gives {feature_dim} features")
        self.backbone = backbone
        self.register_buffer("sse_c", sse_c.float(), persistent=False)
        self.global_head = nn.Linear(feature_dim, num_classes)
        self.local_head = nn.Linear(feature_dim, num_classes)

    @property
    def num_classes(self) -> int:
        return int(self.sse_c.shape[0])

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def generic_logits(self, features: torch.Tensor) -> torch.Tensor:
        """SSE-C(features): the universal ("generic") classifier."""
        return F.linear(features, self.sse_c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.generic_logits(self.features(x))


@dataclass(frozen=True)
class GlaFrHeads:
    """The heads of the global and personalized inference modes (after GLA-FR), on CPU.

    ``personal`` = realigned local head + a global head (raw as in the seed, or the
    realigned one), with the classes the client never saw masked out; without
    realignment the raw local head and the raw global head stand in.
    """

    global_weight: torch.Tensor
    global_bias: torch.Tensor
    realigned_global_weight: torch.Tensor
    local_weight: torch.Tensor
    local_bias: torch.Tensor
    personal_global_weight: torch.Tensor
    absent: torch.Tensor

    def raw_global_logits(self, features: torch.Tensor) -> torch.Tensor:
        return F.linear(features, self.global_weight, self.global_bias)

    def global_logits(self, features: torch.Tensor) -> torch.Tensor:
        return F.linear(features, self.realigned_global_weight, self.global_bias)

    def personal_logits(self, features: torch.Tensor) -> torch.Tensor:
        local = F.linear(features, self.local_weight, self.local_bias)
        logits = local + F.linear(features, self.personal_global_weight, self.global_bias)
        return logits.masked_fill(self.absent, MASKED_LOGIT)


@torch.no_grad()
def gla_fr(
    model: FedLoGeNet, train_counts, tau: float, realign: bool = True, personal_global: str = "raw"
) -> GlaFrHeads:
    """Global and local feature realignment of ``model``'s heads for one client (CPU tensors).

    ``personal_global`` picks the global head added in the personal mode: "raw"
    (the seed's formula) or "realigned".
    """
    if personal_global not in PERSONAL_GLOBAL_HEADS:
        raise ValueError(f"personal_global must be one of {PERSONAL_GLOBAL_HEADS}, got {personal_global!r}")
    g_w = model.global_head.weight.detach().cpu()
    g_b = model.global_head.bias.detach().cpu()
    l_w = model.local_head.weight.detach().cpu()
    l_b = model.local_head.bias.detach().cpu()
    global_w = g_w
    if realign:
        global_w = torch.from_numpy(realign_global(g_w.numpy(), tau))
        l_w = torch.from_numpy(realign_local(g_w.numpy(), l_w.numpy()))  # the local bias stays (seed)
    return GlaFrHeads(
        global_weight=g_w,
        global_bias=g_b,
        realigned_global_weight=global_w,
        local_weight=l_w,
        local_bias=l_b,
        personal_global_weight=global_w if personal_global == "realigned" else g_w,
        absent=torch.as_tensor(np.asarray(train_counts) == 0),
    )


def is_shared(name: str) -> bool:
    """Backbone and global head travel; the local head never does."""
    return name.startswith(SHARED_PREFIXES)


def build_fedloge_model(settings, info) -> FedLoGeNet:
    """The FedLoGe network for ``info``'s images; SSE-C from the run seed."""
    backbone, dim = build_backbone(settings.model, info.channels, info.size)
    opts = settings.method_options
    weights = sparse_etf(dim, info.num_classes, opts.sparsity, settings.seed)
    return FedLoGeNet(backbone, dim, torch.from_numpy(weights))
