"""FedProx and SCAFFOLD clients: the FedAvg client plus one training hook each."""

from __future__ import annotations

import torch
from flwr.app import Message

from fedvq_app.clients.base import NeuralClient
from fedvq_app.records import to_record
from fedvq_app.strategies.scaffold import CONTROL, CONTROL_DELTA
from fedvq_app.training.hooks import ProximalTerm, ScaffoldCorrection

LOCAL_CONTROL = "scaffold-ci"


class FedProxClient(NeuralClient):
    """Adds (mu/2)||w - w_global||^2; mu comes from the server's ``proximal-mu``."""

    def train_hooks(self, model, msg: Message):
        mu = float(msg.content["config"].get("proximal-mu", 0.0))
        shared = {n for n, _ in model.named_parameters() if self.spec.is_shared(n)}
        return [ProximalTerm(model, mu, shared)]


class ScaffoldClient(NeuralClient):
    """Corrects gradients by c - c_i and sends the change of c_i."""

    def train_hooks(self, model, msg: Message):
        self.global_start = {n: p.detach().clone() for n, p in model.named_parameters()}
        global_c = {k: torch.from_numpy(v.numpy()) for k, v in msg.content[CONTROL].items()}
        stored = self.context.state.get(LOCAL_CONTROL)
        local_c = (
            {k: torch.from_numpy(v.numpy()) for k, v in stored.items()}
            if stored is not None
            else {k: torch.zeros_like(v) for k, v in global_c.items()}
        )
        params = dict(model.named_parameters())
        self.global_c = global_c
        self.local_c = local_c
        return [ScaffoldCorrection({k: v for k, v in global_c.items() if k in params},
                                   {k: v for k, v in local_c.items() if k in params})]

    def reply_extras(self, model, msg: Message, hooks) -> dict:
        steps = hooks[0].steps
        lr = float(msg.content["config"].get("lr", self.settings.train.lr))
        params = {n: p.detach().cpu() for n, p in model.named_parameters()}
        new_c, delta = {}, {}
        for name, c in self.global_c.items():
            ci = self.local_c[name]
            if name in params and steps > 0:
                updated = ci - c + (self.global_start[name].cpu() - params[name]) / (steps * lr)
            else:
                updated = ci
            new_c[name] = updated
            delta[name] = (updated - ci).numpy().astype(c.numpy().dtype)
        self.context.state[LOCAL_CONTROL] = to_record({k: v.numpy() for k, v in new_c.items()})
        return {CONTROL_DELTA: to_record(delta)}
