"""FusedSpaceFed's model (seed 003): private encoder, shared decoder, shared classifier.

The classifier sees the fused input ``x + D(E_i(x))``: the original image plus a
reconstruction drawn through the federation's common decoder. The encoder's
parameter names start with ``encoder.``; they never leave the client. The decoder
sees only the latent code (no U-Net skip connections), so everything that is
client-specific stays behind the private encoder.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fedvq_app.models import Classifier

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


def build_fusedspace(classifier: Classifier, channels: int, dz: int) -> FusedSpaceNet:
    """Encoder/decoder pair of latent width ``dz`` around a given classifier."""
    return FusedSpaceNet(conv_encoder(channels, dz), conv_decoder(channels, dz), classifier)
