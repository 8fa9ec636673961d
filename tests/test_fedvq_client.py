"""FedVQ's model and client: what travels, the usage statistics, best-validation epochs, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict

from fedvq_app.aggregation.codebook import perplexity, used_codes
from fedvq_app.clients.fedvq import FedVQClient
from fedvq_app.config import ModelSettings
from fedvq_app.models.state import shared_arrays
from fedvq_app.models.vq import CODEBOOK_KEY, build_vq_classifier, is_shared
from fedvq_app.protocol import FEDVQ_BEST_STATE, PRIVATE_STATE
from fedvq_app.registry import load_settings
from fedvq_app.strategies.fedvq import USAGE_RECORD
from tests.conftest import vq_options

SIZE = 12  # digits at 12x12: the CNN trunk leaves a 3x3 map, nine codes per image


def _settings(run_config, tmp_path, **overrides):
    return load_settings(
        run_config(
            method="fedvq",
            **{
                "dataset.size": SIZE,
                "train.local-epochs": 2,
                "train.optimizer": "adam",
                "train.lr": 0.003,
                "codebook.num-embeddings": 16,
                "codebook.embedding-dim": 8,
                "fedvq.quantizer": "gumbel",  # the seed's layer and private encoder unless a test says otherwise
                "fedvq.encoder": "private",
                "fedvq.heads": 1,
                "codebook.aggregation": "kmeans",
                "log-dir": str(tmp_path),
                **overrides,
            },
        )
    )


def _client(settings, state=None) -> FedVQClient:
    context = Context(
        run_id=1,
        node_id=1,
        node_config={"partition-id": 0, "num-partitions": 3},
        state=state if state is not None else RecordDict(),
        run_config=dict(settings.raw),
    )
    return FedVQClient(settings, context)


def _train_message(client: FedVQClient, server_round: int, with_encoder: bool = False, ready: int = 1) -> Message:
    model = client.build_model()
    keep = (lambda n: is_shared(n) or n.startswith("encoder.")) if with_encoder else is_shared  # noqa: E731
    content = RecordDict(
        {
            "arrays": shared_arrays(model, keep),
            "config": ConfigRecord(
                {"server-round": server_round, "lr": 0.003, "experiment": "exp", "codebook-ready": ready}
            ),
        }
    )
    return Message(content=content, dst_node_id=1, message_type="train")


# ---------------------------------------------------------------------------- model
def test_vq_model_outputs_and_deterministic_evaluation():
    torch.manual_seed(0)
    model = build_vq_classifier(ModelSettings(), 1, 10, vq_options(num_embeddings=16, embedding_dim=8))
    x = torch.randn(5, 1, 16, 16)
    model.eval()
    out = model(x)
    assert out.logits.shape == (5, 10)
    assert out.features.shape == out.decoded.shape == (5, 8, 4, 4)  # 1x1 conv maps 64 trunk channels to 8
    assert out.codes.shape == (5, 4, 4) and int(out.codes.max()) < 16
    # perplexity = exp(entropy) of how often each code was picked in this batch
    picked = np.bincount(out.codes.flatten().numpy(), minlength=16)
    assert float(out.perplexity) == pytest.approx(perplexity(picked), rel=1e-4)
    torch.testing.assert_close(model(x).logits, out.logits)  # argmax codes: no Gumbel noise at evaluation
    adapter = model.encoder[-1]
    assert isinstance(adapter, torch.nn.Conv2d) and adapter.kernel_size == (1, 1) and adapter.out_channels == 8
    model.train()  # the training path draws Gumbel samples and backpropagates into the codebook
    loss = model(x).logits.sum()
    loss.backward()
    assert model.vq.embeddings.grad is not None and model.vq.proj.weight.grad is not None


def test_only_the_encoder_is_private():
    model = build_vq_classifier(ModelSettings(), 3, 4, vq_options(num_embeddings=8, embedding_dim=64))
    names = list(model.state_dict())
    private = [n for n in names if not is_shared(n)]
    assert private and all(n.startswith("encoder.") for n in private)
    assert {CODEBOOK_KEY, "vq.proj.weight", "classifier.weight", "decoder.block1.0.weight"} <= set(names)
    assert isinstance(model.encoder[-1], torch.nn.MaxPool2d)  # the trunk has 64 channels already: no adapter


# ---------------------------------------------------------------------------- client
#: the default (flatten) head's output layer: flatten, dense, ReLU, linear
HEAD_OUTPUT = "classifier.3.weight"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One client trained for one round (shared by the tests below: training is the slow part)."""
    from fedvq_app.local_grid import full_run_config

    tmp_path = tmp_path_factory.mktemp("fedvq_client")
    settings = _settings(full_run_config, tmp_path)
    client = _client(settings)
    msg = _train_message(client, 1)
    return settings, client, msg, client.train(msg), tmp_path


def test_reply_carries_no_encoder_tensor(trained):
    _, client, _, reply, _ = trained
    arrays = reply.content["arrays"]
    assert not [k for k in arrays if k.startswith("encoder.")]
    assert CODEBOOK_KEY in arrays and HEAD_OUTPUT in arrays
    for name, record in reply.content.array_records.items():
        assert not [k for k in record if k.startswith("encoder.")], name
    assert all(k.startswith("encoder.") for k in client.context.state[PRIVATE_STATE])


