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
from fedvq_app.clients.fusedspace import FusedSpaceClient, autoencoder_parameters
from fedvq_app.local_grid import full_run_config, run_local
from fedvq_app.models.fusedspace import is_shared
from fedvq_app.models.state import load_arrays, private_arrays, shared_arrays
from fedvq_app.protocol import FUSEDSPACE_OPTIMIZER_STATE
from fedvq_app.records import to_numpy, to_record
from fedvq_app.registry import get_method, load_settings
from fedvq_app.server_app import app as server_app
from fedvq_app.strategies.fusedspace import FusedSpaceStrategy
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
@pytest.mark.parametrize("autoencoder", ["unet", "plain"])
def test_encoder_is_private_decoder_and_classifier_are_shared(autoencoder):
    model = _model(_settings(**{"fusedspace.autoencoder": autoencoder}))
    shared, private = to_numpy(shared_arrays(model, is_shared)), to_numpy(private_arrays(model, is_shared))
    assert private and all(k.startswith("encoder.") for k in private)
    assert not any(k.startswith("encoder.") for k in shared)
    assert {k.split(".")[0] for k in shared} == {"decoder", "classifier"}
    assert set(shared) | set(private) == set(model.state_dict()) and not set(shared) & set(private)
    if autoencoder == "unet":  # the reference's split: encoder levels + bottleneck private, up-sampling shared
        assert {k.split(".")[1] for k in private} == {"level1", "level2", "bottleneck"}
        assert {k.split(".")[1] for k in shared if k.startswith("decoder.")} == {
            "up2",
            "level2",
            "up1",
            "level1",
            "output",
        }


def test_unet_skips_carry_the_private_encoder_into_the_shared_decoder_but_no_parameter_travels():
    settings = _settings(**{"fusedspace.autoencoder": "unet"})
    a, b = _model(settings, seed=1), _model(settings, seed=2)
    load_arrays(b, shared_arrays(a, is_shared))  # b receives a's decoder + classifier
    for name, tensor in b.state_dict().items():
        same = torch.equal(tensor, a.state_dict()[name])
        assert same == (not name.startswith("encoder.")), name  # b's encoder is untouched
    x = torch.randn(3, 1, 28, 28)
    z, e2, e1 = b.encoder(x)
    with torch.no_grad():  # the decoder reads the level outputs: changing a skip changes the reconstruction
        assert not torch.allclose(b.decoder((z, e2, e1)), b.decoder((z, e2, torch.zeros_like(e1))))
        assert not torch.allclose(a.reconstruct(x), b.reconstruct(x))  # same decoder, different encoders


