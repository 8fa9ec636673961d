"""FedProx and SCAFFOLD clients: the FedAvg client plus one training hook each."""

from __future__ import annotations

import torch
from flwr.app import Message

from fedvq_app.clients.base import NeuralClient
from fedvq_app.protocol import SCAFFOLD_CONTROL, SCAFFOLD_CONTROL_DELTA, SCAFFOLD_LOCAL_CONTROL
from fedvq_app.records import to_record
from fedvq_app.training.hooks import ProximalTerm, ScaffoldCorrection


class FedProxClient(NeuralClient):
    """Adds (mu/2)||w - w_global||^2; mu comes from the server's ``proximal-mu``."""

    def train_hooks(self, model, msg: Message):
        mu = float(msg.content["config"].get("proximal-mu", 0.0))
        shared = {n for n, _ in model.named_parameters() if self.spec.is_shared(n)}
        return [ProximalTerm(model, mu, shared)]


class ScaffoldClient(NeuralClient):
    """Corrects gradients by c - c_i and sends the change of c_i."""

    def train_hooks(self, model, msg: Message):
        global_c = {k: torch.from_numpy(v.numpy()) for k, v in msg.content[SCAFFOLD_CONTROL].items()}
        stored = self.context.state.get(SCAFFOLD_LOCAL_CONTROL)
        self.local_c = (
            {k: torch.from_numpy(v.numpy()) for k, v in stored.items()}
            if stored is not None
            else {k: torch.zeros_like(v) for k, v in global_c.items()}
        )
        params = dict(model.named_parameters())
        trained = [k for k in global_c if k in params]
        lr = float(msg.content["config"].get("lr", self.settings.train.lr))
        return [ScaffoldCorrection({k: global_c[k] for k in trained}, {k: self.local_c[k] for k in trained}, lr)]

    def reply_extras(self, model, msg: Message, hooks) -> dict:
        """Store c_i+ (mean raw gradient) and send delta c_i = c_i+ - c_i for every array."""
        hook = hooks[0]
        updated = hook.mean_gradient() if hook.steps > 0 else {}
        new_c = {k: updated.get(k, c) for k, c in self.local_c.items()}
        self.context.state[SCAFFOLD_LOCAL_CONTROL] = to_record({k: v.numpy() for k, v in new_c.items()})
        return {SCAFFOLD_CONTROL_DELTA: to_record({k: (new_c[k] - self.local_c[k]).numpy() for k in new_c})}
