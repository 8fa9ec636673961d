"""FedVQ's model (seed 000): encoder -> vector quantizer -> residual decoder -> classifier.

Three quantizers (``fedvq.quantizer``):

* ``gumbel`` -- the seed's layer: a 1x1 projection to K code logits, a hard
  Gumbel-softmax sample in training (and at evaluation with ``eval_sampling``);
* ``straight-through`` -- the same projection, but the code is the argmax of the
  logits in the forward pass (no noise); the gradient flows through the softmax;
* ``ema`` -- nearest-neighbour VQ with EMA codebook updates, k-means
  initialisation and dead-code revival: vector-quantize-pytorch's ``VectorQuantize``.

Module names decide what travels: ``encoder.*`` stays on the client unless the
encoder schedule shares it (``fedvq.encoder``); the codebook, the code projection,
``decoder.*`` and ``classifier.*`` are shared; the EMA quantizer's running
statistics (``cluster_size``, ``embed_avg``, ``initted``) stay on the client.
The encoder is the project's trunk (small CNN on CPU, ResNet-18 as in the seed)
plus, when its channel count differs from ``embedding_dim``, a 1x1 convolution
to that width (part of the encoder).
"""

from __future__ import annotations

import math
import sys
import threading
from typing import Any, NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from fedvq_app.config import ModelSettings
from fedvq_app.models import build_trunk

ENCODER_PREFIX = "encoder."
#: the codebook of the gumbel and straight-through quantizers, (K, D)
CODEBOOK_KEY = "vq.embeddings"
#: the codebook of the ema quantizer (vector-quantize-pytorch's buffer), (1, K, D)
EMA_CODEBOOK_KEY = "vq.quantizer._codebook.embed"
#: the ema quantizer's client-side running statistics: never sent
EMA_PRIVATE_SUFFIXES = ("_codebook.cluster_size", "_codebook.embed_avg", "_codebook.initted")