def test_usage_statistics_travel_with_the_parameters(trained):
    settings, client, _, reply, _ = trained
    usage = reply.content[USAGE_RECORD]
    counts = usage["counts"].numpy()
    side = SIZE // 4
    assert counts.shape == (16,) and counts.sum() == client.data.num_train * side * side
    np.testing.assert_array_equal(usage["used"].numpy().astype(bool), used_codes(counts, 0.01))
    metrics = reply.content["metrics"]
    assert metrics["codebook-used"] == int(used_codes(counts, 0.01).sum())
    assert metrics["codebook-perplexity"] == pytest.approx(perplexity(counts))
    # the seed's Gumbel layer samples codes while training and takes the argmax afterwards: the
    # training batches spread over more codes than the trained model picks on the same data
    assert metrics["train-perplexity"] > metrics["codebook-perplexity"] > 1.0


def test_the_best_validation_epoch_is_sent(trained):
    _, client, _, reply, _ = trained
    best = client.best
    assert reply.content["metrics"]["best-epoch"] == best.epoch
    sent = reply.content["arrays"]
    for name in (CODEBOOK_KEY, HEAD_OUTPUT):
        np.testing.assert_array_equal(sent[name].numpy(), best.state[name].numpy())
    model = client.build_model()
    model.load_state_dict(best.state)
    assert client._val_accuracy(model) == pytest.approx(reply.content["metrics"]["best-val-accuracy"])


def test_best_checkpoint_is_replaced_only_when_better(trained):
    settings, client, _, reply, tmp_path = trained
    path = tmp_path / "exp" / "client_checkpoints" / "client_0_best.pt"
    assert reply.content["metrics"]["checkpoint-saved"] == 1 and path.is_file()
    saved = torch.load(path, weights_only=True)
    assert saved["round"] == 1 and saved["val_accuracy"] == client.best.val_accuracy

    state = client.context.state
    state[FEDVQ_BEST_STATE] = MetricRecord({"val-accuracy": 2.0, "round": 1})  # unbeatable
    second = _client(settings, state)
    reply2 = second.train(_train_message(second, 2))
    assert reply2.content["metrics"]["checkpoint-saved"] == 0
    assert torch.load(path, weights_only=True)["round"] == 1

    state[FEDVQ_BEST_STATE] = MetricRecord({"val-accuracy": -1.0, "round": 1})  # anything beats it
    third = _client(settings, state)
    assert third.train(_train_message(third, 3)).content["metrics"]["checkpoint-saved"] == 1
    assert torch.load(path, weights_only=True)["round"] == 3
    assert float(state[FEDVQ_BEST_STATE]["val-accuracy"]) == pytest.approx(third.best.val_accuracy)


# ---------------------------------------------------------------------------- encoder schedules
def test_warmup_shares_the_encoder_then_it_never_leaves_the_client(tmp_path):
    from fedvq_app.local_grid import full_run_config

    settings = _settings(
        full_run_config,
        tmp_path,
        **{
            "fedvq.encoder": "warmup",
            "fedvq.shared-encoder-rounds": 1,
            "train.local-epochs": 1,
            "fedvq.save-checkpoints": False,
        },
    )
    client = _client(settings)
    first = client.train(_train_message(client, 1, with_encoder=True))
    assert [k for k in first.content["arrays"] if k.startswith("encoder.")]  # shared round: the encoder goes up
    # after the switch the server still hands down the averaged encoder once, but nothing comes back
    second = _client(settings, client.context.state).train(_train_message(client, 2, with_encoder=True))
    for name, record in second.content.array_records.items():
        assert not [k for k in record if k.startswith("encoder.")], name
    assert CODEBOOK_KEY in second.content["arrays"]


# ---------------------------------------------------------------------------- ema + lloyd
def test_ema_client_sends_usage_statistics_instead_of_its_codebook(tmp_path):
    from fedvq_app.local_grid import full_run_config
    from fedvq_app.models.vq import EMA_CODEBOOK_KEY

    settings = _settings(
        full_run_config,
        tmp_path,
        **{
            "fedvq.quantizer": "ema",
            "codebook.aggregation": "lloyd",
            "codebook.privacy-threshold": 40,
            "train.local-epochs": 1,
            "fedvq.save-checkpoints": False,
        },
    )
    client = _client(settings)
    reply = client.train(_train_message(client, 1, ready=0))  # before any global codebook: local k-means init
    arrays = reply.content["arrays"]
    assert EMA_CODEBOOK_KEY not in arrays and not [k for k in arrays if k.startswith("encoder.")]
    assert not [k for k in arrays if "cluster_size" in k or "embed_avg" in k]  # EMA running state stays
    usage = reply.content[USAGE_RECORD]
    counts, sums, squares = usage["counts"].numpy(), usage["sums"].numpy(), usage["squares"].numpy()
    assert sums.shape == (16, 8) and squares.shape == (16,)
    # recompute the statistics from the client's model: every code below the threshold is withheld
    model = client.build_model()
    from fedvq_app.models.state import load_arrays

    load_arrays(model, client.context.state[PRIVATE_STATE])
    load_arrays(model, reply.content["arrays"])
    model.vq.quantizer._codebook.embed.copy_(client.best.state[EMA_CODEBOOK_KEY])
    full = client.code_statistics(model)
    side = SIZE // 4
    assert full[0].sum() == client.data.num_train * side * side
    kept = full[0] >= 40
    np.testing.assert_array_equal(counts, np.where(kept, full[0], 0))
    np.testing.assert_allclose(sums, np.where(kept[:, None], full[1], 0.0))
    np.testing.assert_allclose(squares, np.where(kept, full[2], 0.0))
    assert reply.content["metrics"]["codebook-withheld"] == int(((full[0] > 0) & ~kept).sum())
    # code j's sum / count is the mean of the feature vectors nearest to code j
    assert (squares[kept] >= np.square(sums[kept]).sum(1) / counts[kept] - 1e-6).all()  # Cauchy-Schwarz
