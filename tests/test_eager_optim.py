"""training/optim.py: torch.optim's SGD and Adam, bit for bit, without importing torch._dynamo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fedvq_app.training import optim

ROOT = Path(__file__).resolve().parent.parent


def _train(cls, steps: int = 6, **kwargs):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    optimizer = cls(model.parameters(), **kwargs)
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        optimizer.zero_grad()
        x, y = torch.randn(6, 5, generator=generator), torch.randint(0, 3, (6,), generator=generator)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return [p.detach().clone() for p in model.parameters()], optimizer


@pytest.mark.parametrize(
    ("ours", "theirs", "kwargs"),
    [
        (optim.SGD, torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-3}),
        (optim.SGD, torch.optim.SGD, {"lr": 0.05, "momentum": 0.9, "nesterov": True}),
        (optim.Adam, torch.optim.Adam, {"lr": 0.01, "weight_decay": 1e-3}),
    ],
)
def test_the_eager_optimizers_step_exactly_as_torch_does(ours, theirs, kwargs):
    mine, optimizer = _train(ours, **kwargs)
    reference, reference_optimizer = _train(theirs, **kwargs)
    assert all(torch.equal(a, b) for a, b in zip(mine, reference, strict=True))
    assert not torch.equal(mine[0], _train(ours, steps=0, **kwargs)[0][0])  # the steps moved the weights
    state, reference_state = optimizer.state_dict(), reference_optimizer.state_dict()
    assert state["param_groups"] == reference_state["param_groups"]
    for key, value in reference_state["state"].items():
        assert all(torch.equal(value[k], state["state"][key][k]) for k in value)


def test_state_round_trips_and_step_hooks_still_run():
    _, optimizer = _train(optim.SGD, lr=0.1, momentum=0.9)
    saved = optimizer.state_dict()
    _, fresh = _train(optim.SGD, steps=0, lr=0.1, momentum=0.9)
    fresh.load_state_dict(saved)
    assert torch.equal(fresh.state_dict()["state"][0]["momentum_buffer"], saved["state"][0]["momentum_buffer"])
    calls = []
    optimizer.register_step_post_hook(lambda *_: calls.append("post"))
    optimizer.step()
    assert calls == ["post"]


def test_training_in_a_fresh_process_never_imports_dynamo():
    """The import costs 1.7-2.7 s per process; torch.optim's own classes pay it on the first call (control)."""
    code = """
import json, sys, torch
from fedvq_app.config import TrainSettings
from fedvq_app.training.loop import make_optimizer
from fedvq_app.training import optim
model = torch.nn.Linear(4, 2)
for optimizer in (make_optimizer(model.parameters(), TrainSettings(optimizer="sgd", momentum=0.9)),
                  make_optimizer(model.parameters(), TrainSettings(optimizer="adam"))):
    optimizer.zero_grad(); model(torch.randn(3, 4)).sum().backward(); optimizer.step(); optimizer.state_dict()
ours = "torch._dynamo" in sys.modules
torch.optim.SGD(model.parameters(), lr=0.1)
print(json.dumps({"ours": ours, "torch": "torch._dynamo" in sys.modules}))
"""
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"ours": False, "torch": True}
