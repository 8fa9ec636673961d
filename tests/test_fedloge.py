"""FedLoGe: model, client (private local head, three modes), strategy, config, whole runs."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flwr.app import ConfigRecord, Context, Message, RecordDict

from fedvq_app.aggregation.etf import proportional_counts
from fedvq_app.client_app import app as client_app
from fedvq_app.clients.fedloge import FedLoGeClient
from fedvq_app.config import ConfigError
from fedvq_app.data.datasets import dataset_info
from fedvq_app.local_grid import LocalGrid, claim_server_identity, full_run_config, run_local
from fedvq_app.models.fedloge import (
    BALANCED_MODES,
    MASKED_LOGIT,
    MODES,
    REPORTED_MODES,
    build_fedloge_model,
    gla_fr,
    is_shared,
)
from fedvq_app.models.state import shared_arrays
from fedvq_app.records import to_numpy, to_record
from fedvq_app.registry import load_settings
from fedvq_app.server.checkpoint import load_checkpoint
from fedvq_app.server_app import app as server_app
from fedvq_app.strategies.fedloge import FedLoGeStrategy
from fedvq_app.tracking.fedloge_plots import comparison_table, group_report, pooled_accuracy
from tests.conftest import reply

ROOT = Path(__file__).resolve().parent.parent
LT = {"partition.kind": "long-tail", "partition.imbalance-factor": 0.01, "partition.alpha": 0.5}


def _settings(**overrides):
    return load_settings(full_run_config(method="fedloge", **{**LT, **overrides}))


def _model(settings):
    torch.manual_seed(settings.seed)
    return build_fedloge_model(settings, dataset_info(settings.dataset, settings.seed))


# ------------------------------------------------------------------ model
def test_sse_c_is_frozen_and_never_in_the_state_dict():
    settings = _settings(**{"fedloge.sse-c": "reference"})
    model = _model(settings)
    assert "sse_c" not in model.state_dict() and "sse_c" not in dict(model.named_parameters())
    sent = set(shared_arrays(model, is_shared).keys())
    assert sent and all(k.startswith(("backbone.", "global_head.")) for k in sent)
    assert "global_head.weight" in sent and not any(k.startswith("local_head.") for k in sent)
    assert "sse_c_bias" not in model.state_dict()
    assert torch.equal(model.sse_c, _model(settings).sse_c)  # every node rebuilds the same SSE-C
    assert torch.equal(model.sse_c_bias, _model(settings).sse_c_bias)
    assert (model.sse_c == 0).float().mean().item() == pytest.approx(0.6, abs=0.01)
    assert torch.allclose(model.sse_c.norm(dim=1), torch.full((10,), 0.1))  # the reference's norm
    assert model.sse_c_bias.abs().min() > 0  # the reference's frozen random bias
    feats = torch.rand(2, model.sse_c.shape[1])
    assert torch.allclose(model.generic_logits(feats), feats @ model.sse_c.T + model.sse_c_bias)
    top = _model(_settings())  # the default frame: unit rows, no bias
    assert torch.allclose(top.sse_c.norm(dim=1), torch.ones(10)) and torch.equal(top.sse_c_bias, torch.zeros(10))


def test_backbone_learns_only_through_sse_c_and_heads_only_from_detached_features():
    settings = _settings()
    model = _model(settings)
    client = object.__new__(FedLoGeClient)
    x, y = torch.randn(6, 1, 28, 28), torch.tensor([0, 1, 2, 3, 4, 5])
    loss, logits = client.batch_loss(model, x, y)
    loss.backward()
    combined = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()  # SSE-C loss alone
    for name, param in model.named_parameters():
        if name.startswith("backbone."):
            assert torch.allclose(combined[name], param.grad, atol=1e-6), name
    assert combined["global_head.weight"].abs().sum() > 0 and combined["local_head.weight"].abs().sum() > 0
    assert torch.equal(logits, model(x))  # train accuracy is the generic (SSE-C) one


def test_gla_fr_realigns_norms_and_masks_unseen_classes():
    model = _model(_settings())
    with torch.no_grad():
        model.global_head.weight.mul_(torch.arange(1, 11, dtype=torch.float32)[:, None])
    counts = [5, 0, 3, 1, 0, 2, 2, 1, 1, 1]
    heads = gla_fr(model, counts, tau=1.7)
    assert torch.allclose(heads.realigned_global_weight.norm(dim=1), torch.full((10,), 1.7), atol=1e-5)
    expected = model.global_head.weight * model.local_head.weight.norm(dim=1, keepdim=True)
    assert torch.allclose(heads.local_weight, expected.detach())
    assert torch.equal(heads.local_bias, model.local_head.bias.detach())  # the local bias stays (seed)
    logits = heads.personal_logits(torch.randn(4, 128))
    assert (logits[:, [1, 4]] == MASKED_LOGIT).all() and (logits[:, [0, 2]] > MASKED_LOGIT / 2).all()
    # the reference's formula (default): raw local head + global rows at the local row norms, global bias
    feats = torch.rand(3, 128)
    seen = [0, 2, 3, 5]
    reference = F.linear(feats, model.local_head.weight, model.local_head.bias) + F.linear(
        feats, expected, model.global_head.bias
    )
    assert torch.allclose(heads.personal_logits(feats)[:, seen], reference.detach()[:, seen], atol=1e-5)
    # the other formula: realigned local head (local bias) + the raw or the realigned global head
    heads = gla_fr(model, counts, tau=1.7, formula="realigned-local")
    other = F.linear(feats, expected, model.local_head.bias) + F.linear(
        feats, model.global_head.weight, model.global_head.bias
    )
    assert torch.allclose(heads.personal_logits(feats)[:, seen], other.detach()[:, seen], atol=1e-5)
    assert torch.equal(heads.personal_global_weight, heads.global_weight)
    realigned = gla_fr(model, counts, tau=1.7, personal_global="realigned", formula="realigned-local")
    assert torch.equal(realigned.personal_global_weight, heads.realigned_global_weight)
    difference = realigned.personal_logits(feats) - heads.personal_logits(feats)
    assert torch.allclose(difference[:, 0], realigned.global_logits(feats)[:, 0] - heads.raw_global_logits(feats)[:, 0])
    # the reference's per-round formula: raw local head + raw global head
    both = F.linear(feats, model.local_head.weight, model.local_head.bias) + model.global_head(feats)
    assert torch.allclose(heads.formula_logits(feats, "raw-heads")[:, seen], both.detach()[:, seen], atol=1e-5)
    assert (heads.formula_logits(feats, "raw-heads")[:, [1, 4]] == MASKED_LOGIT).all()
    # the diagnostic head-only modes: each part of the personal model alone, absent classes masked
    local_only, global_only = heads.local_only_logits(feats), heads.global_only_logits(feats)
    assert torch.allclose(
        local_only[:, seen],
        F.linear(feats, model.local_head.weight, model.local_head.bias).detach()[:, seen],
        atol=1e-5,
    )
    assert torch.allclose(global_only[:, seen], heads.global_logits(feats)[:, seen], atol=1e-6)
    assert (local_only[:, [1, 4]] == MASKED_LOGIT).all() and (global_only[:, [1, 4]] == MASKED_LOGIT).all()
    raw = gla_fr(model, counts, tau=1.7, realign=False)
    assert torch.equal(raw.realigned_global_weight, raw.global_weight)
    assert torch.equal(raw.local_weight, model.local_head.weight.detach())
    with pytest.raises(ValueError, match="personal_global"):
        gla_fr(model, counts, tau=1.7, personal_global="local")
    with pytest.raises(ValueError, match="formula"):
        gla_fr(model, counts, tau=1.7, formula="local")


# ------------------------------------------------------------------ client
def _context(settings, pid=0, nodes=10):
    node_config = {"partition-id": pid, "num-partitions": nodes}
    return Context(run_id=1, node_id=pid + 1, node_config=node_config, state=RecordDict(), run_config=settings.raw)


def _instruction(model, message_type, **config):
    content = RecordDict(
        {"arrays": shared_arrays(model, is_shared), "config": ConfigRecord({"server-round": 1, **config})}
    )
    return Message(content=content, dst_node_id=1, message_type=message_type)


def test_local_head_stays_on_the_client_and_comes_back_next_round():
    settings = _settings(**{"train.local-epochs": 1})
    model = _model(settings)
    context = _context(settings, pid=5)
    first = client_app(_instruction(model, "train"), context)
    sent = set(first.content["arrays"].keys())
    assert not any("local_head" in k or "sse_c" in k for k in sent)
    assert sent == set(shared_arrays(model, is_shared).keys())
    assert list(first.content.array_records) == ["arrays"]  # nothing else travels
    private = to_numpy(context.state["private"])
    assert set(private) == {"local_head.weight", "local_head.bias"}
    assert not np.allclose(private["local_head.weight"], model.local_head.weight.detach().numpy())  # it trained
    second = client_app(_instruction(model, "train"), context)
    assert not np.allclose(to_numpy(context.state["private"])["local_head.weight"], private["local_head.weight"])
    assert first.content["metrics"]["label-counts"] == second.content["metrics"]["label-counts"]


def test_evaluate_scores_every_mode_on_the_clients_own_long_tailed_test_data():
    settings = _settings(**{"train.local-epochs": 1})
    context = _context(settings, pid=5)
    model = _model(settings)
    client_app(_instruction(model, "train"), context)
    evaluated = client_app(_instruction(model, "evaluate", realign=True), context)
    assert list(evaluated.content.array_records) == []  # no head (or anything else) leaves in evaluate replies
    metrics = evaluated.content["metrics"]
    client = FedLoGeClient(settings, context)
    train_counts = np.asarray(client.data.label_counts())
    test_counts = np.bincount(client.data.test_y.numpy(), minlength=10)
    own = proportional_counts(train_counts, test_counts)
    assert (own[train_counts == 0] == 0).all() and own.sum() < test_counts.sum()  # long-tailed, non-IID
    for mode in MODES:  # all three modes (and the ablation) on the same own test set
        assert metrics[f"{mode}-class-total"] == own.tolist(), mode
    for mode in BALANCED_MODES:
        assert metrics[f"{mode}-balanced-class-total"] == test_counts.tolist(), mode
    assert metrics["test-accuracy"] == pytest.approx(metrics["global-balanced-accuracy"])
    assert metrics["personal-class-correct"] == metrics["personal-raw-heads-class-correct"]  # the default formula
    for mode in REPORTED_MODES:
        assert sum(metrics[f"{mode}-class-correct"]) / sum(metrics[f"{mode}-class-total"]) == pytest.approx(
            metrics[f"{mode}-accuracy"]
        )
    # every mode also on the client's own validation split (what a default is chosen on, never the test set)
    val_y = client.data.val_y.numpy()
    assert len(val_y) and set(np.unique(val_y)) <= set(np.flatnonzero(train_counts))  # drawn from its own data
    for mode in MODES:
        assert 0.0 <= metrics[f"val-{mode}-accuracy"] <= 1.0, mode
    assert metrics["val-global-accuracy"] == pytest.approx(metrics["val-accuracy"])
    assert metrics["val-personal-accuracy"] == pytest.approx(metrics["val-personal-raw-heads-accuracy"])
    assert {"local-only", "global-only"} <= set(MODES)
    # personal mode never predicts a class the client has not seen, so it cannot be right about one
    absent = train_counts == 0
    assert absent.any() and np.asarray(metrics["personal-class-correct"])[absent].sum() == 0


# ------------------------------------------------------------------ strategy
class FakeGrid:
    def __init__(self, nodes):
        self.nodes = list(nodes)

    def get_node_ids(self):
        return self.nodes


W = {"backbone.w": np.zeros((2, 2), np.float32), "global_head.weight": np.zeros((3, 2), np.float32)}


def _strategy(**kwargs):
    return FedLoGeStrategy(num_classes=3, num_rounds=5, min_available_nodes=1, **kwargs)


def _train_metrics(n, pid, counts):
    return {"num-examples": n, "partition-id": pid, "train-loss": 1.0, "label-counts": counts}


def _trained(strategy):
    sent = list(strategy.configure_train(1, to_record(W), ConfigRecord(), FakeGrid([1, 2, 3])))
    replies = [
        reply(sent[0], {k: np.full_like(v, 1.0) for k, v in W.items()}, _train_metrics(10, 0, [8, 2, 0])),
        reply(sent[1], {k: np.full_like(v, 4.0) for k, v in W.items()}, _train_metrics(30, 1, [10, 15, 5])),
        reply(sent[2], {k: np.full_like(v, 9.0) for k, v in W.items()}, _train_metrics(5, 2, [1, 2])),  # bad
    ]
    return strategy.aggregate_train(1, replies)


def test_strategy_averages_shared_arrays_and_learns_class_frequencies():
    strategy = _strategy()
    arrays, _ = _trained(strategy)
    np.testing.assert_allclose(to_numpy(arrays)["global_head.weight"], np.full((3, 2), 3.25))
    assert [reason for _, reason in strategy.rejections] == ["'label-counts' must list 3 per-class counts"]
    assert strategy.class_frequencies().tolist() == [18, 17, 5]
    assert strategy.groups().tolist() == [0, 0, 1]  # 18+17 = 87.5 % >= 75 %: head {0, 1}; class 2 crosses 95 %


def test_strategy_turns_per_class_counts_into_group_accuracies():
    strategy = _strategy(realign_each_round=False)
    _trained(strategy)
    sent = list(strategy.configure_evaluate(2, to_record(W), ConfigRecord(), FakeGrid([1, 2])))
    assert sent[0].content["config"]["realign"] is False
    last = list(strategy.configure_evaluate(5, to_record(W), ConfigRecord(), FakeGrid([1, 2])))
    assert last[0].content["config"]["realign"] is True  # GLA-FR always after the last round

    def metrics(pid, correct, total):
        base = {"num-examples": 10, "partition-id": pid, "test-accuracy": 0.5}
        for mode in REPORTED_MODES:
            base |= {f"{mode}-accuracy": 0.5, f"{mode}-class-correct": correct, f"{mode}-class-total": total}
        return base

    replies = [
        reply(sent[0], None, metrics(0, [4, 1, 0], [4, 2, 0])),
        reply(sent[1], None, metrics(1, [2, 0, 3], [4, 1, 3])),
    ]
    aggregated = strategy.aggregate_evaluate(2, replies)
    assert aggregated["personal-head-accuracy"] == pytest.approx((5 / 6 + 2 / 5) / 2)
    assert aggregated["global-medium-accuracy"] == pytest.approx(1.0)  # only client 1 has class 2 samples
    report = strategy.round_report()
    assert report["realigned"] is False and report["groups"] == {"head": [0, 1], "medium": [2], "tail": []}
    final = strategy.final_report()
    assert final["class_frequencies"] == [18, 17, 5] and final["modes"]["generic"]["class_accuracy"][2] == 1.0


def test_strategy_state_round_trips():
    strategy = _strategy()
    _trained(strategy)
    restored = _strategy()
    restored.load_state_dict(strategy.state_dict())
    assert restored.class_frequencies().tolist() == [18, 17, 5]
    empty = _strategy()
    empty.load_state_dict(_strategy().state_dict())
    assert empty.groups() is None


# ------------------------------------------------------------------ config and conf files
def test_group_shares_must_nest():
    with pytest.raises(ConfigError, match="'fedloge.medium-share' has invalid value 0.5"):
        _settings(**{"fedloge.head-share": 0.8, "fedloge.medium-share": 0.5})
    with pytest.raises(ConfigError, match="'fedloge.tau'"):
        _settings(**{"fedloge.tau": 0.0})


@pytest.mark.parametrize(
    "name", ["fedloge_digits_lt.toml", "fedavg_digits_lt.toml", "fedloge_digits_lt_reference.toml"]
)
def test_conf_files_describe_the_same_digits_lt_experiment(name):
    values = tomllib.loads((ROOT / "conf" / name).read_text())
    settings = load_settings(full_run_config(**values))
    assert settings.partition.kind == "long-tail" and settings.partition.imbalance_factor == 0.01
    assert settings.partition.alpha == 0.5 and settings.dataset.name == "digits"
    if name.endswith("_reference.toml"):  # the reference code's local-training hyper-parameters
        train = settings.train
        assert (train.lr, train.momentum, train.batch_size, train.local_epochs) == (0.03, 0.5, 8, 5)
        opts = settings.method_options
        assert (opts.sse_c, opts.personal_formula, opts.local_refit_epochs) == ("reference", "raw-local", 0)


# ------------------------------------------------------------------ whole runs
RUN = {**LT, "num-server-rounds": 2, "train.local-epochs": 1}


def _run_config(root, method, **extra):
    return full_run_config(**{**RUN, "method": method, "log-dir": str(root), "experiment-name": method, **extra})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """fedloge (2 rounds) and fedavg (1 round), 3 clients, the same long-tailed split."""
    claim_server_identity()
    root = tmp_path_factory.mktemp("runs")
    run_local(server_app, client_app, 3, _run_config(root, "fedloge"))
    run_local(server_app, client_app, 3, _run_config(root, "fedavg", **{"num-server-rounds": 1}))
    return root


def _rounds(folder):
    return [json.loads(line) for line in (folder / "rounds.jsonl").read_text().splitlines()]


def test_fedloge_and_fedavg_runs_report_head_medium_tail(runs):
    folder = runs / "fedloge"
    summary = json.loads((folder / "summary.json").read_text())
    report = summary["fedloge"]
    assert report["final_round"] == 2 and report["realigned"] is True
    assert set(report["modes"]) == set(REPORTED_MODES) and sum(report["class_frequencies"]) > 0
    assert set(report["groups"]) == {"head", "medium", "tail"} and report["groups"]["tail"]
    assert summary["final"]["accuracy"] == pytest.approx(report["modes"]["global-balanced"]["overall"])
    rounds = _rounds(folder)
    assert [r["round"] for r in rounds] == [1, 2]
    assert all(set(r["strategy"]["modes"]) == set(REPORTED_MODES) for r in rounds)
    aggregated = rounds[-1]["evaluate"]["aggregated"]
    for mode in ("generic", "global", "personal"):
        assert aggregated[f"{mode}-overall-accuracy"] == report["modes"][mode]["overall"]
        assert aggregated[f"{mode}-head-accuracy"] == report["modes"][mode]["head"]
    for png in ("fedloge_class_accuracy.png", "fedloge_modes.png", "accuracy.png"):
        assert (folder / png).is_file(), png

    # fedavg's final model, scored on exactly the clients' own long-tailed test sets and groups
    fedavg = group_report(runs / "fedavg")
    fedavg_summary = json.loads((runs / "fedavg" / "summary.json").read_text())
    assert set(fedavg) == {"model", "model-balanced"}
    assert fedavg["model-balanced"]["overall"] == pytest.approx(fedavg_summary["final"]["accuracy"], abs=1e-9)
    assert fedavg["model"]["class_total"] == report["modes"]["personal"]["class_total"]
    assert fedavg["model-balanced"]["class_total"] == report["modes"]["generic-balanced"]["class_total"]
    table = comparison_table([runs / "fedavg", folder])
    assert "| fedavg | fedavg | model |" in table and "| fedloge | fedloge | personal |" in table
    assert fedavg["model"]["groups"] == report["groups"]  # the same head/medium/tail classes


def test_pooled_tail_accuracy_counts_images_not_clients():
    figures = {"class_accuracy": [1.0, None, 0.5, 0.25], "class_total": [10, 0, 2, 4]}
    assert pooled_accuracy(figures, [1, 2, 3]) == pytest.approx((1 + 1) / 6)
    assert pooled_accuracy(figures, [1]) is None and pooled_accuracy(figures, []) is None


def test_a_resumed_fedloge_run_continues_the_shared_model_exactly(runs, tmp_path):
    """Interrupted after round 1, resumed by a fresh federation (empty context.state).

    The backbone and the global head never see the local heads (detached features),
    so generic and global figures equal the uninterrupted run's; the private local
    heads restart on the clients (documented), which only the personal mode sees.
    """
    from fedvq_app.errors import RunFailed  # noqa: PLC0415
    from tests.test_resume import Interrupted  # noqa: PLC0415

    class CrashInRound2(LocalGrid):
        """Dies sending round 2's model for evaluation: round 1 is recorded and checkpointed by then
        (its evaluation came back with round 2's train replies, evaluate-with-train)."""

        def send_and_receive(self, messages, *, timeout=None):
            messages = list(messages)
            for msg in messages:
                if msg.metadata.message_type == "evaluate" and msg.content["config"]["server-round"] == 2:
                    raise Interrupted("server killed in round 2")
            return super().send_and_receive(messages, timeout=timeout)

    config = _run_config(tmp_path, "fedloge", **{"experiment-name": "resumed"})
    with pytest.raises(RunFailed, match="internal error Interrupted"):  # a crash ends the run as failed
        server_app(grid=CrashInRound2(client_app, 3, config), context=_server_context(config))
    folder = tmp_path / "resumed"
    assert [r["round"] for r in _rounds(folder)] == [1]
    saved = load_checkpoint(folder).strategy_state
    assert saved["label_counts/counts"].sum() > 0  # the class frequencies survive the restart
    run_local(server_app, client_app, 3, {**config, "resume-from": str(folder)})

    straight = json.loads((runs / "fedloge" / "summary.json").read_text())["fedloge"]
    resumed = json.loads((folder / "summary.json").read_text())["fedloge"]
    assert resumed["final_round"] == 2 and resumed["groups"] == straight["groups"]
    assert resumed["class_frequencies"] == straight["class_frequencies"]
    for mode in ("generic", "global", "raw-global", "generic-balanced", "global-balanced"):
        assert resumed["modes"][mode] == straight["modes"][mode], mode
    assert resumed["modes"]["personal"]["class_total"] == straight["modes"]["personal"]["class_total"]
    assert [r["round"] for r in _rounds(folder)] == [1, 2]


def _server_context(config):
    return Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=dict(config))


