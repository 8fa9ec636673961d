"""FusedSpaceFed's client: encoder warm-up, then joint task-aware training.

Each round the private encoder is first re-aligned to the new global decoder
(``fusedspace.warmup-epochs`` of reconstruction with decoder and classifier
frozen), then encoder, decoder and classifier train together on
``CE(C(x + D(E_i(x))), y) + lambda_rec * ||D(E_i(x)) - x||^2``: the classification
gradient flows through the reconstruction into the autoencoder. As in the seed,
the autoencoder has its own Adam optimizer (``fusedspace.ae-lr``; 0 = the
classifier's optimizer for everything). Only decoder and classifier are sent;
the encoder stays in ``context.state``.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from flwr.app import Message, MetricRecord
from torch import nn

from fedvq_app.clients.base import NeuralClient, seed_everything
from fedvq_app.data.client_data import train_loader
from fedvq_app.models.fusedspace import FusedSpaceNet
from fedvq_app.strategies.fusedspace import STATS_RECORD
from fedvq_app.training.loop import TrainHook, TrainResult, make_optimizer, train_epochs

WARMUP_STREAM = 3  # seeds the warm-up shuffles apart from the joint epochs'


class AutoencoderStep(TrainHook):
    """Steps the autoencoder's own optimizer after each step of the classifier's."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer

    def after_step(self, model: nn.Module) -> None:
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


@contextmanager
def only_trainable(model: nn.Module, module: nn.Module):
    """Freeze every parameter of ``model`` outside ``module`` for the duration."""
    keep = {id(p) for p in module.parameters()}
    previous = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    try:
        yield
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(previous[n])


def reconstruction_loss(model: FusedSpaceNet, x: torch.Tensor, y: torch.Tensor):
    """Warm-up loss ||D(E_i(x)) - x||^2 (mean); logits only for the loop's accuracy."""
    reconstruction = model.reconstruct(x)
    with torch.no_grad():
        logits = model.classifier(x + reconstruction)
    return F.mse_loss(reconstruction, x), logits


class FusedSpaceClient(NeuralClient):
    """Private encoder, shared decoder and classifier on the fused input."""

    def __init__(self, settings, context) -> None:
        super().__init__(settings, context)
        self.options = settings.method_options
        self.reconstruction_sum = 0.0
        self.reconstruction_batches = 0
        self.warmup_loss = 0.0

    def batch_loss(self, model: FusedSpaceNet, x: torch.Tensor, y: torch.Tensor):
        """Classification of the fused input + lambda_rec x reconstruction (task-aware)."""
        logits, reconstruction = model.fused_logits(x)
        rec = F.mse_loss(reconstruction, x)
        self.reconstruction_sum += float(rec.detach())
        self.reconstruction_batches += 1
        return F.cross_entropy(logits, y) + self.options.lambda_rec * rec, logits

    def encoder_warmup(self, model: FusedSpaceNet, msg: Message) -> float:
        """Train E_i alone to reconstruct through the frozen global decoder; mean loss."""
        if self.options.warmup_epochs == 0:
            return 0.0
        config = msg.content["config"]
        lr = float(config.get("lr", self.settings.train.lr))
        generator = seed_everything(self.settings.seed, int(config["server-round"]), self.partition_id, WARMUP_STREAM)
        loader = train_loader(self.data, self.settings, generator)
        with only_trainable(model, model.encoder):
            optimizer = self.autoencoder_optimizer(model.encoder.parameters(), lr)
            result = train_epochs(
                model, loader, optimizer, self.options.warmup_epochs, self.device, reconstruction_loss
            )
        model.zero_grad(set_to_none=True)  # no warm-up gradient leaks into the first joint step
        return result.loss

    def autoencoder_optimizer(self, params, lr: float):
        """Adam at ``fusedspace.ae-lr``, or the configured optimizer at ``lr`` when it is 0."""
        if self.options.ae_lr > 0:
            return torch.optim.Adam(params, lr=self.options.ae_lr)
        return make_optimizer(params, self.settings.train, lr)

    def trainable_parameters(self, model: FusedSpaceNet):
        """The loop's optimizer: the classifier, or everything when the autoencoder has no own one."""
        return model.classifier.parameters() if self.options.ae_lr > 0 else model.parameters()

    def train_hooks(self, model: FusedSpaceNet, msg: Message) -> list[TrainHook]:
        """The autoencoder's Adam, stepped together with the loop's optimizer."""
        if self.options.ae_lr == 0:
            return []
        params = [*model.encoder.parameters(), *model.decoder.parameters()]
        return [AutoencoderStep(torch.optim.Adam(params, lr=self.options.ae_lr))]

    def local_train(self, model: FusedSpaceNet, msg: Message, hooks: list[TrainHook]) -> TrainResult:
        """Encoder warm-up, then the joint epochs of the common loop."""
        self.warmup_loss = self.encoder_warmup(model, msg)
        self.reconstruction_sum, self.reconstruction_batches = 0.0, 0
        return super().local_train(model, msg, hooks)

    def reply_extras(self, model: nn.Module, msg: Message, hooks: list[TrainHook]) -> dict:
        """Reconstruction statistics (scalars only) next to the shared arrays."""
        stats = {
            "warmup-loss": self.warmup_loss,
            "reconstruction-loss": self.reconstruction_sum / max(self.reconstruction_batches, 1),
        }
        return {STATS_RECORD: MetricRecord(stats)}

    def gradient_parameters(self, model: FusedSpaceNet) -> dict[str, nn.Parameter]:
        """Gamma over the classifier (comparable with the baselines) or every shared parameter."""
        shared = super().gradient_parameters(model)
        if self.options.gamma_scope == "classifier":
            return {n: p for n, p in shared.items() if n.startswith("classifier.")}
        return shared
