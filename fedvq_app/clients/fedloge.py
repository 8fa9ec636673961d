"""FedLoGe's client: one loss for backbone (through SSE-C), global head and local head;
three inference modes at evaluation.

Training, per batch: cross-entropy of SSE-C(backbone(x)) trains the backbone; the
global and local heads are trained by cross-entropy on *detached* features, so
neither head moves the backbone. The three losses are summed into one backward
pass (the detach makes that identical to three separate steps). The local head
is private: it is saved in ``context.state`` and never put in a reply.

Evaluation (the server sends ``realign``): every mode -- generic = SSE-C, global =
the realigned global head, personal = ``fedloge.personal-formula`` (classes the
client never trained on masked; every formula is also reported as
``personal-<formula>``, the two heads alone as ``local-only`` / ``global-only``) -- is scored
on the client's own validation split (``val-<mode>-accuracy``) and on its own long-tailed
test data: its personal test set, drawn from the global test set to follow the
client's training label mix (:attr:`NeuralClient.own_test_rows`). The client-independent
modes (generic, global, raw-global) are also scored on the whole, class-balanced
global test set (``<mode>-balanced``). Every mode reports per-class correct/total
counts; the server turns them into overall/head/medium/tail accuracies. With
``fedloge.local-refit-epochs`` the local head is first refit (alone, for that evaluation only)
on the received backbone's features of the train split.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from flwr.app import Message, MetricRecord

from fedvq_app.aggregation.etf import class_hits
from fedvq_app.clients.base import CarriedEvaluation, NeuralClient, seed_everything
from fedvq_app.data.client_data import eval_loader
from fedvq_app.models.fedloge import (
    BALANCED_MODES,
    BALANCED_SUFFIX,
    MODES,
    PERSONAL_FORMULAS,
    FedLoGeNet,
    GlaFrHeads,
    gla_fr,
)
from fedvq_app.options import FedLoGeOptions
from fedvq_app.protocol import METRICS
from fedvq_app.training.loop import classification_metrics, make_optimizer, predict

REFIT_STREAM = 5  # seeds the local-head refit's shuffles apart from the training epochs


class FedLoGeClient(NeuralClient):
    """Trains backbone + both heads; evaluates the generic, global and personal modes."""

    @property
    def options(self):
        return self.settings.options(FedLoGeOptions)

    def batch_loss(self, model: FedLoGeNet, x: torch.Tensor, y: torch.Tensor):
        """CE through the frozen SSE-C (backbone) + CE of both heads on detached features."""
        features = model.features(x)
        generic = model.generic_logits(features)
        detached = features.detach()
        loss = (
            F.cross_entropy(generic, y)
            + F.cross_entropy(model.global_head(detached), y)
            + F.cross_entropy(model.local_head(detached), y)
        )
        return loss, generic

    # ------------------------------------------------------------------ evaluation
    def refit_local_head(self, model: FedLoGeNet, msg: Message | CarriedEvaluation) -> None:
        """``fedloge.local-refit-epochs`` of the local head alone on the received backbone's (detached) features
        of the train split; the backbone, SSE-C and global head do not move, nothing is saved."""
        epochs = self.options.local_refit_epochs
        if epochs == 0 or self.data.num_train == 0:
            return
        feats, labels = self._features(model, self.data.train_x, self.data.train_y)
        lr = float(msg.content["config"].get("lr", self.settings.train.lr))
        head = model.local_head.cpu()
        optimizer = make_optimizer(head.parameters(), self.settings.train, lr)
        generator = seed_everything(
            self.settings.seed, int(msg.content["config"].get("server-round", 0)), self.partition_id, REFIT_STREAM
        )
        batch = self.settings.train.batch_size
        for _ in range(epochs):
            order = torch.randperm(len(labels), generator=generator)
            for start in range(0, len(order), batch):
                rows = order[start : start + batch]
                optimizer.zero_grad(set_to_none=True)
                F.cross_entropy(head(feats[rows]), labels[rows]).backward()
                optimizer.step()
        model.local_head.to(self.device).eval()

    def _features(self, model: FedLoGeNet, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return predict(model, eval_loader(x, y), self.device, lambda m, batch: m.features(batch))

    def mode_logits(self, model: FedLoGeNet, heads: GlaFrHeads, feats: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits of every mode for the same features."""
        return {
            "generic": F.linear(feats, model.sse_c.cpu(), model.sse_c_bias.cpu()),
            "global": heads.global_logits(feats),
            "personal": heads.personal_logits(feats),
            "raw-global": heads.raw_global_logits(feats),
            **{f"personal-{f}": heads.formula_logits(feats, f) for f in PERSONAL_FORMULAS},
            "local-only": heads.local_only_logits(feats),
            "global-only": heads.global_only_logits(feats),
        }

    def evaluation_records(self, msg: Message | CarriedEvaluation) -> dict:
        """val-*/test-*: global mode (val split, global test set); per mode on own data and balanced:
        ``<mode>-accuracy`` and per-class ``<mode>-class-correct`` / ``<mode>-class-total``; per mode on the
        client's own validation split (drawn from its training data): ``val-<mode>-accuracy``."""
        model = self.load_model(msg)
        self.refit_local_head(model, msg)
        realign = bool(msg.content["config"].get("realign", True))
        heads = gla_fr(
            model,
            self.data.label_counts(),
            self.options.tau,
            realign,
            self.options.personal_global_head,
            self.options.personal_formula,
        )
        n_cls = self.data.num_classes
        val_feats, val_y = self._features(model, self.data.val_x, self.data.val_y)
        test_feats, test_y = self._features(model, self.data.test_x, self.data.test_y)
        with torch.no_grad():
            val = classification_metrics(heads.global_logits(val_feats), val_y, n_cls)
            val_logits = self.mode_logits(model, heads, val_feats)
            logits = self.mode_logits(model, heads, test_feats)
        test = classification_metrics(logits["global"], test_y, n_cls)
        metrics = {**self.base_metrics(), **val.as_metrics("val"), **test.as_metrics("test")}
        if len(val_y):  # what a mode or a formula is chosen on: the client's own distribution, never the test set
            for mode in MODES:
                metrics[f"val-{mode}-accuracy"] = float((val_logits[mode].argmax(1) == val_y).float().mean())
        rows = torch.from_numpy(self.own_test_rows)
        scored = [(mode, logits[mode][rows], test_y[rows]) for mode in MODES]
        scored += [(mode + BALANCED_SUFFIX, logits[mode], test_y) for mode in BALANCED_MODES]
        for name, mode_logits, labels in scored:
            correct, total = class_hits(mode_logits.argmax(1).numpy(), labels.numpy(), n_cls)
            metrics[f"{name}-accuracy"] = float(correct.sum() / max(total.sum(), 1))
            metrics[f"{name}-class-correct"] = correct.tolist()
            metrics[f"{name}-class-total"] = total.tolist()
        if len(rows):  # own-distribution test: FedLoGe's personalised output on the rows every method is scored on
            metrics.update(classification_metrics(logits["personal"][rows], test_y[rows], n_cls).as_metrics("own-test"))
        return {METRICS: MetricRecord(metrics), **self.gradient_records(model, msg)}