@pytest.mark.parametrize(("size", "channels"), [(28, 1), (30, 3), (8, 1)])
@pytest.mark.parametrize("autoencoder", ["unet", "plain"])
def test_fused_input_has_the_image_shape_and_the_latent_its_width(size, channels, autoencoder):
    settings = _settings(**{"fusedspace.dz": 5, "fusedspace.width": 4, "fusedspace.autoencoder": autoencoder})
    model = _model(settings, size=size, channels=channels)
    x = torch.randn(4, channels, size, size)
    encoded = model.encoder(x)
    latent = encoded[0] if autoencoder == "unet" else encoded
    assert latent.shape[1:] == ((16 if autoencoder == "unet" else 5), size // 4, size // 4)
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
    strategy = FusedSpaceStrategy(is_shared=is_shared, min_available_nodes=1)
    sent = _configured(strategy)
    replies = [
        reply(
            sent[0],
            {"decoder.w": np.full((2, 2), 1.0, np.float32), "classifier.b": np.ones(3, np.float32)},
            _metrics(10, 0),
        ),
        reply(
            sent[1],
            {"decoder.w": np.full((2, 2), 5.0, np.float32), "classifier.b": np.zeros(3, np.float32)},
            _metrics(30, 1),
        ),
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    out = to_numpy(arrays)
    assert list(out) == ["decoder.w", "classifier.b"]
    np.testing.assert_allclose(out["decoder.w"], np.full((2, 2), 4.0))
    np.testing.assert_allclose(out["classifier.b"], np.full(3, 0.25))
    assert strategy.round_report()["shared-tensors"] == 2


@pytest.mark.parametrize("where", ["arrays", "extra-record"])
def test_a_reply_carrying_an_encoder_tensor_is_rejected(where):
    strategy = FusedSpaceStrategy(is_shared=is_shared, min_available_nodes=1)
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
    strategy = FusedSpaceStrategy(is_shared=is_shared, min_available_nodes=1)
    with pytest.raises(ValueError, match="shared parameters only"):
        strategy.configure_train(1, to_record({**SHARED, "encoder.w": np.zeros(1)}), ConfigRecord(), FakeGrid())


# ----------------------------------------------------------------------------- client
def _config(**overrides):
    """Client-level tests run on the native 8x8 digits, one local epoch (fast)."""
    return full_run_config(method="fusedspace", **{"dataset.size": 8, "train.local-epochs": 1, **overrides})


def _client(settings, config):
    context = Context(
        run_id=1, node_id=1, node_config={"partition-id": 0, "num-partitions": 3}, state=RecordDict(), run_config=config
    )
    return FusedSpaceClient(settings, context)


def _train_message(client):
    model = client.build_model()
    content = {"arrays": shared_arrays(model, is_shared), "config": ConfigRecord({"server-round": 1, "lr": 0.05})}
    return Message(content=RecordDict(content), dst_node_id=1, message_type="train")


def test_warmup_trains_the_encoder_alone_against_the_frozen_decoder():
    config = _config(**{"fusedspace.warmup-epochs": 1})
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


def _grads(model, client, x, y):
    model.zero_grad(set_to_none=True)
    loss, _ = client.batch_loss(model, x, y)
    loss.backward()
    return {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for n, p in model.named_parameters()}


def test_task_aware_sends_the_classification_gradient_into_the_autoencoder_and_false_detaches_it():
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    grads = {}
    for aware in (True, False):
        config = _config(**{"fusedspace.lambda-rec": 0.0, "fusedspace.task-aware": aware})
        client = _client(load_settings(config), config)
        grads[aware] = _grads(client.build_model(), client, x, y)
    for name, g in grads[True].items():
        if name.startswith(("encoder.", "decoder.")):
            assert float(g.abs().sum()) > 0, name  # task-aware: CE reaches the autoencoder
            assert float(grads[False][name].abs().sum()) == 0, name  # reference: it does not
        else:
            torch.testing.assert_close(g, grads[False][name])  # the classifier's gradient is the same

    # task-aware false, lambda 1: the autoencoder's gradient is exactly that of the reconstruction loss alone
    config = _config(**{"fusedspace.task-aware": False, "fusedspace.lambda-rec": 1.0})
    client = _client(load_settings(config), config)
    model = client.build_model()
    both = _grads(model, client, x, y)
    model.zero_grad(set_to_none=True)
    torch.nn.functional.mse_loss(model.reconstruct(x), x).backward()
    for name, p in model.named_parameters():
        if name.startswith(("encoder.", "decoder.")):
            torch.testing.assert_close(both[name], p.grad)


def test_the_reference_sgd_keeps_its_momentum_across_rounds_in_the_context_state():
    config = _config(**{"fusedspace.warmup-epochs": 0})
    client = _client(load_settings(config), config)
    model = client.build_model()
    names = {id(p): n.split(".")[0] for n, p in model.named_parameters()}
    assert {names[id(p)] for p in client.trainable_parameters(model)} == {"classifier"}
    (hook,) = client.train_hooks(model, _train_message(client))
    opt = hook.optimizer
    assert isinstance(opt, torch.optim.SGD)
    assert (opt.defaults["lr"], opt.defaults["momentum"], opt.defaults["weight_decay"]) == (0.01, 0.9, 5e-4)
    assert {names[id(p)] for g in opt.param_groups for p in g["params"]} == {"encoder", "decoder"}
    assert FUSEDSPACE_OPTIMIZER_STATE not in client.context.state

    client.train(_train_message(client))
    saved = to_numpy(client.context.state[FUSEDSPACE_OPTIMIZER_STATE])
    ae_names = [n for n, _ in autoencoder_parameters(model)]
    assert set(saved) == {f"{n}/momentum_buffer" for n in ae_names}
    # the next round's optimizer starts from those buffers: one step from the restored state equals
    # one more step of an optimizer that never stopped
    model = client.build_model()
    restored = client.make_ae_optimizer(model)
    for (name, p), group_p in zip(autoencoder_parameters(model), restored.param_groups[0]["params"], strict=True):
        assert group_p is p
        np.testing.assert_array_equal(restored.state[p]["momentum_buffer"].numpy(), saved[f"{name}/momentum_buffer"])
    twin = client.build_model()
    continuing = torch.optim.SGD([p for _, p in autoencoder_parameters(twin)], lr=0.01, momentum=0.9, weight_decay=5e-4)
    for (_, p), (_, q) in zip(autoencoder_parameters(model), autoencoder_parameters(twin), strict=True):
        continuing.state[q]["momentum_buffer"] = restored.state[p]["momentum_buffer"].clone()
        p.grad = torch.ones_like(p)
        q.grad = torch.ones_like(q)
    restored.step()
    continuing.step()
    for (_, p), (_, q) in zip(autoencoder_parameters(model), autoencoder_parameters(twin), strict=True):
        torch.testing.assert_close(p, q)

    fresh_config = _config(**{"fusedspace.ae-keep-state": False})
    fresh = _client(load_settings(fresh_config), fresh_config)
    fresh.train(_train_message(fresh))
    assert FUSEDSPACE_OPTIMIZER_STATE not in fresh.context.state


def test_adam_option_and_ae_lr_zero_puts_all_on_the_loop_optimizer():
    config = _config(
        **{"fusedspace.ae-optimizer": "adam", "fusedspace.ae-lr": 0.002, "fusedspace.ae-weight-decay": 0.0}
    )
    client = _client(load_settings(config), config)
    model = client.build_model()
    (hook,) = client.train_hooks(model, _train_message(client))
    assert isinstance(hook.optimizer, torch.optim.Adam) and hook.optimizer.defaults["lr"] == 0.002
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss, _ = client.batch_loss(model, torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,)))
    loss.backward()
    hook.after_step(model)  # Adam's first step moves every parameter with a gradient by about lr
    for k, v in model.state_dict().items():
        step = float((v - before[k]).abs().max())
        if k.startswith("classifier."):
            assert step == 0.0  # the loop's optimizer, not the hook, moves the classifier
        else:
            assert 0.0 < step <= 0.002 * 1.01, k
    assert all(p.grad is None for p in [*model.encoder.parameters(), *model.decoder.parameters()])

    config = _config(**{"fusedspace.ae-lr": 0.0})
    client = _client(load_settings(config), config)
    model = client.build_model()
    assert client.train_hooks(model, _train_message(client)) == []
    assert len(list(client.trainable_parameters(model))) == len(list(model.parameters()))


