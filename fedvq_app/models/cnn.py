"""A small two-convolution CNN: the default model for CPU runs and tests."""

from __future__ import annotations

from torch import nn


def cnn_trunk(in_channels: int, width: int = 32) -> tuple[nn.Module, int]:
    """Conv feature extractor: (N, C, H, W) -> (N, 2*width, H/4, W/4)."""
    trunk = nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )
    return trunk, 2 * width


def cnn_backbone(in_channels: int, size: int, feature_dim: int = 128) -> tuple[nn.Module, int]:
    """Trunk + flatten + dense layer: images -> a ``feature_dim`` vector."""
    trunk, channels = cnn_trunk(in_channels)
    side = size // 4
    backbone = nn.Sequential(
        trunk,
        nn.Flatten(),
        nn.Linear(channels * side * side, feature_dim),
        nn.ReLU(inplace=True),
    )
    return backbone, feature_dim
