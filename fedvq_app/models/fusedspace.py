"""FusedSpaceFed's model (seed 003): private encoder, shared decoder, shared classifier.

The classifier sees the fused input ``x + D(E_i(x))``: the original image plus a
reconstruction drawn through the federation's common decoder. The encoder's
parameter names start with ``encoder.``; they never leave the client.

Two autoencoders (``fusedspace.autoencoder``):

* ``unet`` -- the reference code's small U-Net: two private encoder levels and a
  private bottleneck; the shared decoder up-samples and concatenates the encoder's
  level outputs (skip connections) before its convolutions. The skips carry
  activations, never parameters, so the private/shared split stays exact.
* ``plain`` -- a conv encoder to a ``dz``-channel latent at H/4 x W/4 and a decoder
  that sees only that latent (no skips).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fedvq_app.models import Classifier
from fedvq_app.options import AUTOENCODERS

PRIVATE_PREFIX = "encoder."


def is_shared(name: str) -> bool:
    """Decoder and classifier travel; the encoder stays on the client."""
    return not name.startswith(PRIVATE_PREFIX)


def conv_encoder(in_channels: int, dz: int, width: int = 16) -> nn.Module:
    """(N, C, H, W) -> latent maps (N, dz, H/4, W/4)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(2 * width, dz, 3, padding=1),
    )


def conv_decoder(out_channels: int, dz: int, width: int = 16) -> nn.Module:
    """Latent maps (N, dz, h, w) -> images (N, C, 4h, 4w)."""
    return nn.Sequential(
        nn.ConvTranspose2d(dz, 2 * width, 2, stride=2),
        nn.ReLU(inplace=True),
        nn.Conv2d(2 * width, 2 * width, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.ConvTranspose2d(2 * width, width, 2, stride=2),
        nn.ReLU(inplace=True),
        nn.Conv2d(width, out_channels, 3, padding=1),
    )


def _conv_pair(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1),
        nn.ReLU(inplace=True),
    )


class UNetEncoder(nn.Module):
    """Private half of the U-Net: level 1 (width), level 2 (2 width), bottleneck (4 width).

    Returns the bottleneck and the two level outputs the decoder's skips read.
    """

    def __init__(self, in_channels: int, width: int = 16) -> None:
        super().__init__()
        self.level1 = _conv_pair(in_channels, width)
        self.level2 = _conv_pair(width, 2 * width)
        self.bottleneck = _conv_pair(2 * width, 4 * width)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        e1 = self.level1(x)
        e2 = self.level2(self.pool(e1))
        return self.bottleneck(self.pool(e2)), e2, e1


def _up_to(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Match an up-sampled map to its skip's side (odd sides floor when pooled)."""
    if x.shape[-2:] == like.shape[-2:]:
        return x
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


class UNetDecoder(nn.Module):
    """Shared half of the U-Net: up-sample, concatenate the encoder level, convolve; 1x1 output."""

    def __init__(self, out_channels: int, width: int = 16) -> None:
        super().__init__()
        self.up2 = nn.ConvTranspose2d(4 * width, 2 * width, 2, stride=2)
        self.level2 = _conv_pair(4 * width, 2 * width)
        self.up1 = nn.ConvTranspose2d(2 * width, width, 2, stride=2)
        self.level1 = _conv_pair(2 * width, width)
        self.output = nn.Conv2d(width, out_channels, 1)

    def forward(self, encoded: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
        z, e2, e1 = encoded
        d2 = self.level2(torch.cat([_up_to(self.up2(z), e2), e2], dim=1))
        d1 = self.level1(torch.cat([_up_to(self.up1(d2), e1), e1], dim=1))
        return self.output(d1)


class FusedSpaceNet(nn.Module):
    """x -> E_i -> D -> x~ ; classifier(x + x~)."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, classifier: Classifier) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.classifier = classifier

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """D(E_i(x)), resized to the input when the side is not a multiple of 4."""
        out = self.decoder(self.encoder(x))
        if out.shape[-2:] != x.shape[-2:]:
            out = F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return out

    def fused_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits of the fused input, reconstruction)."""
        reconstruction = self.reconstruct(x)
        return self.classifier(x + reconstruction), reconstruction

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fused_logits(x)[0]


def build_fusedspace(
    classifier: Classifier, channels: int, dz: int, autoencoder: str = "unet", width: int = 16
) -> FusedSpaceNet:
    """The U-Net (``width`` at its first level) or the plain pair (latent ``dz``) around a classifier."""
    if autoencoder == "unet":
        return FusedSpaceNet(UNetEncoder(channels, width), UNetDecoder(channels, width), classifier)
    if autoencoder == "plain":
        return FusedSpaceNet(conv_encoder(channels, dz, width), conv_decoder(channels, dz, width), classifier)
    raise ValueError(f"autoencoder must be one of {AUTOENCODERS}, got {autoencoder!r}")