def test_local_refit_retrains_only_the_local_head_for_the_evaluation_and_saves_nothing(monkeypatch):
    settings = _settings(**{"train.local-epochs": 1, "fedloge.local-refit-epochs": 0})
    refit = _settings(**{"train.local-epochs": 1, "fedloge.local-refit-epochs": 3})
    model = _model(settings)
    out = {}
    for name, s in (("plain", settings), ("refit", refit)):
        context = _context(s, pid=5)
        client_app(_instruction(model, "train"), context)
        stored = to_numpy(context.state["private"])["local_head.weight"].copy()
        out[name] = client_app(_instruction(model, "evaluate", realign=True), context).content["metrics"]
        assert np.array_equal(to_numpy(context.state["private"])["local_head.weight"], stored)  # nothing saved
    plain, refitted = out["plain"], out["refit"]
    for mode in ("generic", "global", "raw-global", "global-only"):  # backbone, SSE-C and global head untouched
        assert plain[f"{mode}-class-correct"] == refitted[f"{mode}-class-correct"], mode
        assert plain[f"val-{mode}-accuracy"] == refitted[f"val-{mode}-accuracy"], mode
    assert plain["test-accuracy"] == refitted["test-accuracy"]
    # the refit trains the local head (its training loss falls) and nothing else
    context = _context(refit, pid=5)
    client_app(_instruction(model, "train"), context)
    client = FedLoGeClient(refit, context)
    msg = _instruction(model, "evaluate")
    trained = client.load_model(msg)
    backbone = [p.detach().clone() for p in trained.backbone.parameters()]
    feats, labels = client._features(trained, client.data.train_x, client.data.train_y)
    before = float(F.cross_entropy(trained.local_head(feats), labels))
    client.refit_local_head(trained, msg)
    assert float(F.cross_entropy(trained.local_head(feats), labels)) < before
    assert all(torch.equal(a, b) for a, b in zip(backbone, trained.backbone.parameters(), strict=True))

    # and the personal modes score the head the refit leaves: force it to one class, see only that class right
    def one_class(self, net, message):
        with torch.no_grad():
            net.local_head.weight.zero_()
            net.local_head.bias.fill_(-1e3)
            net.local_head.bias[3] = 1e3

    monkeypatch.setattr(FedLoGeClient, "refit_local_head", one_class)
    metrics = client_app(_instruction(model, "evaluate", realign=True), context).content["metrics"]
    correct = np.asarray(metrics["local-only-class-correct"])
    assert correct[3] > 0 and correct.sum() == correct[3]
