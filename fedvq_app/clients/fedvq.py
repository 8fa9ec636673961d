"""FedVQ's client: the VQ loss, best-on-validation epochs, a best checkpoint, code usage.

The encoder stays in ``context.state``; it goes into a reply only in the rounds the
client's own configuration shares it (``fedvq.encoder`` = shared, or warmup up to
``fedvq.shared-encoder-rounds``), whatever the server sends. The reply carries the
shared arrays (codebook -- not with ``lloyd`` --, projection, decoder, classifier),
the usual metrics plus the codebook statistics, and record ``fedvq-usage`` with the
code counts of the client's training data, the mask of codes used above the
frequency threshold and, with ``lloyd``, the per-code sums and sums of squared norms
of the assigned feature vectors, every code fewer than ``codebook.privacy-threshold``
vectors chose withheld.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from flwr.app import ArrayRecord, Message, MetricRecord
from torch import nn

from fedvq_app.aggregation.codebook import perplexity, used_codes
from fedvq_app.aggregation.codebook_lloyd import LLOYD, local_statistics
from fedvq_app.clients.base import NeuralClient, seed_everything
from fedvq_app.config import Settings, resolve_log_root
from fedvq_app.data.client_data import eval_loader, normalize_batch, train_loader
from fedvq_app.models.state import LOCAL_ONLY_SUFFIXES, private_arrays, shared_arrays
from fedvq_app.models.vq import codebook_key, encoder_travels, is_encoder
from fedvq_app.options import FedVQOptions
from fedvq_app.protocol import FEDVQ_BEST_STATE, FEDVQ_READY_KEY, FEDVQ_USAGE_RECORD, PRIVATE_STATE
from fedvq_app.records import to_record
from fedvq_app.training.loop import TrainHook, TrainResult, evaluate, make_optimizer, train_epochs

#: 0-d buffers that cannot round-trip through an ArrayRecord; rebuilt on every load
UNSTORED_SUFFIXES = (*LOCAL_ONLY_SUFFIXES, "_codebook.initted")
CHECKPOINT_FOLDER = "client_checkpoints"


@dataclass
class BestEpoch:
    """The epoch of this round whose model scored best on the local validation split."""

    epoch: int
    val_accuracy: float | None  # None when the client has no validation split
    state: dict[str, torch.Tensor]


def merge_epochs(results: list[TrainResult]) -> TrainResult:
    """One TrainResult for several single-epoch runs (example-weighted means)."""
    seen = sum(r.num_examples for r in results)
    if seen == 0:
        return TrainResult(0.0, 0.0, sum(r.steps for r in results), 0)
    return TrainResult(
        loss=sum(r.loss * r.num_examples for r in results) / seen,
        accuracy=sum(r.accuracy * r.num_examples for r in results) / seen,
        steps=sum(r.steps for r in results),
        num_examples=seen,
    )


class ClipGradients(TrainHook):
    """Clip the gradients' global norm before every optimizer step (``torch.nn.utils.clip_grad_norm_``)."""

    def __init__(self, max_norm: float) -> None:
        self.max_norm = max_norm

    def before_step(self, model: nn.Module) -> None:
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], self.max_norm)


