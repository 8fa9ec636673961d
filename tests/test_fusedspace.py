"""FusedSpaceFed: model split, decoder-only aggregation, client warm-up and task-aware loss, a whole run."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict

from fedvq_app.client_app import app as client_app
from fedvq_app.clients.fusedspace import FusedSpaceClient
from fedvq_app.config import load_settings
from fedvq_app.local_grid import full_run_config, run_local
from fedvq_app.models.fusedspace import is_shared
from fedvq_app.models.state import private_arrays, shared_arrays
from fedvq_app.records import to_numpy, to_record
from fedvq_app.registry import get_method
from fedvq_app.server_app import app as server_app
from fedvq_app.strategies.fusedspace import DecoderOnlyFedAvg
from tests.conftest import reply

ROOT = Path(__file__).resolve().parent.parent


def _settings(**overrides):
    return load_settings(full_run_config(method="fusedspace", **overrides))


def _model(settings, size=28, channels=1, classes=10, seed=0):
    from fedvq_app.data.datasets import DatasetInfo  # noqa: PLC0415

    torch.manual_seed(seed)
    info = DatasetInfo("digits", classes, channels, size, tuple(map(str, range(classes))))
    return get_method("fusedspace").build_model(settings, info)


# ----------------------------------------------------------------------------- model
def test_encoder_is_private_decoder_and_classifier_are_shared():
    model = _model(_settings())
    shared, private = to_numpy(shared_arrays(model, is_shared)), to_numpy(private_arrays(model, is_shared))
    assert private and all(k.startswith("encoder.") for k in private)
    assert not any(k.startswith("encoder.") for k in shared)
    assert {k.split(".")[0] for k in shared} == {"decoder", "classifier"}
    assert set(shared) | set(private) == set(model.state_dict())


@pytest.mark.parametrize(("size", "channels"), [(28, 1), (30, 3)])
def test_fused_input_has_the_image_shape_and_dz_sets_the_latent(size, channels):
    model = _model(_settings(**{"fusedspace.dz": 5}), size=size, channels=channels)
    x = torch.randn(4, channels, size, size)
    assert model.encoder(x).shape[1] == 5
    logits, reconstruction = model.fused_logits(x)
    assert reconstruction.shape == x.shape and logits.shape == (4, 10)
    torch.testing.assert_close(model(x), logits)


# ----------------------------------------------------------------------------- strategy
class FakeGrid:
    def get_node_ids(self):
        return [1, 2, 3]


SHARED = {"decoder.w": np.zeros((2, 2), np.float32), "classifier.b": np.zeros(3, np.float32)}


def _configured(strategy):
    sent = strategy.configure_train(1, to_record(SHARED), ConfigRecord(), FakeGrid())
    return sorted(sent, key=lambda m: m.metadata.dst_node_id)


def _metrics(n, pid):
    return {"num-examples": n, "partition-id": pid, "train-loss": 1.0}


def test_decoder_only_aggregation_weights_the_shared_parameters_by_examples():
    strategy = DecoderOnlyFedAvg(is_shared=is_shared, min_available_nodes=1)
    sent = _configured(strategy)
    replies = [
        reply(sent[0], {"decoder.w": np.full((2, 2), 1.0, np.float32), "classifier.b": np.ones(3, np.float32)},
              _metrics(10, 0)),
        reply(sent[1], {"decoder.w": np.full((2, 2), 5.0, np.float32), "classifier.b": np.zeros(3, np.float32)},
              _metrics(30, 1)),
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    out = to_numpy(arrays)
    assert list(out) == ["decoder.w", "classifier.b"]
    np.testing.assert_allclose(out["decoder.w"], np.full((2, 2), 4.0))
    np.testing.assert_allclose(out["classifier.b"], np.full(3, 0.25))
    assert strategy.round_report()["shared-tensors"] == 2


@pytest.mark.parametrize("where", ["arrays", "extra-record"])
def test_a_reply_carrying_an_encoder_tensor_is_rejected(where):
    strategy = DecoderOnlyFedAvg(is_shared=is_shared, min_available_nodes=1)
    sent = _configured(strategy)
    good = {k: v + 1 for k, v in SHARED.items()}
    leak = {"encoder.0.weight": np.ones(4, np.float32)}
    bad = (
        reply(sent[1], {**good, **leak}, _metrics(50, 1))
        if where == "arrays"
        else reply(sent[1], good, _metrics(50, 1), stats=to_record(leak))
    )
    arrays, _ = strategy.aggregate_train(1, [reply(sent[0], good, _metrics(10, 0)), bad])
    np.testing.assert_allclose(to_numpy(arrays)["decoder.w"], good["decoder.w"])  # only node 1 counted
    assert [n for n, _ in strategy.rejections] == [sent[1].metadata.dst_node_id]
    if where == "extra-record":
        assert "encoder" in strategy.rejections[0][1]


def test_the_server_never_sends_private_parameters():
    strategy = DecoderOnlyFedAvg(is_shared=is_shared, min_available_nodes=1)
    with pytest.raises(ValueError, match="shared parameters only"):
        strategy.configure_train(1, to_record({**SHARED, "encoder.w": np.zeros(1)}), ConfigRecord(), FakeGrid())


# ----------------------------------------------------------------------------- client
def _client(settings, config):
    context = Context(run_id=1, node_id=1, node_config={"partition-id": 0, "num-partitions": 3},
                      state=RecordDict(), run_config=config)
    return FusedSpaceClient(settings, context)


def _train_message(client):
    model = client.build_model()
    content = {"arrays": shared_arrays(model, is_shared), "config": ConfigRecord({"server-round": 1, "lr": 0.05})}
    return Message(content=RecordDict(content), dst_node_id=1, message_type="train")


def test_warmup_trains_the_encoder_alone_against_the_frozen_decoder():
    config = full_run_config(method="fusedspace", **{"fusedspace.warmup-epochs": 2})
    client = _client(load_settings(config), config)
    msg = _train_message(client)
    model = client.load_model(msg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first = client.encoder_warmup(model, msg)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in after if not k.startswith("encoder."))
    assert any(not torch.equal(before[k], after[k]) for k in after if k.startswith("encoder."))
    assert all(p.requires_grad for p in model.parameters())  # unfrozen again
    assert client.encoder_warmup(model, msg) < first  # reconstruction improves


def test_classification_gradient_flows_into_the_autoencoder():
    config = full_run_config(method="fusedspace", **{"fusedspace.lambda-rec": 0.0})
    client = _client(load_settings(config), config)
    model = client.build_model()
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    loss, _ = client.batch_loss(model, x, y)
    loss.backward()
    for part in (model.encoder, model.decoder):
        assert sum(float(p.grad.abs().sum()) for p in part.parameters()) > 0


def test_train_reply_holds_no_encoder_and_the_encoder_stays_in_the_state():
    config = full_run_config(method="fusedspace")
    client = _client(load_settings(config), config)
    answer = client.train(_train_message(client)).content
    for record in answer.array_records.values():
        assert not any(k.startswith("encoder.") for k in record.keys())
    assert set(answer["arrays"].keys()) == set(shared_arrays(client.build_model(), is_shared).keys())
    kept = client.context.state["private"]
    assert kept.keys() and all(k.startswith("encoder.") for k in kept.keys())
    stats = answer["fusedspace"]
    assert stats["warmup-loss"] > 0 and stats["reconstruction-loss"] > 0


def test_ae_lr_gives_the_autoencoder_its_own_adam_and_zero_puts_all_on_the_loop_optimizer():
    config = full_run_config(method="fusedspace", **{"fusedspace.ae-lr": 0.002})
    client = _client(load_settings(config), config)
    model = client.build_model()
    names = {id(p): n.split(".")[0] for n, p in model.named_parameters()}
    assert {names[id(p)] for p in client.trainable_parameters(model)} == {"classifier"}
    (hook,) = client.train_hooks(model, _train_message(client))
    assert isinstance(hook.optimizer, torch.optim.Adam) and hook.optimizer.defaults["lr"] == 0.002
    assert {names[id(p)] for g in hook.optimizer.param_groups for p in g["params"]} == {"encoder", "decoder"}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss, _ = client.batch_loss(model, torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,)))
    loss.backward()
    hook.after_step(model)  # Adam's first step moves every parameter with a gradient by about lr
    for k, v in model.state_dict().items():
        step = float((v - before[k]).abs().max())
        if k.startswith("classifier."):
            assert step == 0.0  # the loop's optimizer, not the hook, moves the classifier
        else:
            assert 0.0 < step <= 0.002 * 1.01, k
    assert all(p.grad is None for p in [*model.encoder.parameters(), *model.decoder.parameters()])

    config = full_run_config(method="fusedspace", **{"fusedspace.ae-lr": 0.0})
    client = _client(load_settings(config), config)
    model = client.build_model()
    assert client.train_hooks(model, _train_message(client)) == []
    assert len(list(client.trainable_parameters(model))) == len(list(model.parameters()))


def test_gamma_scope_selects_the_gradient_parameters():
    for scope, prefixes in (("classifier", {"classifier"}), ("shared", {"classifier", "decoder"})):
        config = full_run_config(method="fusedspace", **{"fusedspace.gamma-scope": scope})
        client = _client(load_settings(config), config)
        names = client.gradient_parameters(client.build_model())
        assert {n.split(".")[0] for n in names} == prefixes


# ----------------------------------------------------------------------------- whole run
def test_a_run_learns_reports_gamma_and_never_sends_an_encoder(tmp_path):
    seen = []

    def inspect(node, msg):
        seen.append(msg)
        return msg

    overrides = {"num-server-rounds": 2, "train.local-epochs": 1, "log-dir": str(tmp_path), "experiment-name": "fs",
                 "metrics.gradient-dissimilarity": True}
    run_local(server_app, client_app, 3, full_run_config(method="fusedspace", **overrides), tamper=inspect)
    assert len(seen) == 12  # 3 nodes x 2 rounds x (train + evaluate)
    for msg in seen:
        for record in msg.content.array_records.values():
            assert not any(k.startswith("encoder.") for k in record.keys())
    summary = json.loads((tmp_path / "fs" / "summary.json").read_text())
    assert summary["final"]["accuracy"] > 0.3  # chance is 0.1
    assert summary["gradient_dissimilarity"]["final"] >= 1.0
    assert summary["fusedspace"]["reconstruction-loss"] > 0
    rounds = [json.loads(line) for line in (tmp_path / "fs" / "rounds.jsonl").read_text().splitlines()]
    assert all(r["evaluate"]["aggregated"]["gradient-dissimilarity"] >= 1.0 for r in rounds)
    assert (tmp_path / "fs" / "fusedspace_training.png").is_file()


def test_conf_files_of_the_seed_tables_are_valid():
    files = sorted((ROOT / "conf").glob("seed003_*.toml"))
    assert len(files) == 16  # {digits, pathmnist} x {dirichlet 0.05, pathological 2} x 4 methods
    methods = set()
    for path in files:
        conf = tomllib.loads(path.read_text())
        settings = load_settings(full_run_config(**conf))
        methods.add(settings.method)
        assert settings.metrics.gradient_dissimilarity
        if settings.partition.kind == "dirichlet":
            assert settings.partition.alpha == 0.05
        else:
            assert settings.partition.kind == "pathological" and settings.partition.classes_per_client == 2
    assert methods == {"fedavg", "fedprox", "scaffold", "fusedspace"}
