"""FusedSpaceFed's client: encoder warm-up, then local training of autoencoder and classifier.

Each round, on the client:

1. the private encoder may first be re-aligned to the new global decoder
   (``fusedspace.warmup-epochs`` of reconstruction with decoder and classifier
   frozen), as the reference's ENCWARM variant does;
2. the local epochs of the common loop with the batch loss
   ``CE(C(x + t), y) + lambda_rec * ||D(E_i(x)) - x||^2 (+ L2-SP)``, ``t = D(E_i(x))``:
   with ``fusedspace.task-aware = true`` the classification gradient flows through
   ``t`` into the autoencoder; with ``false`` ``t`` is detached, so the autoencoder
   learns reconstruction only and the classifier learns on the fused input -- the
   reference's two per-batch steps (one backward pass: the detach keeps the two
   gradients apart).

The classifier uses ``train.optimizer`` at ``train.lr`` (as every baseline). The
autoencoder has its own optimizer (``fusedspace.ae-optimizer``: the reference's SGD
with momentum and weight decay, or Adam), stepped by a :class:`TrainHook`; with
``fusedspace.ae-keep-state`` its state (momentum buffers / Adam moments) is kept in
``context.state`` across rounds, like the reference's long-lived client objects.
Only decoder and classifier are sent; the encoder stays in ``context.state``.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from flwr.app import Message, MetricRecord
from torch import nn

from fedvq_app.clients.base import CarriedEvaluation, NeuralClient, seed_everything
from fedvq_app.data.client_data import eval_loader, normalize_batch, train_loader
from fedvq_app.models.fusedspace import PRIVATE_PREFIX, FusedSpaceNet
from fedvq_app.options import FusedSpaceOptions
from fedvq_app.protocol import FUSEDSPACE_OPTIMIZER_STATE, FUSEDSPACE_STATS_RECORD, METRICS
from fedvq_app.records import to_numpy, to_record
from fedvq_app.training import optim
from fedvq_app.training.loop import TrainHook, TrainResult, make_optimizer, train_epochs

WARMUP_STREAM = 3  # seeds the warm-up shuffles apart from the local epochs'
AUTOENCODER_PREFIXES = (PRIVATE_PREFIX, "decoder.")


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


def autoencoder_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) of encoder and decoder, in model order."""
    return [(n, p) for n, p in model.named_parameters() if n.startswith(AUTOENCODER_PREFIXES)]


def optimizer_state_arrays(optimizer: torch.optim.Optimizer, names: list[str]) -> dict:
    """Per-parameter optimizer state as numpy arrays keyed ``<parameter name>/<state key>``."""
    state = optimizer.state_dict()["state"]
    return {
        f"{names[index]}/{key}": value.detach().cpu().numpy()
        for index, entries in state.items()
        for key, value in entries.items()
        if torch.is_tensor(value)
    }


def load_optimizer_state(optimizer: torch.optim.Optimizer, names: list[str], arrays: dict) -> None:
    """Inverse of :func:`optimizer_state_arrays` (torch casts devices and dtypes)."""
    position = {n: i for i, n in enumerate(names)}
    state: dict[int, dict] = {}
    for key, value in arrays.items():
        name, _, entry = key.rpartition("/")
        if name not in position:
            raise KeyError(f"saved optimizer state names a parameter the model lacks: {name}")
        state.setdefault(position[name], {})[entry] = torch.from_numpy(value.copy())
    optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})