class FedVQClient(NeuralClient):
    """The neural client with the seed's VQ loss and its per-round bookkeeping."""

    def __init__(self, settings: Settings, context) -> None:
        super().__init__(settings, context)
        self.options = settings.options(FedVQOptions)
        self._perplexity_sum = 0.0
        self._perplexity_n = 0
        self.best: BestEpoch | None = None
        self.checkpoint_saved = False

    def save_private(self, model: nn.Module) -> None:
        """The encoder's tensors, without BatchNorm step counters.

        Flower's ``Array`` stores a 0-d tensor as shape (1,), which
        ``models.state.load_arrays`` cannot copy back into the 0-d counter; the
        counters are unused here (BatchNorm runs with a fixed momentum).
        """
        private = private_arrays(model, self.spec.is_shared)
        self.context.state[PRIVATE_STATE] = ArrayRecord(
            {k: v for k, v in private.items() if not k.endswith(UNSTORED_SUFFIXES)}
        )

    # ------------------------------------------------------------------ what travels
    def load_model(self, msg: Message) -> nn.Module:
        """The common load; the ema quantizer then adopts the global codebook once one exists."""
        model = super().load_model(msg)
        config = msg.content.config_records.get("config")
        ready = config is None or int(config.get(FEDVQ_READY_KEY, 1)) == 1
        if self.options.quantizer == "ema" and ready:
            model.vq.adopt_global()
        return model

    def encoder_up(self, msg: Message) -> bool:
        """Whether this round's reply carries the encoder: the client's own schedule decides."""
        server_round = int(msg.content["config"]["server-round"])
        return encoder_travels(self.options.encoder, self.options.shared_encoder_rounds, server_round)[1]

    def reply_arrays(self, model: nn.Module, msg: Message) -> ArrayRecord:
        """Shared arrays; the encoder only in shared rounds; no codebook with lloyd (statistics instead)."""
        up = self.encoder_up(msg)
        book = codebook_key(self.options.quantizer)
        lloyd = self.options.aggregation == LLOYD

        def travels(name: str) -> bool:
            if is_encoder(name):
                return up and not name.endswith(UNSTORED_SUFFIXES)
            return self.spec.is_shared(name) and not (lloyd and name == book)

        return shared_arrays(model, travels)

    # ------------------------------------------------------------------ loss
    def batch_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
        """CE + vq-weight x commitment + recon-weight x ||decoded - features||^2 (seed 000)."""
        out = model(x)
        recon = F.mse_loss(out.decoded, out.features.detach())
        loss = F.cross_entropy(out.logits, y) + self.options.vq_weight * out.commitment
        loss = loss + self.options.recon_weight * recon
        self._perplexity_sum += float(out.perplexity.detach()) * len(y)
        self._perplexity_n += len(y)
        return loss, out.logits

    def forward(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return model(x).logits

    # ------------------------------------------------------------------ training
    def train_hooks(self, model: nn.Module, msg: Message) -> list[TrainHook]:
        """The common hooks plus gradient-norm clipping when ``fedvq.grad-clip`` > 0."""
        hooks = list(super().train_hooks(model, msg))
        if self.options.grad_clip > 0:
            hooks.append(ClipGradients(self.options.grad_clip))
        return hooks

    def _val_accuracy(self, model: nn.Module) -> float | None:
        if self.data.val_y.numel() == 0:
            return None
        loader = eval_loader(self.data.val_x, self.data.val_y)
        return evaluate(model, loader, self.device, self.data.num_classes, self.forward).accuracy

    def local_train(self, model: nn.Module, msg: Message, hooks: list[TrainHook]) -> TrainResult:
        """Epoch by epoch through the common loop, keeping the best-on-validation state (seed)."""
        config = msg.content["config"]
        lr = float(config.get("lr", self.settings.train.lr))
        generator = seed_everything(self.settings.seed, int(config["server-round"]), self.partition_id)
        loader = train_loader(self.data, self.settings, generator)
        optimizer = make_optimizer(self.trainable_parameters(model), self.settings.train, lr)
        results = []
        for epoch in range(1, self.settings.train.local_epochs + 1):
            results.append(train_epochs(model, loader, optimizer, 1, self.device, self.batch_loss, hooks))
            score = self._val_accuracy(model)
            improved = self.best is None or score is None or score > self.best.val_accuracy
            if improved or not self.options.best_val:
                self.best = BestEpoch(epoch, score, copy.deepcopy(model.state_dict()))
        if self.best is not None:
            model.load_state_dict(self.best.state)
        return merge_epochs(results)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def recalibrate_batch_norm(self, model: nn.Module) -> int:
        """Re-estimate every BatchNorm layer's running mean and variance for ``model`` on this
        client's training images (one pass, cumulative average); returns the number of layers.

        The averaged running statistics the server sends are the mean of each client's
        statistics of its *local* model along its local training, which do not match the
        averaged weights; evaluation with them is far below what the same weights reach
        with statistics measured for them. Only the BatchNorm layers run in training mode
        here: the EMA codebook is not touched, and no parameter changes.
        """
        layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not layers or self.data.num_train == 0:
            return 0
        model.eval()
        momenta = [m.momentum for m in layers]
        for layer in layers:
            layer.reset_running_stats()
            layer.momentum = None  # cumulative average over the batches
            layer.train()
        for x, _ in eval_loader(self.data.train_x, self.data.train_y):
            model(normalize_batch(x.to(self.device)))
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
        model.eval()
        return len(layers)

    def evaluate_splits(self, model: nn.Module):
        """The common scores; with ``fedvq.recalibrate-bn`` after re-estimating BatchNorm statistics locally."""
        if self.options.recalibrate_bn:
            self.recalibrate_batch_norm(model)
        return super().evaluate_splits(model)

    # ------------------------------------------------------------------ checkpoint
    def checkpoint_path(self, msg: Message) -> Path:
        """``fedvq.checkpoint-dir`` or ``<log-dir>/<experiment>/client_checkpoints``."""
        if self.options.checkpoint_dir:
            folder = Path(self.options.checkpoint_dir).expanduser()
        else:
            experiment = str(msg.content["config"].get("experiment", "")) or self.settings.experiment_name or "fedvq"
            folder = resolve_log_root(self.settings.log_dir) / experiment / CHECKPOINT_FOLDER
        return folder / f"client_{self.partition_id}_best.pt"

    def save_best_checkpoint(self, msg: Message) -> bool:
        """Write this round's best state when it beats every earlier round's (atomic replace)."""
        best = self.best
        if not self.options.save_checkpoints or best is None or best.val_accuracy is None:
            return False
        stored = self.context.state.get(FEDVQ_BEST_STATE)
        if stored is not None and float(stored["val-accuracy"]) >= best.val_accuracy:
            return False
        server_round = int(msg.content["config"]["server-round"])
        path = self.checkpoint_path(msg)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".tmp")
        payload = {
            "state_dict": best.state,
            "round": server_round,
            "epoch": best.epoch,
            "val_accuracy": best.val_accuracy,
            "partition_id": self.partition_id,
        }
        torch.save(payload, partial)
        os.replace(partial, path)
        self.context.state[FEDVQ_BEST_STATE] = MetricRecord({"val-accuracy": best.val_accuracy, "round": server_round})
        return True

    # ------------------------------------------------------------------ usage
    @torch.no_grad()
    def code_statistics(self, model: nn.Module) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Over the training images: how often each code is chosen (seed's tracking); with the ema
        quantizer also the per-code sums and sums of squared norms of the assigned feature vectors."""
        model.eval()
        num_codes = model.vq.num_codes
        counts = torch.zeros(num_codes, dtype=torch.int64)
        with_sums = self.options.quantizer == "ema"
        sums = torch.zeros(num_codes, model.vq.code_dim, dtype=torch.float64) if with_sums else None
        squares = torch.zeros(num_codes, dtype=torch.float64) if with_sums else None
        for x, _ in eval_loader(self.data.train_x, self.data.train_y):
            features = model.encoder(normalize_batch(x.to(self.device)))
            if with_sums:
                n, s, q = model.vq.statistics(features)
                counts += n.cpu()
                sums += s.cpu()
                squares += q.cpu()
            else:
                counts += torch.bincount(model.vq.assign(features).cpu(), minlength=num_codes)
        as_numpy = lambda t: None if t is None else t.numpy()  # noqa: E731
        return counts.numpy(), as_numpy(sums), as_numpy(squares)

    def code_counts(self, model: nn.Module) -> np.ndarray:
        return self.code_statistics(model)[0]

    def reply_extras(self, model: nn.Module, msg: Message, hooks) -> dict:
        counts, sums, squares = self.code_statistics(model)
        self.usage_metrics = {"codebook-perplexity": perplexity(counts)}
        record = {}
        if self.options.aggregation == LLOYD:
            shown, sums, squares, withheld = local_statistics(counts, sums, squares, self.options.privacy_threshold)
            record = {"sums": sums, "squares": squares}
            self.usage_metrics["codebook-withheld"] = withheld
        else:
            shown = counts
        used = used_codes(counts, self.options.usage_threshold)
        self.usage_metrics["codebook-used"] = int(used.sum())
        record.update({"counts": shown.astype(np.int64), "used": (used & (shown > 0)).astype(np.uint8)})
        return {FEDVQ_USAGE_RECORD: to_record(record)}

    # ------------------------------------------------------------------ actions
    def train(self, msg: Message) -> Message:
        """The common train action plus the VQ metrics and the best checkpoint."""
        reply = super().train(msg)
        saved = self.save_best_checkpoint(msg)
        best = self.best
        reply.content["metrics"].update(
            {
                **self.usage_metrics,
                "train-perplexity": self._perplexity_sum / max(self._perplexity_n, 1),
                "best-epoch": best.epoch if best else 0,
                "best-val-accuracy": best.val_accuracy if best and best.val_accuracy is not None else -1.0,
                "checkpoint-saved": int(saved),
            }
        )
        return reply
