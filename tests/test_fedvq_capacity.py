"""FedVQ's capacity options: multi-head EMA VQ (``fedvq.heads``), the flatten head (``fedvq.head``)
and the limits on the server's dead-code revival (``codebook.max-revived``, ``codebook.revive-after``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord

from fedvq_app.aggregation.codebook_lloyd import lloyd_codebook_heads, revive_dead
from fedvq_app.config import ConfigError, ModelSettings
from fedvq_app.local_grid import full_run_config
from fedvq_app.models.vq import EMA_CODEBOOK_KEY, build_vq_classifier
from fedvq_app.records import to_numpy, to_record
from fedvq_app.registry import load_settings
from fedvq_app.strategies.fedvq import USAGE_RECORD, FedVQStrategy
from tests.conftest import reply, vq_options


# ---------------------------------------------------------------------------- multi-head EMA VQ
def _ema(heads: int, k: int = 8, d: int = 8, head: str = "pool", size: int = 16):
    torch.manual_seed(0)
    return build_vq_classifier(
        ModelSettings(),
        1,
        10,
        vq_options(num_embeddings=k, embedding_dim=d, quantizer="ema", heads=heads, head=head),
        size,
    )


def test_multi_head_vq_quantizes_every_chunk_on_its_own_codebook():
    model = _ema(heads=4)
    vq = model.vq
    assert tuple(vq.quantizer._codebook.embed.shape) == (4, 8, 2)  # one 8-code codebook of width 2 per head
    assert (vq.num_codes, vq.code_dim) == (32, 2)
    features = model.encoder(torch.randn(6, 1, 16, 16))
    model.train()
    vq(features)  # the library's k-means initialisation on this batch
    model.eval()
    quantized, _, perplexity, codes = vq(features)
    books = vq.quantizer._codebook.embed
    chunks = features.permute(0, 2, 3, 1).reshape(-1, 4, 2)
    # every chunk replaced by the nearest code of its own head, the chunks concatenated back in channel order
    nearest = torch.stack([torch.cdist(chunks[:, h], books[h]).argmin(1) for h in range(4)], 1)
    rebuilt = torch.stack([books[h][nearest[:, h]] for h in range(4)], 1).reshape(6, 4, 4, 8).permute(0, 3, 1, 2)
    torch.testing.assert_close(quantized, rebuilt)
    # code indices are h * K + j: head h only ever picks from its own block of K
    flat = codes.reshape(-1, 4)
    for h in range(4):
        assert int(flat[:, h].min()) >= 8 * h and int(flat[:, h].max()) < 8 * (h + 1)
    # perplexity = exp(entropy) of this batch's code choices over all heads' 32 codes
    freq = torch.bincount(codes.flatten(), minlength=32).double() / codes.numel()
    freq = freq[freq > 0]
    assert float(perplexity) == pytest.approx(float(torch.exp(-(freq * freq.log()).sum())), rel=1e-5)
    assert torch.equal(vq.assign(features), (nearest + torch.arange(4) * 8).reshape(-1))


def test_multi_head_statistics_are_per_head_counts_sums_and_squares():
    model = _ema(heads=2)
    model.train()
    features = model.encoder(torch.randn(4, 1, 16, 16))
    model.vq(features)
    counts, sums, squares = model.vq.statistics(features)
    assert counts.shape == (16,) and sums.shape == (16, 4) and squares.shape == (16,)
    # every position gives one chunk per head
    assert int(counts[:8].sum()) == int(counts[8:].sum()) == 4 * 4 * 4
    chunks = features.detach().permute(0, 2, 3, 1).reshape(-1, 2, 4).double()
    codes = model.vq.assign(features).reshape(-1, 2)
    for j in (int(codes[0, 1]), int(codes[0, 0])):
        h = j // 8
        mine = chunks[codes[:, h] == j, h]
        torch.testing.assert_close(sums[j], mine.sum(0))
        torch.testing.assert_close(squares[j], mine.square().sum())


def test_lloyd_heads_keep_every_head_apart():
    rng = np.random.default_rng(0)
    k, d = 4, 3
    previous = np.vstack([np.zeros((k, d)) + np.arange(k)[:, None], 100 + np.arange(k)[:, None] + np.zeros((k, d))])
    counts = np.array([5, 5, 5, 5, 9, 9, 9, 0])  # head 1, code 3 (index 7) is dead
    sums = previous * counts[:, None]
    squares = (previous**2).sum(1) * counts + 1.0 * counts
    result = lloyd_codebook_heads([counts], [sums], [squares], previous, rng, heads=2)
    # the dead code of head 1 is revived by splitting one of head 1's own codes (near 100), never head 0's
    assert result.codebook.shape == (8, 3) and result.stats["revived_codes"] == 1
    assert (result.codebook[4:] > 90).all() and (result.codebook[:4] < 10).all()
    np.testing.assert_allclose(result.codebook[:4], previous[:4])
    # the same statistics in one call with heads=1 would be free to split a code of the other head
    assert lloyd_codebook_heads([counts], [sums], [squares], previous, rng, heads=1).codebook.shape == (8, 3)


def test_revival_cap_and_eligibility():
    rng = np.random.default_rng(1)
    book = np.arange(12, dtype=np.float64).reshape(6, 2)
    counts = np.array([10, 10, 0, 0, 0, 10])
    sums = book * counts[:, None]
    squares = (book**2).sum(1) * counts + 2.0 * counts
    _, revived = revive_dead(book, counts, sums, squares, rng)
    assert revived == [2, 3, 4]
    kept, revived = revive_dead(book, counts, sums, squares, rng, max_revived=0)
    assert revived == [] and np.array_equal(kept, book)
    _, revived = revive_dead(book, counts, sums, squares, rng, max_revived=2)
    assert revived == [2, 3]
    _, revived = revive_dead(book, counts, sums, squares, rng, eligible=np.array([0, 0, 0, 1, 1, 0], bool))
    assert revived == [3, 4]


# ---------------------------------------------------------------------------- revive-after in the strategy
K, D = 6, 2


def _lloyd_strategy(**kwargs) -> FedVQStrategy:
    strategy = FedVQStrategy(
        aggregation="lloyd",
        align="hungarian",
        codebook_shape=(K, D),
        seed=3,
        min_available_nodes=1,
        codebook_key=EMA_CODEBOOK_KEY,
        quantizer="ema",
        **kwargs,
    )
    strategy.ready = True  # a global codebook exists: rounds below are Lloyd steps
    return strategy


class _Grid:
    def get_node_ids(self):
        return [1, 2]


def _lloyd_round(strategy, server_round, arrays, counts):
    sent = list(strategy.configure_train(server_round, to_record(arrays), ConfigRecord(), _Grid()))
    book = arrays[EMA_CODEBOOK_KEY].reshape(K, D).astype(np.float64)
    replies = []
    for msg in sent:
        sums = book * counts[:, None]
        squares = (book**2).sum(1) * counts + 0.5 * counts
        usage = {
            "counts": counts.astype(np.int64),
            "used": (counts > 0).astype(np.uint8),
            "sums": sums,
            "squares": squares,
        }
        metrics = {"num-examples": 10, "partition-id": msg.metadata.dst_node_id}
        replies.append(
            reply(msg, {"classifier.weight": np.zeros((2, D), np.float32)}, metrics, **{USAGE_RECORD: to_record(usage)})
        )
    new, _ = strategy.aggregate_train(server_round, replies)
    return to_numpy(new), strategy.round_report()


def test_a_code_is_revived_only_after_revive_after_dead_rounds():
    strategy = _lloyd_strategy(revive_after=2)
    arrays = {
        EMA_CODEBOOK_KEY: np.arange(K * D, dtype=np.float32).reshape(1, K, D),
        "classifier.weight": np.zeros((2, D), np.float32),
    }
    counts = np.array([4, 4, 4, 4, 4, 0])
    arrays, report = _lloyd_round(strategy, 1, arrays, counts)
    # dead for one round: kept where it was
    assert report["revived_codes"] == 0 and strategy.dead_rounds.tolist() == [0, 0, 0, 0, 0, 1]
    np.testing.assert_allclose(arrays[EMA_CODEBOOK_KEY][0, 5], [10, 11])
    arrays, report = _lloyd_round(strategy, 2, arrays, counts)
    # dead for two rounds: revived, and its count starts again
    assert report["revived_codes"] == 1 and strategy.dead_rounds[5] == 0
    assert not np.allclose(arrays[EMA_CODEBOOK_KEY][0, 5], [10, 11])
    state = strategy.state_dict()
    fresh = _lloyd_strategy(revive_after=2)
    fresh.load_state_dict(state)
    assert fresh.dead_rounds.tolist() == strategy.dead_rounds.tolist()


# ---------------------------------------------------------------------------- flatten head
def test_flatten_head_reads_the_spatial_layout():
    pooled = _ema(heads=1, head="pool")
    flat16, flat28 = _ema(heads=1, head="flatten", size=16), _ema(heads=1, head="flatten", size=28)
    assert isinstance(pooled.classifier, torch.nn.Linear)
    # a dense layer over the whole decoded map (4x4 positions at 16x16, 7x7 at 28x28), as the plain CNN's
    assert flat16.classifier[1].in_features == 8 * 4 * 4 and flat28.classifier[1].in_features == 8 * 7 * 7
    x = torch.randn(3, 1, 16, 16)
    flat16.eval()
    assert flat16(x).logits.shape == (3, 10)
    # moving one position's features changes the flatten head's logits, but swapping two positions'
    # decoded features leaves the pooled head's unchanged (pooling forgets where a feature was)
    decoded = torch.randn(1, 8, 4, 4)
    swapped = decoded.clone()
    swapped[..., 0, 0], swapped[..., 3, 3] = decoded[..., 3, 3], decoded[..., 0, 0]
    pool_logits = lambda m, t: m.classifier(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(t, 1), 1))  # noqa: E731
    torch.testing.assert_close(pool_logits(pooled, decoded), pool_logits(pooled, swapped))
    assert not torch.allclose(flat16.classifier(decoded), flat16.classifier(swapped))


def test_flatten_head_input_has_the_squared_norm_of_the_pooled_vector_at_any_map_size():
    """The flatten head divides the decoded map by sqrt(H * W): for a map that is constant over its
    positions the dense layer's input has exactly the pooled vector's norm, at 4x4 (16x16 images) as at
    7x7 (28x28); unscaled it would be H * W times larger in square (the cause of the divergence at lr 0.05)."""
    for size, side in ((16, 4), (28, 7)):
        model = _ema(heads=1, head="flatten", size=size)
        seen = []
        model.classifier.register_forward_pre_hook(lambda _m, args, seen=seen: seen.append(args[0]))
        per_channel = torch.arange(1.0, 9.0).view(1, 8, 1, 1)
        decoded = per_channel.expand(2, 8, side, side).contiguous()
        model.decoder.forward = lambda _q, d=decoded: d  # the head alone, on a known decoded map
        model.eval()
        model(torch.randn(2, 1, size, size))
        flat = seen[0].flatten(1)
        torch.testing.assert_close(flat.square().sum(1), per_channel.flatten().square().sum().expand(2))
        assert flat.shape[1] == 8 * side * side


# ---------------------------------------------------------------------------- decoder normalisation
def test_group_norm_decoder_has_no_running_statistics_and_ignores_the_batch():
    torch.manual_seed(0)
    kwargs = dict(num_embeddings=8, embedding_dim=8, temperature=1.0, quantizer="straight-through")
    batch = build_vq_classifier(ModelSettings(), 1, 10, vq_options(**kwargs))
    group = build_vq_classifier(ModelSettings(), 1, 10, vq_options(decoder_norm="group", **kwargs))
    assert any("running_mean" in k for k in batch.state_dict())
    assert not any("running" in k or "num_batches" in k for k in group.state_dict())
    assert isinstance(group.decoder.block1[1], torch.nn.GroupNorm) and group.decoder.block1[1].num_groups == 8
    # the same image gives the same logits alone or in a batch, in training mode too (no batch statistics)
    group.train()
    x = torch.randn(4, 1, 16, 16)
    decoded_alone = group.decoder(group.vq(group.encoder(x[:1]))[0])
    decoded_batch = group.decoder(group.vq(group.encoder(x))[0])[:1]
    torch.testing.assert_close(decoded_alone, decoded_batch)


# ---------------------------------------------------------------------------- configuration
@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"fedvq.heads": 2, "fedvq.quantizer": "straight-through", "codebook.aggregation": "mean"}, "'fedvq.heads'"),
        ({"fedvq.heads": 2, "fedvq.quantizer": "ema", "codebook.aggregation": "kmeans"}, "'codebook.aggregation'"),
        ({"fedvq.heads": 3, "fedvq.quantizer": "ema", "codebook.aggregation": "lloyd"}, "must divide"),
        ({"fedvq.head": "mlp"}, "'fedvq.head'"),
        ({"fedvq.decoder-norm": "layer"}, "'fedvq.decoder-norm'"),
        ({"codebook.max-revived": -2}, "'codebook.max-revived'"),
        ({"codebook.revive-after": 0}, "'codebook.revive-after'"),
    ],
)
def test_bad_capacity_options_name_the_key(overrides, needle):
    with pytest.raises(ConfigError, match=needle):
        load_settings(full_run_config(method="fedvq", **overrides))


# ---------------------------------------------------------------------------- BatchNorm recalibration
def test_recalibration_measures_batch_norm_statistics_of_the_evaluated_model(tmp_path):
    from fedvq_app.data.client_data import normalize_batch
    from tests.test_fedvq_client import _client, _settings

    settings = _settings(
        full_run_config,
        tmp_path,
        **{
            "fedvq.quantizer": "ema",
            "fedvq.encoder": "shared",
            "codebook.aggregation": "lloyd",
            "fedvq.recalibrate-bn": True,
        },
    )
    client = _client(settings)
    model = client.build_model()
    model.train()
    model(normalize_batch(client.data.train_x[:8]))  # k-means init of the codebook
    bn = model.decoder.block1[1]
    bn.running_mean.fill_(5.0)  # stale statistics, as averaged by the server
    bn.running_var.fill_(9.0)
    codebook = model.vq.codebook.clone()
    assert client.recalibrate_batch_norm(model) == 2
    # block1's statistics are now those of its input over all training images (biased variance aside)
    with torch.no_grad():
        z = model.encoder(normalize_batch(client.data.train_x))
        pre = model.decoder.block1[0](model.vq(z)[0])
    # (batches of 256 weigh equally in the cumulative average: close, not exact)
    torch.testing.assert_close(bn.running_mean, pre.mean((0, 2, 3)), rtol=1e-2, atol=1e-3)
    torch.testing.assert_close(bn.running_var, pre.var((0, 2, 3)), rtol=5e-2, atol=1e-3)
    torch.testing.assert_close(model.vq.codebook, codebook)  # the EMA codebook did not move
    assert not model.training and bn.momentum == 0.1


def test_gradient_clipping_hook_bounds_the_global_norm():
    from fedvq_app.clients.fedvq import ClipGradients

    model = _ema(heads=2)
    model.train()
    out = model(torch.randn(8, 1, 16, 16) * 50)
    (out.logits.square().sum() * 1e3).backward()
    norm = lambda: float(torch.norm(torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None])))  # noqa: E731
    assert norm() > 1.0
    ClipGradients(1.0).before_step(model)
    assert norm() == pytest.approx(1.0, rel=1e-4)


def test_codebook_pca_of_one_dimensional_codes():
    from fedvq_app.strategies.fedvq import codebook_pca

    # 8 heads of an 8-d vector: codes of width 1; the plot still gets two coordinates per code
    report = codebook_pca(np.arange(6.0)[:, None], {0: np.ones((3, 1)), 1: np.zeros((2, 1))})
    assert len(report["global"]) == 6 and all(len(c) == 2 and c[1] == 0.0 for c in report["global"])
    assert report["explained_variance_ratio"] == [1.0, 0.0] and len(report["clients"]["1"]) == 2


# ---------------------------------------------------------------------------- gradient through the quantizer
def _tiny_chunk_gradient(rotation_trick: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """d(w . quantized)/dz for two positions: an ordinary feature vector and a near-zero one."""
    from fedvq_app.models.vq import EMAVQ

    vq = EMAVQ(4, 8, decay=0.9, dead_code_threshold=0.0, rotation_trick=rotation_trick)
    with torch.no_grad():  # a global codebook of 4 codes of norm ~1.65, none near the origin
        vq.quantizer._codebook.embed.copy_(torch.eye(4, 8)[None] + 8**-0.5)
    vq.adopt_global()
    vq.train()
    torch.manual_seed(0)
    z = torch.stack([torch.rand(8) + 0.5, torch.full((8,), 1e-4)], 1)[None, :, :, None].requires_grad_()  # (1, 8, 2, 1)
    w = torch.randn(1, 8, 2, 1)
    quantized = vq(z)[0]
    (quantized * w).sum().backward()
    return z.grad, w


def test_ema_quantizer_passes_the_gradient_straight_through_by_default():
    from fedvq_app.options import FedVQOptions

    grad, w = _tiny_chunk_gradient(rotation_trick=False)
    torch.testing.assert_close(grad, w)  # d quantized / d z = identity, whatever the chunk's norm
    # the default is the straight-through estimator, and the option reaches the library's layer
    assert FedVQOptions().rotation_trick is False and _ema(heads=2).vq.quantizer.rotation_trick is False
    on = load_settings(full_run_config(method="fedvq", **{"fedvq.rotation-trick": True})).method_options
    off = load_settings(full_run_config(method="fedvq", **{"fedvq.rotation-trick": False})).method_options
    assert (on.rotation_trick, off.rotation_trick) == (True, False)


def test_the_rotation_trick_amplifies_the_gradient_of_a_near_zero_chunk():
    grad, w = _tiny_chunk_gradient(rotation_trick=True)
    ordinary, tiny = grad[0, :, 0, 0], grad[0, :, 1, 0]
    # an ordinary vector keeps a gradient of the same order; the near-zero one gets ||q|| / ||z|| (~6e3) times more
    assert float(ordinary.norm()) < 3 * float(w[0, :, 0, 0].norm())
    assert float(tiny.norm()) > 1e3 * float(w[0, :, 1, 0].norm())
