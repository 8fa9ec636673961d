"""One local-training loop for every method, customised by a batch loss and hooks.

Methods never copy this loop: FedProx adds a proximal term through
:class:`TrainHook.extra_loss`, SCAFFOLD corrects gradients in
:class:`TrainHook.before_step`, FedVQ/FusedSpace/FedLoGe pass their own
``batch_loss`` (model-specific forward and loss terms).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from fedvq_app.config import TrainSettings
from fedvq_app.data.client_data import normalize_batch
from fedvq_app.training import optim

ABSENT_CLASS = -1.0  # class-accuracy entry of a class missing from the split (no NaN on the wire)

BatchLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
Forward = Callable[[nn.Module, torch.Tensor], torch.Tensor]


class TrainHook:
    """Extension points of :func:`train_epochs`; the defaults do nothing."""

    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        """A term added to every batch loss (e.g. FedProx's proximal term)."""
        return None

    def before_step(self, model: nn.Module) -> None:
        """Edit gradients after backward, before the optimizer step (SCAFFOLD)."""

    def after_step(self, model: nn.Module) -> None:
        """Called after every optimizer step (e.g. to count steps)."""


@dataclass(frozen=True)
class TrainResult:
    """What one client's local training achieved."""

    loss: float
    accuracy: float
    steps: int
    num_examples: int


def cross_entropy_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """Plain classification: (loss, logits)."""
    logits = model(x)
    return F.cross_entropy(logits, y), logits


def plain_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x)


def make_optimizer(params: Iterable[nn.Parameter], cfg: TrainSettings, lr: float | None = None):
    """SGD (with momentum) or Adam as configured (torch's, without the dynamo import: training/optim.py)."""
    lr = cfg.lr if lr is None else lr
    params = [p for p in params if p.requires_grad]
    if cfg.optimizer == "adam":
        return optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay)
    return optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def train_epochs(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    device: torch.device,
    batch_loss: BatchLoss = cross_entropy_loss,
    hooks: Sequence[TrainHook] = (),
) -> TrainResult:
    """Run ``epochs`` passes over ``loader``; returns mean loss and accuracy."""
    model.train()
    total_loss, correct, seen, steps = 0.0, 0, 0, 0
    for _ in range(epochs):
        for x, y in loader:
            x, y = normalize_batch(x.to(device)), y.to(device)
            optimizer.zero_grad(set_to_none=True)
            loss, logits = batch_loss(model, x, y)
            for hook in hooks:
                extra = hook.extra_loss(model)
                if extra is not None:
                    loss = loss + extra
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training loss became {loss.item()} at step {steps}")
            loss.backward()
            for hook in hooks:
                hook.before_step(model)
            optimizer.step()
            for hook in hooks:
                hook.after_step(model)
            total_loss += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
            steps += 1
    return TrainResult(
        loss=total_loss / max(seen, 1),
        accuracy=correct / max(seen, 1),
        steps=steps,
        num_examples=seen,
    )


@torch.no_grad()
def predict(
    model: nn.Module, loader: DataLoader, device: torch.device, forward: Forward = plain_forward
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels of a whole loader (on CPU)."""
    model.eval()
    outs, labels = [], []
    for x, y in loader:
        outs.append(forward(model, normalize_batch(x.to(device))).float().cpu())
        labels.append(y)
    if not outs:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.long)
    return torch.cat(outs), torch.cat(labels)


@dataclass(frozen=True)
class EvalResult:
    """Classification quality on one split."""

    loss: float
    accuracy: float
    macro_f1: float
    balanced_accuracy: float
    class_accuracy: tuple[float, ...]
    num_examples: int
    #: per class: images predicted right and images of the class (what head/medium/tail figures pool)
    class_correct: tuple[int, ...] = ()
    class_total: tuple[int, ...] = ()

    def as_metrics(self, prefix: str) -> dict[str, float | list[float] | list[int]]:
        """Flat metric names for a MetricRecord, e.g. ``test-accuracy``."""
        return {
            f"{prefix}-loss": self.loss,
            f"{prefix}-accuracy": self.accuracy,
            f"{prefix}-macro-f1": self.macro_f1,
            f"{prefix}-balanced-accuracy": self.balanced_accuracy,
            f"{prefix}-class-accuracy": list(self.class_accuracy),
            f"{prefix}-class-correct": list(self.class_correct),
            f"{prefix}-class-total": list(self.class_total),
        }


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> EvalResult:
    """Accuracy, macro-F1, balanced accuracy and per-class accuracy.

    From one confusion matrix, with scikit-learn's definitions (``f1_score(labels=<classes in
    y>, average="macro", zero_division=0)`` and ``balanced_accuracy_score``: mean recall over
    the classes present in ``y``; tests/test_models_training.py checks them against
    scikit-learn). Not scikit-learn itself: in a deployment every evaluate message is a new
    ClientApp process, and importing scikit-learn there cost about 1.5 s per message.
    """
    n = int(labels.numel())
    if n == 0:
        return EvalResult(0.0, 0.0, 0.0, 0.0, tuple([0.0] * num_classes), 0, (0,) * num_classes, (0,) * num_classes)
    y = labels.numpy().astype(np.int64)
    pred = logits.argmax(1).numpy().astype(np.int64)
    loss = float(F.cross_entropy(logits, labels).item())
    size = max(num_classes, int(y.max()) + 1, int(pred.max()) + 1)
    confusion = np.bincount(y * size + pred, minlength=size * size).reshape(size, size)
    tp = np.diag(confusion).astype(np.float64)
    support = confusion.sum(1).astype(np.float64)
    predicted = confusion.sum(0).astype(np.float64)
    present = support > 0
    recall = tp[present] / support[present]
    f1 = 2 * tp[present] / (support[present] + predicted[present])  # 2tp / (2tp + fp + fn)
    per_class = [float(tp[c] / support[c]) if support[c] else ABSENT_CLASS for c in range(num_classes)]
    return EvalResult(
        loss=loss,
        accuracy=float((pred == y).mean()),
        macro_f1=float(f1.mean()),
        balanced_accuracy=float(recall.mean()),
        class_accuracy=tuple(per_class),
        num_examples=n,
        class_correct=tuple(int(v) for v in tp[:num_classes]),
        class_total=tuple(int(v) for v in support[:num_classes]),
    )


def evaluate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    num_classes: int,
    forward: Forward = plain_forward,
) -> EvalResult:
    """Predict a loader and score it."""
    logits, labels = predict(model, loader, device, forward)
    return classification_metrics(logits, labels, num_classes)
