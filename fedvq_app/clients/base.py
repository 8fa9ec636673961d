"""The neural client every classification method builds on (FedAvg's client).

A method changes behaviour by overriding a hook, never by copying the flow:
``batch_loss`` (model-specific loss), ``forward`` (prediction), ``train_hooks``
(FedProx, SCAFFOLD), ``reply_extras`` (statistics sent next to the parameters),
``gradient_parameters`` (what the gradient-dissimilarity statistic covers).
Private tensors live in ``context.state`` between rounds.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from torch import nn

from fedvq_app.aggregation.dissimilarity import model_fingerprint
from fedvq_app.aggregation.etf import personal_test_rows
from fedvq_app.config import Settings
from fedvq_app.data.client_data import (
    ClientData,
    eval_loader,
    load_client_data,
    normalize_batch,
    pooled_validation,
    train_loader,
)
from fedvq_app.data.datasets import DatasetInfo
from fedvq_app.models.state import load_arrays, private_arrays, shared_arrays
from fedvq_app.protocol import (
    ARRAYS,
    CONFIG,
    EVALUATE_CONFIG,
    EVALUATION_PREFIX,
    GRADIENT_AT_RECORD,
    GRADIENT_RECORD,
    METRICS,
    PRIVATE_STATE,
)
from fedvq_app.records import to_numpy, to_record
from fedvq_app.registry import get_method
from fedvq_app.training.device import configure_threads, resolve_device
from fedvq_app.training.dpsgd import DpSgdSession, dp_compatible
from fedvq_app.training.loop import (
    EvalResult,
    TrainHook,
    TrainResult,
    classification_metrics,
    cross_entropy_loss,
    evaluate,
    make_optimizer,
    plain_forward,
    predict,
    train_epochs,
)


@dataclass(frozen=True)
class CarriedEvaluation:
    """The evaluate instruction a train message carries (one message per site per round).

    It holds what the evaluation hooks read of a message -- its ``content``, with the
    received arrays and the evaluate config the server would have sent in a message of
    its own -- so :meth:`NeuralClient.evaluation_records` scores exactly the model an
    evaluate message would have delivered.
    """

    content: RecordDict

    @classmethod
    def of(cls, msg: Message) -> CarriedEvaluation | None:
        """The instruction ``msg`` carries, or None when the server asked for no evaluation."""
        config = msg.content.config_records.get(EVALUATE_CONFIG)
        if config is None:
            return None
        return cls(RecordDict({ARRAYS: msg.content[ARRAYS], CONFIG: config}))


def seed_everything(*parts: int) -> torch.Generator:
    """Seed python, numpy and torch from a tuple; return a matching generator."""
    seed = int(np.random.SeedSequence(list(parts)).generate_state(1)[0])
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


class NeuralClient:
    """Local training and evaluation of one partition for one method."""

    def __init__(self, settings: Settings, context: Context) -> None:
        self.settings = settings
        self.context = context
        self.spec = get_method(settings.method)
        self.partition_id = int(context.node_config["partition-id"])
        self.num_partitions = int(context.node_config["num-partitions"])
        self.device = resolve_device(settings.device)
        configure_threads(settings.train.num_threads)
        self.data: ClientData = load_client_data(settings, self.partition_id, self.num_partitions)
        #: sample-dpsgd: this round's DP-SGD steps and the client's epsilon so far (train metrics)
        self.privacy_metrics: dict = {}

    # ------------------------------------------------------------------ model
    @property
    def info(self) -> DatasetInfo:
        x = self.data.train_x
        return DatasetInfo(
            self.settings.dataset.name,
            self.data.num_classes,
            int(x.shape[1]),
            int(x.shape[-1]),
            self.data.class_names,
        )

    def build_model(self) -> nn.Module:
        """Same seed as the server, so private parts start where shared ones did."""
        torch.manual_seed(self.settings.seed)
        return dp_compatible(self.spec.build_model(self.settings, self.info), self.settings)

    def load_model(self, msg: Message | CarriedEvaluation) -> nn.Module:
        """Fresh model + this client's private state + the server's shared arrays."""
        model = self.build_model()
        if PRIVATE_STATE in self.context.state:
            load_arrays(model, self.context.state[PRIVATE_STATE])
        load_arrays(model, msg.content["arrays"])
        return model.to(self.device)

    def save_private(self, model: nn.Module) -> None:
        self.context.state[PRIVATE_STATE] = private_arrays(model, self.spec.is_shared)

    # ------------------------------------------------------------------ hooks
    def batch_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
        """Training loss and logits of one batch."""
        return cross_entropy_loss(model, x, y)

    def forward(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Logits used for evaluation."""
        return plain_forward(model, x)

    def train_hooks(self, model: nn.Module, msg: Message) -> list[TrainHook]:
        """Hooks for the local loop (FedProx and SCAFFOLD add theirs)."""
        return []

    def trainable_parameters(self, model: nn.Module):
        return model.parameters()

    def local_train(self, model: nn.Module, msg: Message, hooks: list[TrainHook]) -> TrainResult:
        """Run the configured local epochs; subclasses may wrap it (warm-up, best-val)."""
        config = msg.content["config"]
        lr = float(config.get("lr", self.settings.train.lr))
        generator = seed_everything(self.settings.seed, int(config["server-round"]), self.partition_id)
        loader = train_loader(self.data, self.settings, generator)
        optimizer = make_optimizer(self.trainable_parameters(model), self.settings.train, lr)
        dpsgd = DpSgdSession.start(self.settings.privacy, self.context.state, model, optimizer, loader, hooks)
        if dpsgd is not None:  # sample-dpsgd: Opacus' optimizer and Poisson-sampled loader
            optimizer, loader = dpsgd.optimizer, dpsgd.loader
        result = train_epochs(
            model,
            loader,
            optimizer,
            self.settings.train.local_epochs,
            self.device,
            self.batch_loss,
            hooks,
        )
        if dpsgd is not None:
            self.privacy_metrics = dpsgd.finish()
        return result

    def reply_arrays(self, model: nn.Module, msg: Message) -> ArrayRecord:
        """The arrays the train reply carries: the shared part of the model."""
        return shared_arrays(model, self.spec.is_shared)

    def reply_extras(self, model: nn.Module, msg: Message, hooks: list[TrainHook]) -> dict:
        """Extra records (name -> ArrayRecord/MetricRecord) for the train reply."""
        return {}

    def base_metrics(self) -> dict:
        return {
            "num-examples": self.data.num_train,
            "partition-id": self.partition_id,
        }

    # ------------------------------------------------------------------ actions
    def train(self, msg: Message) -> Message:
        """Train on the local split and reply with the shared arrays and metrics.

        When the message carries an evaluate instruction (``evaluate-with-train``), the
        received model is evaluated first, exactly as an evaluate message would have it
        evaluated, and the reply carries those records under ``evaluation:<name>``.
        """
        carried = CarriedEvaluation.of(msg)
        evaluation = {} if carried is None else self.evaluation_records(carried)
        model = self.load_model(msg)
        hooks = self.train_hooks(model, msg)
        result = self.local_train(model, msg, hooks)
        self.save_private(model)
        metrics = {
            **self.base_metrics(),
            "train-loss": result.loss,
            "train-accuracy": result.accuracy,
            "train-steps": result.steps,
            "label-counts": self.data.label_counts(),
            "rotated": int(self.data.rotated),
            "domain": self.data.domain,
            **self.privacy_metrics,
        }
        content = RecordDict(
            {
                "arrays": self.reply_arrays(model, msg),
                "metrics": MetricRecord(metrics),
                **self.reply_extras(model, msg, hooks),
                **{EVALUATION_PREFIX + name: record for name, record in evaluation.items()},
            }
        )
        return Message(content=content, reply_to=msg)

    @property
    def own_test_rows(self) -> np.ndarray:
        """Rows of the global test set that form this client's own-distribution test set.

        Drawn per class to follow the client's training label mix (the same rows every
        round and on every node; see :func:`~fedvq_app.aggregation.etf.personal_test_rows`),
        in the client's own shift domain (its test images are rotated like its train images).
        Every method's model -- FedAvg's global one included -- is scored on these rows,
        so personalised and global methods are compared on the same data.
        """
        if getattr(self, "_own_test_rows", None) is None:
            self._own_test_rows = personal_test_rows(
                self.data.test_y.numpy(), self.data.label_counts(), self.settings.seed, self.partition_id
            )
        return self._own_test_rows

    def evaluate_splits(self, model: nn.Module) -> dict[str, EvalResult]:
        """Scores by split: local validation (``val``), global test set (``test``) and the
        client's own-distribution test rows (``own-test``; absent when the client has none);
        with ``metrics.pooled-validation`` also every client's validation split (``pooled-val``)."""
        n_cls = self.data.num_classes
        val = evaluate(model, eval_loader(self.data.val_x, self.data.val_y), self.device, n_cls, self.forward)
        logits, labels = predict(model, eval_loader(self.data.test_x, self.data.test_y), self.device, self.forward)
        splits = {"val": val, "test": classification_metrics(logits, labels, n_cls)}
        if self.settings.metrics.pooled_validation:
            x, y = pooled_validation(self.settings, self.num_partitions)
            splits["pooled-val"] = evaluate(model, eval_loader(x, y), self.device, n_cls, self.forward)
        rows = torch.from_numpy(self.own_test_rows)
        if len(rows) and len(labels):
            splits["own-test"] = classification_metrics(logits[rows], labels[rows], n_cls)
        return splits

    def evaluate(self, msg: Message) -> Message:
        """Evaluate the client's model (shared + private) on val, global test and own-distribution test."""
        return Message(content=RecordDict(self.evaluation_records(msg)), reply_to=msg)

    def evaluation_records(self, msg: Message | CarriedEvaluation) -> dict:
        """The records of an evaluation of the received model (the hook methods override)."""
        model = self.load_model(msg)
        metrics = dict(self.base_metrics())
        for split, result in self.evaluate_splits(model).items():
            metrics.update(result.as_metrics(split))
        return {METRICS: MetricRecord(metrics), **self.gradient_records(model, msg)}

    # ------------------------------------------------------------------ gradient dissimilarity
    def gradient_records(self, model: nn.Module, msg: Message | CarriedEvaluation) -> dict:
        """Evaluate-reply records behind Gamma (empty unless ``metrics.gradient-dissimilarity``).

        A client that overrides :meth:`evaluation_records` adds ``**self.gradient_records(model, msg)``
        to its records to take part in the measurement.
        """
        if not self.settings.metrics.gradient_dissimilarity:
            return {}
        at = model_fingerprint(to_numpy(msg.content["arrays"]))
        return {GRADIENT_RECORD: self.local_gradient(model), GRADIENT_AT_RECORD: ConfigRecord({"model": at})}

    def gradient_parameters(self, model: nn.Module) -> dict[str, nn.Parameter]:
        """Parameters whose gradient the server compares across clients: the shared, trainable ones."""
        return {n: p for n, p in model.named_parameters() if p.requires_grad and self.spec.is_shared(n)}

    def local_gradient(self, model: nn.Module) -> ArrayRecord:
        """Mean gradient of the local loss at the received parameters over a fixed batch budget.

        The batches are the same every round (a seeded subset of the train split), so
        changes of Gamma reflect the model, not the sampling. Eval mode: no dropout
        noise, no BatchNorm statistics updated.
        """
        params = self.gradient_parameters(model)
        budget = self.settings.metrics.gradient_batches * self.settings.train.batch_size
        generator = torch.Generator().manual_seed(self.settings.seed * 100_003 + self.partition_id)
        rows = torch.randperm(self.data.num_train, generator=generator)[:budget]
        loader = eval_loader(self.data.train_x[rows], self.data.train_y[rows], self.settings.train.batch_size)
        model.eval()
        model.zero_grad(set_to_none=True)
        for x, y in loader:
            loss, _ = self.batch_loss(model, normalize_batch(x.to(self.device)), y.to(self.device))
            (loss * len(y) / max(len(rows), 1)).backward()
        gradient = {
            n: (p.grad if p.grad is not None else torch.zeros_like(p)).detach().cpu().numpy().astype(np.float32)
            for n, p in params.items()
        }
        model.zero_grad(set_to_none=True)
        return to_record(gradient)
