"""One training step of each model, the hooks' math, and the shared/private split."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from fedvq_app.config import ModelSettings
from fedvq_app.models import build_classifier
from fedvq_app.models.state import load_arrays, private_arrays, shared_arrays
from fedvq_app.training.hooks import ProximalTerm, ScaffoldCorrection
from fedvq_app.training.loop import classification_metrics, train_epochs


@pytest.mark.parametrize(("name", "channels"), [("cnn", 1), ("resnet18", 3)])
def test_one_training_step_changes_weights_and_lowers_loss(name, channels):
    torch.manual_seed(0)
    model = build_classifier(ModelSettings(name=name), channels, 28, 4)
    x = torch.randint(0, 255, (8, channels, 28, 28), dtype=torch.uint8)
    y = torch.arange(8) % 4
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    first = train_epochs(model, loader, opt, 1, torch.device("cpu"))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    last = train_epochs(model, loader, opt, 15, torch.device("cpu"))
    assert first.steps == 1 and last.steps == 15
    assert last.loss < first.loss


def test_proximal_term_is_zero_at_the_anchor_and_pulls_back():
    model = torch.nn.Linear(3, 2)
    hook = ProximalTerm(model, mu=0.5, shared={"weight", "bias"})
    assert hook.extra_loss(model).item() == pytest.approx(0.0)
    with torch.no_grad():
        model.weight.add_(1.0)
    loss = hook.extra_loss(model)
    assert loss.item() == pytest.approx(0.5 * 0.5 * 6)
    loss.backward()
    assert torch.allclose(model.weight.grad, torch.full((2, 3), 0.5))


def test_scaffold_correction_moves_weights_by_lr_times_c_minus_ci():
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.zero_()
    model.weight.grad = torch.tensor([[7.0, 7.0]])
    hook = ScaffoldCorrection({"weight": torch.tensor([[1.0, 2.0]])}, {"weight": torch.tensor([[0.5, 0.5]])}, lr=0.1)
    hook.before_step(model)
    assert torch.equal(model.weight.grad, torch.tensor([[7.0, 7.0]]))  # the optimizer sees the raw gradient
    hook.after_step(model)
    assert torch.allclose(model.weight, torch.tensor([[-0.05, -0.15]])) and hook.steps == 1


def test_shared_and_private_arrays_partition_the_state():
    model = build_classifier(ModelSettings(name="cnn"), 1, 28, 10)
    is_shared = lambda name: name.startswith("classifier")
    shared, private = shared_arrays(model, is_shared), private_arrays(model, is_shared)
    assert set(shared.keys()) == {"classifier.weight", "classifier.bias"}
    assert set(shared.keys()) | set(private.keys()) == set(model.state_dict())
    other = build_classifier(ModelSettings(name="cnn"), 1, 28, 10)
    load_arrays(other, shared)
    assert torch.equal(other.classifier.weight, model.classifier.weight)


def test_classification_metrics_match_hand_counts():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [2.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 1])
    result = classification_metrics(logits, labels, 3)
    assert result.accuracy == 0.5
    assert result.class_accuracy == (1.0, pytest.approx(1 / 3), -1.0)  # class 2 absent -> -1
    assert result.balanced_accuracy == pytest.approx((1.0 + 1 / 3) / 2)
    assert result.macro_f1 == pytest.approx((0.5 + 0.5) / 2)


def test_classification_metrics_agree_with_scikit_learn():
    """The confusion-matrix formulas give scikit-learn's macro-F1 and balanced accuracy, also
    when the model predicts classes absent from the labels or misses present ones."""
    import warnings  # noqa: PLC0415

    from sklearn.metrics import balanced_accuracy_score, f1_score  # noqa: PLC0415

    rng = np.random.default_rng(0)
    for trial in range(40):
        n, k = int(rng.integers(1, 60)), int(rng.integers(2, 8))
        labels = torch.from_numpy(rng.integers(0, max(1, k - trial % 3), n))  # some classes absent
        logits = torch.from_numpy(rng.standard_normal((n, k))).float()
        y, pred = labels.numpy(), logits.argmax(1).numpy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            balanced = balanced_accuracy_score(y, pred)
        f1 = f1_score(y, pred, labels=np.unique(y), average="macro", zero_division=0)
        result = classification_metrics(logits, labels, k)
        assert result.balanced_accuracy == pytest.approx(balanced)
        assert result.macro_f1 == pytest.approx(f1)
        assert result.accuracy == pytest.approx((y == pred).mean())


def test_scaffold_control_variate_is_the_mean_raw_gradient():
    model = torch.nn.Linear(1, 1, bias=False)
    hook = ScaffoldCorrection({"weight": torch.tensor([[10.0]])}, {"weight": torch.tensor([[0.0]])}, lr=0.0)
    for grad in (1.0, 3.0):
        model.weight.grad = torch.tensor([[grad]])
        hook.before_step(model)
        hook.after_step(model)
    assert hook.mean_gradient()["weight"].item() == 2.0  # the correction itself is not counted