class FusedSpaceClient(NeuralClient):
    """Private encoder, shared decoder and classifier on the fused input."""

    def __init__(self, settings, context) -> None:
        super().__init__(settings, context)
        self.options = settings.options(FusedSpaceOptions)
        self.reconstruction_sum = 0.0
        self.reconstruction_batches = 0
        self.warmup_loss = 0.0
        self.ae_optimizer: torch.optim.Optimizer | None = None
        self._initial_encoder: dict[str, torch.Tensor] | None = None

    # ------------------------------------------------------------------ losses
    def l2sp_penalty(self, model: FusedSpaceNet) -> torch.Tensor | float:
        """``fusedspace.l2sp`` x sum ||w - w_0||^2 over the encoder (w_0: its seeded initial weights)."""
        if self.options.l2sp == 0:
            return 0.0
        if self._initial_encoder is None:
            self._initial_encoder = {n: p.detach().clone() for n, p in self.build_model().encoder.named_parameters()}
        total = sum(
            (p - self._initial_encoder[n].to(p.device)).pow(2).sum() for n, p in model.encoder.named_parameters()
        )
        return self.options.l2sp * total

    def batch_loss(self, model: FusedSpaceNet, x: torch.Tensor, y: torch.Tensor):
        """CE of the fused input + lambda_rec x reconstruction (+ L2-SP); task-aware or detached."""
        reconstruction = model.reconstruct(x)
        fused = x + (reconstruction if self.options.task_aware else reconstruction.detach())
        logits = model.classifier(fused)
        rec = F.mse_loss(reconstruction, x)
        self.reconstruction_sum += float(rec.detach())
        self.reconstruction_batches += 1
        return F.cross_entropy(logits, y) + self.options.lambda_rec * rec + self.l2sp_penalty(model), logits

    def reconstruction_loss(self, model: FusedSpaceNet, x: torch.Tensor, y: torch.Tensor):
        """Warm-up loss ||D(E_i(x)) - x||^2 (+ L2-SP); logits only for the loop's accuracy."""
        reconstruction = model.reconstruct(x)
        with torch.no_grad():
            logits = model.classifier(x + reconstruction)
        return F.mse_loss(reconstruction, x) + self.l2sp_penalty(model), logits

    # ------------------------------------------------------------------ optimizers
    def make_ae_optimizer(self, model: FusedSpaceNet) -> torch.optim.Optimizer:
        """The autoencoder's optimizer, with last round's state when ``fusedspace.ae-keep-state``."""
        opts = self.options
        named = autoencoder_parameters(model)
        params = [p for _, p in named]
        if opts.ae_optimizer == "sgd":
            optimizer = optim.SGD(params, lr=opts.ae_lr, momentum=opts.ae_momentum, weight_decay=opts.ae_weight_decay)
        else:
            optimizer = optim.Adam(params, lr=opts.ae_lr, weight_decay=opts.ae_weight_decay)
        if opts.ae_keep_state and FUSEDSPACE_OPTIMIZER_STATE in self.context.state:
            saved = to_numpy(self.context.state[FUSEDSPACE_OPTIMIZER_STATE])
            load_optimizer_state(optimizer, [n for n, _ in named], saved)
        return optimizer

    def save_ae_optimizer(self, model: FusedSpaceNet) -> None:
        if self.ae_optimizer is None or not self.options.ae_keep_state:
            return
        names = [n for n, _ in autoencoder_parameters(model)]
        self.context.state[FUSEDSPACE_OPTIMIZER_STATE] = to_record(optimizer_state_arrays(self.ae_optimizer, names))

    def trainable_parameters(self, model: FusedSpaceNet):
        """The loop's optimizer: the classifier, or everything when the autoencoder has no own one."""
        return model.classifier.parameters() if self.options.ae_lr > 0 else model.parameters()

    def train_hooks(self, model: FusedSpaceNet, msg: Message) -> list[TrainHook]:
        """The autoencoder's optimizer, stepped together with the loop's optimizer."""
        if self.options.ae_lr == 0:
            self.ae_optimizer = None
            return []
        self.ae_optimizer = self.make_ae_optimizer(model)
        return [AutoencoderStep(self.ae_optimizer)]

    # ------------------------------------------------------------------ training
    def encoder_warmup(self, model: FusedSpaceNet, msg: Message) -> float:
        """Train E_i alone to reconstruct through the frozen global decoder; mean loss."""
        if self.options.warmup_epochs == 0:
            return 0.0
        config = msg.content["config"]
        lr = float(config.get("lr", self.settings.train.lr))
        generator = seed_everything(self.settings.seed, int(config["server-round"]), self.partition_id, WARMUP_STREAM)
        loader = train_loader(self.data, self.settings, generator)
        with only_trainable(model, model.encoder):
            # the autoencoder's own optimizer (decoder frozen: no gradient, no step), as the reference
            optimizer = self.ae_optimizer or make_optimizer(model.encoder.parameters(), self.settings.train, lr)
            result = train_epochs(
                model, loader, optimizer, self.options.warmup_epochs, self.device, self.reconstruction_loss
            )
        model.zero_grad(set_to_none=True)  # no warm-up gradient leaks into the first joint step
        return result.loss

    def local_train(self, model: FusedSpaceNet, msg: Message, hooks: list[TrainHook]) -> TrainResult:
        """Encoder warm-up, then the local epochs of the common loop; the optimizer state is kept."""
        self.warmup_loss = self.encoder_warmup(model, msg)
        self.reconstruction_sum, self.reconstruction_batches = 0.0, 0
        result = super().local_train(model, msg, hooks)
        self.save_ae_optimizer(model)
        return result

    def reply_extras(self, model: nn.Module, msg: Message, hooks: list[TrainHook]) -> dict:
        """Reconstruction statistics (scalars only) next to the shared arrays."""
        stats = {
            "warmup-loss": self.warmup_loss,
            "reconstruction-loss": self.reconstruction_sum / max(self.reconstruction_batches, 1),
        }
        return {FUSEDSPACE_STATS_RECORD: MetricRecord(stats)}

    # ------------------------------------------------------------------ evaluation
    def evaluation_records(self, msg: Message | CarriedEvaluation) -> dict:
        """The common scores, plus the autoencoder's reconstruction MSE on the global test images of the
        classes this client trained on (``test-reconstruction-seen``) and of those it never saw
        (``test-reconstruction-unseen``): how far ``D(E_i(x))`` strays where the private encoder has no data."""
        records = super().evaluation_records(msg)
        model = self.load_model(msg)
        model.eval()
        errors = []
        with torch.no_grad():
            for x, _ in eval_loader(self.data.test_x, self.data.test_y):
                x = normalize_batch(x.to(self.device))
                errors.append((model.reconstruct(x) - x).pow(2).flatten(1).mean(1).cpu())
        per_image = torch.cat(errors) if errors else torch.empty(0)
        seen = torch.as_tensor(self.data.label_counts())[self.data.test_y] > 0
        metrics = records[METRICS]
        for name, rows in (("seen", seen), ("unseen", ~seen)):
            if rows.any():
                metrics[f"test-reconstruction-{name}"] = float(per_image[rows].mean())
        return records

    def gradient_parameters(self, model: FusedSpaceNet) -> dict[str, nn.Parameter]:
        """Gamma over the classifier (comparable with the baselines) or every shared parameter."""
        shared = super().gradient_parameters(model)
        if self.options.gamma_scope == "classifier":
            return {n: p for n, p in shared.items() if n.startswith("classifier.")}
        return shared