def codebook_key(quantizer: str) -> str:
    """Name of the codebook array in the model's state dict."""
    return EMA_CODEBOOK_KEY if quantizer == "ema" else CODEBOOK_KEY


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
        self,
        num_embeddings: int,
        embedding_dim: int,
        temperature: float = 1.0,
        proj_gain: float = 1.0,
        eval_sampling: bool = False,
        straight_through: bool = False,
    ) -> None:
        super().__init__()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.num_codes = num_embeddings
        self.code_dim = embedding_dim
        self.temperature = temperature
        self.eval_sampling = eval_sampling
        self.straight_through = straight_through
        self.embeddings = nn.Parameter(torch.randn(num_embeddings, embedding_dim))
        self.proj = nn.Conv2d(embedding_dim, num_embeddings, kernel_size=1)
        with torch.no_grad():
            self.proj.weight.mul_(proj_gain)

    def code_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D, H, W) features -> (N*H*W, K) logits."""
        return self.proj(x).permute(0, 2, 3, 1).reshape(-1, self.num_embeddings)

    @torch.no_grad()
    def assign(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D, H, W) features -> (N*H*W,) most likely code of every position."""
        return self.code_logits(x).argmax(1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        n, c, h, w = x.shape
        logits = self.code_logits(x)
        hard = F.one_hot(logits.argmax(1), self.num_embeddings).to(logits.dtype)
        if self.straight_through:
            # deterministic choice, gradient of the softmax (the straight-through estimator)
            soft = F.softmax(logits / self.temperature, dim=1)
            one_hot = hard + soft - soft.detach() if self.training else hard
        elif self.training or self.eval_sampling:
            one_hot = F.gumbel_softmax(logits, tau=self.temperature, hard=True)
        else:
            one_hot = hard
        quantized = (one_hot @ self.embeddings).view(n, h, w, c).permute(0, 3, 1, 2)
        mean_use = one_hot.mean(0)
        perplexity = torch.exp(-(mean_use * torch.log(mean_use + 1e-10)).sum())
        commitment = F.mse_loss(quantized.detach(), x)
        return quantized, commitment, perplexity, one_hot.argmax(1).view(n, h, w)


#: one import of vector-quantize-pytorch at a time (simulated clients build models in threads)
_VQ_IMPORT = threading.Lock()


def _not_compiled(fn):
    """``torch.compiler.allow_in_graph`` while vector-quantize-pytorch is imported: leaves ``fn`` as it is."""
    return fn


def vector_quantize_class() -> Any:
    """vector-quantize-pytorch's ``VectorQuantize``, imported without importing ``torch._dynamo``.

    The library imports einx, whose PyTorch backend registers every einx op with
    ``torch.compiler.allow_in_graph`` as soon as it is imported next to torch; that call
    imports ``torch._dynamo`` (1.7-2.3 s here). A deployed site starts a process for
    every message, so it paid that on every FedVQ message. Nothing in this project is
    compiled (the optimizers skip dynamo for the same reason, see training/optim.py), so
    the registration is skipped: during the import ``allow_in_graph`` returns the op
    unchanged, and it is restored right after. The quantizer is the library's own code;
    ``tests/test_lean_vq_import.py`` checks its outputs are bit-identical to those of a
    plain import and that ``torch._dynamo`` stays unimported.
    """
    if "vector_quantize_pytorch" not in sys.modules:
        with _VQ_IMPORT:
            if "vector_quantize_pytorch" not in sys.modules:
                registered = torch.compiler.allow_in_graph
                torch.compiler.allow_in_graph = _not_compiled
                try:
                    import vector_quantize_pytorch  # noqa: F401, PLC0415 (only on this path; see the docstring)
                finally:
                    torch.compiler.allow_in_graph = registered
    from vector_quantize_pytorch import VectorQuantize  # noqa: PLC0415 (imported above)

    return VectorQuantize


class EMAVQ(nn.Module):
    """Nearest-neighbour VQ with an EMA codebook: vector-quantize-pytorch's ``VectorQuantize``.

    The library does the quantization, the EMA updates, the k-means initialisation on
    the first training batch and the replacement of codes whose EMA cluster size fell
    below ``dead_code_threshold``. What a federation needs on top of it:

    * :meth:`adopt_global` -- after the server's codebook was loaded, mark the codebook
      initialised (no local k-means over it), rescale ``embed_avg`` so that the next EMA
      step continues from the global codes instead of jumping back to the local ones, and
      switch the library's local dead-code replacement off: a code this client does not
      use may be used by others; dead codes federation-wide are revived on the server.
    * :meth:`statistics` -- per-code count, sum and sum of squared norms of the feature
      vectors assigned to each code (the sufficient statistics of a Lloyd step).

    The gradient reaches the encoder by the straight-through estimator (``rotation_trick``
    False, VQ-VAE's): d loss / d z = d loss / d q. The library's default, the rotation trick
    (Fifty et al. 2024), rotates that gradient and rescales it by ``||q|| / ||z||`` per chunk,
    which has no bound when a chunk of the encoder's post-ReLU output is near zero: on digits
    under plain SGD (lr 0.05, momentum 0.9) ratios reached 5e4-1e5, the encoder's gradient norm
    110-210 (straight-through: 7) and local training diverged (docs/fedvq.md, third pass).
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        decay: float,
        dead_code_threshold: float,
        heads: int = 1,
        rotation_trick: bool = False,
    ) -> None:
        VectorQuantize = vector_quantize_class()  # noqa: N806 (the library's class)

        super().__init__()
        if embedding_dim % heads:
            raise ValueError(f"embedding_dim {embedding_dim} is not divisible by heads {heads}")
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.heads = heads
        #: the library splits every feature vector into ``heads`` chunks of this width (no projection)
        self.code_dim = embedding_dim // heads
        #: codes counted over all heads: code ``j`` of head ``h`` is index ``h * K + j``
        self.num_codes = heads * num_embeddings
        self.quantizer = VectorQuantize(
            dim=embedding_dim,
            codebook_size=num_embeddings,
            codebook_dim=self.code_dim,
            heads=heads,
            separate_codebook_per_head=heads > 1,
            decay=decay,
            kmeans_init=True,
            threshold_ema_dead_code=dead_code_threshold,
            accept_image_fmap=True,
            channel_last=False,
            commitment_weight=1.0,
            # the library's default is the rotation trick (dim > 1); off: the plain straight-through estimator
            rotation_trick=rotation_trick,
        )

    @property
    def codebook(self) -> torch.Tensor:
        """(heads * K, D / heads) current codes, head by head."""
        return self.quantizer._codebook.embed.reshape(self.num_codes, self.code_dim)

    @torch.no_grad()
    def adopt_global(self) -> None:
        book = self.quantizer._codebook
        book.initted.fill_(True)
        if float(book.cluster_size.sum()) <= 0:  # a client that never trained: uniform counts
            book.cluster_size.fill_(1.0)
        size = book.cluster_size
        smoothed = (size + book.eps) / (size.sum(-1, keepdim=True) + self.num_embeddings * book.eps)
        book.embed_avg.copy_(book.embed * (smoothed * size.sum(-1, keepdim=True)).unsqueeze(-1))
        book.threshold_ema_dead_code = 0
        book.has_dead_code_replacement = False

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D, H, W) features -> (N*H*W, heads, D / heads): the chunks the library quantizes."""
        return x.permute(0, 2, 3, 1).reshape(-1, self.heads, self.code_dim)

    @torch.no_grad()
    def assign(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D, H, W) features -> (N*H*W*heads,) index ``h * K + j`` of every chunk's nearest code."""
        chunks = self._split(x)
        books = self.quantizer._codebook.embed.expand(self.heads, -1, -1)
        nearest = torch.stack([torch.cdist(chunks[:, h], books[h]).argmin(1) for h in range(self.heads)], 1)
        offsets = torch.arange(self.heads, device=x.device) * self.num_embeddings
        return (nearest + offsets).reshape(-1)

    @torch.no_grad()
    def statistics(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-code counts (heads*K,), sums (heads*K, D/heads) and sums of squared norms of ``x``'s chunks."""
        flat = self._split(x).reshape(-1, self.code_dim).double()
        codes = self.assign(x)
        counts = torch.bincount(codes, minlength=self.num_codes)
        sums = torch.zeros(self.num_codes, self.code_dim, dtype=torch.float64, device=x.device)
        sums.index_add_(0, codes, flat)
        squares = torch.zeros(self.num_codes, dtype=torch.float64, device=x.device)
        squares.index_add_(0, codes, flat.square().sum(1))
        return counts, sums, squares

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        quantized, codes, commitment = self.quantizer(x)
        if self.heads > 1:  # (N, H, W, heads) -> one index h * K + j per chunk
            codes = codes + torch.arange(self.heads, device=x.device) * self.num_embeddings
        picked = torch.bincount(codes.flatten(), minlength=self.num_codes).to(x.dtype)
        mean_use = picked / picked.sum()
        perplexity = torch.exp(-(mean_use * torch.log(mean_use + 1e-10)).sum())
        return quantized, commitment.sum(), perplexity, codes


#: channels per group of the decoder's GroupNorm (fewer groups when the width is not a multiple)
GROUP_NORM_GROUPS = 8


def _norm(dim: int, kind: str) -> nn.Module:
    if kind == "group":
        return nn.GroupNorm(math.gcd(dim, GROUP_NORM_GROUPS), dim)
    return nn.BatchNorm2d(dim)


def _conv_block(dim: int, norm: str = "batch") -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1), _norm(dim, norm), nn.ReLU(inplace=True))