def test_l2sp_pulls_the_encoder_towards_its_initial_weights():
    config = _config(**{"fusedspace.l2sp": 0.5})
    client = _client(load_settings(config), config)
    model = client.build_model()
    assert float(client.l2sp_penalty(model)) == 0.0  # at the seeded initial encoder
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(0.1)
    count = sum(p.numel() for p in model.encoder.parameters())
    penalty = client.l2sp_penalty(model)
    assert float(penalty) == pytest.approx(0.5 * count * 0.01, rel=1e-4)
    penalty.backward()
    for p in model.encoder.parameters():  # d/dw of 0.5 * (w - w0)^2 summed = (w - w0) = 0.1
        torch.testing.assert_close(p.grad, torch.full_like(p, 0.1))
    off = _config()
    assert _client(load_settings(off), off).l2sp_penalty(model) == 0.0


def test_train_reply_holds_no_encoder_and_the_encoder_stays_in_the_state():
    config = _config()
    client = _client(load_settings(config), config)
    answer = client.train(_train_message(client)).content
    for record in answer.array_records.values():
        assert not any(k.startswith("encoder.") for k in record.keys())
    assert set(answer["arrays"].keys()) == set(shared_arrays(client.build_model(), is_shared).keys())
    kept = client.context.state["private"]
    assert kept.keys() and all(k.startswith("encoder.") for k in kept.keys())
    stats = answer["fusedspace"]
    assert stats["warmup-loss"] > 0 and stats["reconstruction-loss"] > 0


