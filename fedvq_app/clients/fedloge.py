"""FedLoGe's client: one loss for backbone (through SSE-C), global head and local head;
three inference modes at evaluation.

Training, per batch: cross-entropy of SSE-C(backbone(x)) trains the backbone; the
global and local heads are trained by cross-entropy on *detached* features, so
neither head moves the backbone. The three losses are summed into one backward
pass (the detach makes that identical to three separate steps). The local head
is private: it is saved in ``context.state`` and never put in a reply.

Evaluation (the server sends ``realign``): generic = SSE-C, global = the
realigned global head, both on the global (balanced) test set; personal =
realigned local head + global head on the client's personal test set, drawn from
the global test set to follow the client's training label mix (see
:func:`personal_test_rows`). Every mode reports per-class correct/total counts;
the server turns them into overall/head/medium/tail accuracies.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from flwr.app import Message, MetricRecord, RecordDict

from fedvq_app.aggregation.etf import class_hits, proportional_counts
from fedvq_app.clients.base import NeuralClient
from fedvq_app.data.client_data import eval_loader
from fedvq_app.models.fedloge import MODES, FedLoGeNet, GlaFrHeads, gla_fr
from fedvq_app.training.loop import classification_metrics, predict

PERSONAL_STREAM = 7  # salt of the personal test set's random stream


def personal_test_rows(test_labels: np.ndarray, train_counts, seed: int, partition_id: int) -> np.ndarray:
    """Rows of the global test set forming this client's personal test set.

    Per class c, ``proportional_counts`` images (training share of c times the
    largest size the test set allows), drawn without replacement with a stream
    seeded by (seed, partition id): the same set every round.
    """
    labels = np.asarray(test_labels, dtype=np.int64)
    num_classes = len(train_counts)
    counts = proportional_counts(train_counts, np.bincount(labels, minlength=num_classes))
    rng = np.random.default_rng([seed, partition_id, PERSONAL_STREAM])
    rows = [rng.choice(np.flatnonzero(labels == c), size=int(n), replace=False) for c, n in enumerate(counts) if n]
    return np.sort(np.concatenate(rows)) if rows else np.zeros(0, dtype=np.int64)


class FedLoGeClient(NeuralClient):
    """Trains backbone + both heads; evaluates the generic, global and personal modes."""

    @property
    def options(self):
        return self.settings.method_options

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
    def _features(self, model: FedLoGeNet, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return predict(model, eval_loader(x, y), self.device, lambda m, batch: m.features(batch))

    def mode_logits(self, model: FedLoGeNet, heads: GlaFrHeads, test_feats: torch.Tensor) -> dict:
        """Logits of every mode on its own split (personal: this client's test rows)."""
        rows = torch.from_numpy(self.personal_rows)
        return {
            "generic": F.linear(test_feats, model.sse_c.cpu()),
            "global": heads.global_logits(test_feats),
            "personal": heads.personal_logits(test_feats[rows]),
            "raw-global": heads.raw_global_logits(test_feats),
        }

    @property
    def personal_rows(self) -> np.ndarray:
        if not hasattr(self, "_personal_rows"):
            self._personal_rows = personal_test_rows(
                self.data.test_y.numpy(), self.data.label_counts(), self.settings.seed, self.partition_id
            )
        return self._personal_rows

    def evaluate(self, msg: Message) -> Message:
        """val-*/test-*: global mode; <mode>-accuracy and per-class counts for every mode."""
        model = self.load_model(msg)
        realign = bool(msg.content["config"].get("realign", True))
        heads = gla_fr(model, self.data.label_counts(), self.options.tau, realign, self.options.personal_global_head)
        n_cls = self.data.num_classes
        val_feats, val_y = self._features(model, self.data.val_x, self.data.val_y)
        test_feats, test_y = self._features(model, self.data.test_x, self.data.test_y)
        with torch.no_grad():
            val = classification_metrics(heads.global_logits(val_feats), val_y, n_cls)
            logits = self.mode_logits(model, heads, test_feats)
        test = classification_metrics(logits["global"], test_y, n_cls)
        metrics = {**self.base_metrics(), **val.as_metrics("val"), **test.as_metrics("test")}
        labels = {mode: test_y for mode in MODES} | {"personal": test_y[torch.from_numpy(self.personal_rows)]}
        for mode in MODES:
            correct, total = class_hits(logits[mode].argmax(1).numpy(), labels[mode].numpy(), n_cls)
            metrics[f"{mode}-accuracy"] = float(correct.sum() / max(total.sum(), 1))
            metrics[f"{mode}-class-correct"] = correct.tolist()
            metrics[f"{mode}-class-total"] = total.tolist()
        return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