class ResidualDecoder(nn.Module):
    """Two conv blocks with the seed's wiring: x1 = b1(q); x2 = b2(x1 + q); out = x2 + x1.

    ``norm``: ``batch`` (the seed's BatchNorm) or ``group`` (GroupNorm: no running
    statistics, so the averaged decoder normalises with what it computes on each batch
    instead of the average of the clients' running means and variances).
    """

    def __init__(self, dim: int, norm: str = "batch") -> None:
        super().__init__()
        self.block1 = _conv_block(dim, norm)
        self.block2 = _conv_block(dim, norm)

    def forward(self, quantized: torch.Tensor) -> torch.Tensor:
        x1 = self.block1(quantized)
        x2 = self.block2(x1 + quantized)
        return x2 + x1


#: hidden width of the flatten head (the plain CNN's dense layer)
FLATTEN_HIDDEN = 128


class VQClassifier(nn.Module):
    """encoder -> VQ -> decoder -> head: global average pooling + linear (``pool``, the seed), or
    flatten + dense + ReLU + linear (``flatten``: the plain CNN's head, which keeps the spatial layout).

    The ``flatten`` head divides the decoded map by sqrt(H * W) before flattening it. The decoder
    ends in BatchNorm + ReLU, so every one of the map's ``D * H * W`` inputs is of unit scale, and a
    plain SGD step moves the dense layer's output in proportion to the squared norm of its input:
    unscaled, a 7x7x64 Fashion-MNIST map has ~49x the squared norm of the pooled 64-vector and
    training diverged at lr 0.05 (accuracy 0.10, docs/fedvq.md); scaled, the flattened input has
    the squared norm of a pooled one while keeping the spatial layout.
    """

    def __init__(
        self,
        encoder: nn.Module,
        vq: GumbelVQ | EMAVQ,
        num_classes: int,
        head: str = "pool",
        spatial: tuple[int, int] = (1, 1),
        decoder_norm: str = "batch",
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.vq = vq
        self.head = head
        self.decoder = ResidualDecoder(vq.embedding_dim, decoder_norm)
        if head == "flatten":
            self.classifier = nn.Sequential(
                nn.Flatten(),
                nn.Linear(vq.embedding_dim * spatial[0] * spatial[1], FLATTEN_HIDDEN),
                nn.ReLU(inplace=True),
                nn.Linear(FLATTEN_HIDDEN, num_classes),
            )
        else:
            self.classifier = nn.Linear(vq.embedding_dim, num_classes)

    def forward(self, x: torch.Tensor) -> VQOutput:
        features = self.encoder(x)
        quantized, commitment, perplexity, codes = self.vq(features)
        decoded = self.decoder(quantized)
        if self.head == "flatten":  # the classifier flattens; scaled as the class docstring says
            head_input = decoded / math.sqrt(decoded.shape[-2] * decoded.shape[-1])
        else:
            head_input = torch.flatten(F.adaptive_avg_pool2d(decoded, 1), 1)
        logits = self.classifier(head_input)
        return VQOutput(logits, commitment, decoded, features, perplexity, codes)


class VQOptions(Protocol):
    """The options the VQ classifier is built from (``FedVQOptions`` of ``methods/fedvq.py`` has them)."""

    num_embeddings: int
    embedding_dim: int
    temperature: float
    proj_init_gain: float
    quantizer: str
    eval_sampling: bool
    ema_decay: float
    dead_code_threshold: float
    heads: int
    head: str
    decoder_norm: str
    rotation_trick: bool


def build_vq_classifier(
    model: ModelSettings, in_channels: int, num_classes: int, opts: VQOptions, size: int = 16
) -> VQClassifier:
    """The VQ classifier on the configured trunk with the chosen quantizer and head.

    ``opts.heads`` (ema only): the library's multi-head VQ, every feature vector split into
    ``heads`` chunks, each quantized with its own K-code codebook. ``size``: the input
    side, needed by the ``flatten`` head to size its dense layer. ``opts.rotation_trick`` (ema only):
    the library's rotation-trick gradient instead of the straight-through estimator.
    """
    num_embeddings, embedding_dim, heads, quantizer = (
        opts.num_embeddings,
        opts.embedding_dim,
        opts.heads,
        opts.quantizer,
    )
    trunk, channels = build_trunk(model, in_channels)
    encoder = trunk if channels == embedding_dim else nn.Sequential(trunk, nn.Conv2d(channels, embedding_dim, 1))
    if quantizer == "ema":
        vq: GumbelVQ | EMAVQ = EMAVQ(
            num_embeddings, embedding_dim, opts.ema_decay, opts.dead_code_threshold, heads, opts.rotation_trick
        )
    else:
        if heads != 1:
            raise ValueError(f"heads={heads}: multi-head VQ needs the ema quantizer")
        vq = GumbelVQ(
            num_embeddings,
            embedding_dim,
            opts.temperature,
            opts.proj_init_gain,
            opts.eval_sampling,
            straight_through=quantizer == "straight-through",
        )
    spatial = (1, 1)
    if opts.head == "flatten":
        was_training = encoder.training
        encoder.eval()
        with torch.no_grad():
            spatial = tuple(encoder(torch.zeros(1, in_channels, size, size)).shape[-2:])
        encoder.train(was_training)
    return VQClassifier(encoder, vq, num_classes, opts.head, spatial, opts.decoder_norm)


def is_encoder(name: str) -> bool:
    return name.startswith(ENCODER_PREFIX)


def is_shared(name: str) -> bool:
    """What travels with a private encoder: everything but the encoder and the EMA running statistics."""
    return not is_encoder(name) and not name.endswith(EMA_PRIVATE_SUFFIXES)


def encoder_travels(schedule: str, shared_rounds: int, server_round: int) -> tuple[bool, bool]:
    """(sent to the clients, sent back by them) for the encoder in ``server_round``.

    ``private``: never. ``shared``: always, averaged like the decoder. ``warmup``: shared
    in rounds 1..shared_rounds; the first private round still hands every client the
    averaged encoder it starts from, and from then on it never leaves a client.
    """
    if schedule == "shared":
        return True, True
    if schedule == "warmup":
        return server_round <= shared_rounds + 1, server_round <= shared_rounds
    return False, False