def test_gamma_scope_selects_the_gradient_parameters():
    for scope, prefixes in (("classifier", {"classifier"}), ("shared", {"classifier", "decoder"})):
        config = _config(**{"fusedspace.gamma-scope": scope})
        client = _client(load_settings(config), config)
        names = client.gradient_parameters(client.build_model())
        assert {n.split(".")[0] for n in names} == prefixes


# ----------------------------------------------------------------------------- whole run
def test_a_run_learns_reports_gamma_and_never_sends_an_encoder(tmp_path):
    seen = []

    def inspect(node, msg):
        seen.append(msg)
        return msg

    overrides = {
        "num-server-rounds": 2,
        "train.local-epochs": 1,
        "dataset.size": 8,
        "log-dir": str(tmp_path),
        "experiment-name": "fs",
        "metrics.gradient-dissimilarity": True,
    }
    run_local(server_app, client_app, 3, full_run_config(method="fusedspace", **overrides), tamper=inspect)
    # 3 nodes x (round 1 train, round 2 train carrying round 1's evaluation, round 2's evaluate-only message)
    assert len(seen) == 9
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


def test_reference_variant_conf_files_are_the_reference_recipe():
    files = sorted((ROOT / "conf").glob("fusedspace_digits_dirichlet_reference_*.toml"))
    assert [p.stem.rsplit("_", 1)[1] for p in files] == ["base", "encwarm", "l2sp"]
    variants = {}
    for path in files:
        opts = load_settings(full_run_config(**tomllib.loads(path.read_text()))).method_options
        assert (opts.autoencoder, opts.task_aware, opts.ae_optimizer, opts.ae_lr) == ("unet", False, "sgd", 0.01)
        variants[path.stem.rsplit("_", 1)[1]] = (opts.warmup_epochs, opts.l2sp)
    assert variants == {"base": (0, 0.0), "encwarm": (2, 0.0), "l2sp": (0, 0.001)}


def test_evaluate_reports_the_reconstruction_error_on_the_clients_classes_and_on_those_it_never_saw():
    from fedvq_app.data.client_data import normalize_batch  # noqa: PLC0415

    config = _config(**{"partition.kind": "pathological", "partition.classes-per-client": 2})
    client = _client(load_settings(config), config)
    msg = _train_message(client)
    reply = client.evaluate(Message(content=msg.content, dst_node_id=1, message_type="evaluate"))
    metrics = reply.content["metrics"]
    model = client.load_model(msg).eval()
    x = normalize_batch(client.data.test_x)
    with torch.no_grad():
        per_image = (model.reconstruct(x) - x).pow(2).flatten(1).mean(1)
    seen = torch.as_tensor(client.data.label_counts())[client.data.test_y] > 0
    assert 0 < int(seen.sum()) < len(seen)  # two classes seen, eight never
    assert metrics["test-reconstruction-seen"] == pytest.approx(float(per_image[seen].mean()), rel=1e-5)
    assert metrics["test-reconstruction-unseen"] == pytest.approx(float(per_image[~seen].mean()), rel=1e-5)
    assert metrics["test-reconstruction-seen"] != pytest.approx(metrics["test-reconstruction-unseen"])
    assert "test-accuracy" in metrics  # the common scores stay
