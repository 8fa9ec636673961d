"""ResNet-18 from torchvision, with local weights only (no download at run time)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fedvq_app.config import ConfigError


def _load_local_weights(model: nn.Module, weights: str) -> None:
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"config key 'model.weights' has invalid value {weights!r}: no such file; give the "
            "path of a torchvision resnet18 state_dict (.pth) or leave it empty for random init"
        )
    bad = f"config key 'model.weights' has invalid value {weights!r}"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - not a torch file, truncated, pickled code: one line
        raise ConfigError(f"{bad}: not a readable state_dict file ({type(err).__name__})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{bad}: it holds a {type(state).__name__}, not a state_dict (name -> tensor)")
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [""]
        raise ConfigError(f"{bad}: its tensors do not fit resnet18 ({lines[min(1, len(lines) - 1)]})") from None
    if not set(state) - set(result.unexpected_keys):
        raise ConfigError(f"{bad}: none of its {len(state)} entries is a resnet18 parameter")


def resnet18_trunk(in_channels: int, weights: str = "") -> tuple[nn.Module, int]:
    """ResNet-18 without pooling and fc: (N, C, H, W) -> (N, 512, H/32, W/32)."""
    from torchvision.models import resnet18  # noqa: PLC0415 (torchvision.models costs ~1 s per ClientApp process)

    net = resnet18(weights=None)
    if weights:
        _load_local_weights(net, weights)
    if in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    trunk = nn.Sequential(*list(net.children())[:-2])
    return trunk, 512


def resnet18_backbone(in_channels: int, weights: str = "") -> tuple[nn.Module, int]:
    """ResNet-18 trunk + global average pooling: images -> 512-d vector."""
    trunk, channels = resnet18_trunk(in_channels, weights)
    return nn.Sequential(trunk, nn.AdaptiveAvgPool2d(1), nn.Flatten()), channels
