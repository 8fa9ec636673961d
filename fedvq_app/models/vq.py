"""FedVQ's model (seed 000): encoder -> Gumbel-softmax VQ -> residual decoder -> classifier.

Module names decide what travels: ``encoder.*`` stays on the client, ``vq.*``
(codebook + code projection), ``decoder.*`` and ``classifier.*`` are shared.
The encoder is the project's trunk (small CNN on CPU, ResNet-18 as in the seed)
plus, when its channel count differs from ``embedding_dim``, a 1x1 convolution
to that width (part of the private encoder).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from fedvq_app.config import ModelSettings
from fedvq_app.models import build_trunk

ENCODER_PREFIX = "encoder."
CODEBOOK_KEY = "vq.embeddings"


class VQOutput(NamedTuple):
    """Everything the loss, the metrics and the usage count need from one forward pass."""

    logits: torch.Tensor
    commitment: torch.Tensor
    decoded: torch.Tensor
    features: torch.Tensor
    perplexity: torch.Tensor
    codes: torch.Tensor  # (N, H, W) code index of every spatial position


class GumbelVQ(nn.Module):
    """Codebook (K x D) and a 1x1 projection to K code logits per spatial position.

    Training draws a hard one-hot code with the Gumbel-softmax straight-through
    estimator (temperature ``temperature``); evaluation takes the most likely code,
    so a model's predictions are deterministic. The commitment loss pulls the
    encoder output towards its quantized value (the codebook side is detached).

    ``proj_gain`` scales the projection's initial weights. The code choice is
    argmax(logits + Gumbel noise); when the encoder's activations are small (the
    randomly initialised CNN, unlike the seed's ImageNet ResNet) the initial logits
    are far below the noise (std 1.28), codes are picked at random and learning
    stalls for many epochs. A larger gain starts the logits above the noise.
    """

    def __init__(
        self, num_embeddings: int, embedding_dim: int, temperature: float = 1.0, proj_gain: float = 1.0
    ) -> None:
        super().__init__()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.temperature = temperature
        self.embeddings = nn.Parameter(torch.randn(num_embeddings, embedding_dim))
        self.proj = nn.Conv2d(embedding_dim, num_embeddings, kernel_size=1)
        with torch.no_grad():
            self.proj.weight.mul_(proj_gain)

    def code_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D, H, W) features -> (N*H*W, K) logits."""
        return self.proj(x).permute(0, 2, 3, 1).reshape(-1, self.num_embeddings)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        n, c, h, w = x.shape
        logits = self.code_logits(x)
        if self.training:
            one_hot = F.gumbel_softmax(logits, tau=self.temperature, hard=True)
        else:
            one_hot = F.one_hot(logits.argmax(1), self.num_embeddings).to(logits.dtype)
        quantized = (one_hot @ self.embeddings).view(n, h, w, c).permute(0, 3, 1, 2)
        mean_use = one_hot.mean(0)
        perplexity = torch.exp(-(mean_use * torch.log(mean_use + 1e-10)).sum())
        commitment = F.mse_loss(quantized.detach(), x)
        return quantized, commitment, perplexity, one_hot.argmax(1).view(n, h, w)


def _conv_block(dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1), nn.BatchNorm2d(dim), nn.ReLU(inplace=True))


class ResidualDecoder(nn.Module):
    """Two conv blocks with the seed's wiring: x1 = b1(q); x2 = b2(x1 + q); out = x2 + x1."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.block1 = _conv_block(dim)
        self.block2 = _conv_block(dim)

    def forward(self, quantized: torch.Tensor) -> torch.Tensor:
        x1 = self.block1(quantized)
        x2 = self.block2(x1 + quantized)
        return x2 + x1


class VQClassifier(nn.Module):
    """encoder -> VQ -> decoder -> global average pooling -> linear classifier."""

    def __init__(self, encoder: nn.Module, vq: GumbelVQ, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.vq = vq
        self.decoder = ResidualDecoder(vq.embedding_dim)
        self.classifier = nn.Linear(vq.embedding_dim, num_classes)

    def forward(self, x: torch.Tensor) -> VQOutput:
        features = self.encoder(x)
        quantized, commitment, perplexity, codes = self.vq(features)
        decoded = self.decoder(quantized)
        logits = self.classifier(torch.flatten(F.adaptive_avg_pool2d(decoded, 1), 1))
        return VQOutput(logits, commitment, decoded, features, perplexity, codes)


def build_vq_classifier(
    model: ModelSettings,
    in_channels: int,
    num_classes: int,
    num_embeddings: int,
    embedding_dim: int,
    temperature: float,
    proj_gain: float = 1.0,
) -> VQClassifier:
    """The seed's VQ classifier on the configured trunk."""
    trunk, channels = build_trunk(model, in_channels)
    encoder = trunk if channels == embedding_dim else nn.Sequential(trunk, nn.Conv2d(channels, embedding_dim, 1))
    return VQClassifier(encoder, GumbelVQ(num_embeddings, embedding_dim, temperature, proj_gain), num_classes)


def is_shared(name: str) -> bool:
    """Everything but the encoder travels to the server."""
    return not name.startswith(ENCODER_PREFIX)
