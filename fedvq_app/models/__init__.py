"""Model builders shared by every method.

``build_trunk`` gives a feature-map extractor (FedVQ's encoder), ``build_backbone``
a feature-vector extractor, and :class:`Classifier` = backbone + linear head, the
model of FedAvg/FedProx/SCAFFOLD/CFL.
"""

from __future__ import annotations

import torch
from torch import nn

from fedvq_app.config import ModelSettings
from fedvq_app.models.cnn import cnn_backbone, cnn_trunk
from fedvq_app.models.resnet import resnet18_backbone, resnet18_trunk


def build_trunk(settings: ModelSettings, in_channels: int) -> tuple[nn.Module, int]:
    """Feature-map extractor and its number of output channels."""
    if settings.name == "resnet18":
        return resnet18_trunk(in_channels, settings.weights)
    return cnn_trunk(in_channels)


def build_backbone(settings: ModelSettings, in_channels: int, size: int) -> tuple[nn.Module, int]:
    """Feature-vector extractor and its feature dimension."""
    if settings.name == "resnet18":
        return resnet18_backbone(in_channels, settings.weights)
    return cnn_backbone(in_channels, size)


class Classifier(nn.Module):
    """backbone -> features -> linear classifier."""

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.classifier = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.backbone(x))


def build_classifier(settings: ModelSettings, in_channels: int, size: int, num_classes: int) -> Classifier:
    """The plain image classifier used by the baselines."""
    backbone, dim = build_backbone(settings, in_channels, size)
    return Classifier(backbone, dim, num_classes)
