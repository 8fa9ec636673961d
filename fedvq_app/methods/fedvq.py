"""FedVQ (seed 000): vector-quantized models whose codebook is aggregated by the server.

The quantizer (``fedvq.quantizer``: gumbel, straight-through, ema), the encoder
schedule (``fedvq.encoder``: private, shared, warmup) and the codebook aggregator
(``codebook.aggregation``) are independent choices, except that ``lloyd`` (the
federated Lloyd step from per-code usage statistics) needs the nearest-neighbour
``ema`` quantizer. The VQ layer, decoder and classifier travel; the encoder travels
only while the schedule shares it. The server averages everything but the
codebook, which one of the aggregators rebuilds under an index-alignment mode
(``codebook.align``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from fedvq_app.aggregation.codebook import AGGREGATORS, ALIGN_MODES, CodebookParams
from fedvq_app.aggregation.codebook_lloyd import LLOYD
from fedvq_app.clients.fedvq import FedVQClient
from fedvq_app.config import ConfigError, Settings, option
from fedvq_app.data.datasets import DatasetInfo
from fedvq_app.models.vq import (
    DECODER_NORMS,
    HEADS,
    QUANTIZERS,
    build_vq_classifier,
    codebook_key,
    is_encoder,
    is_shared,
)
from fedvq_app.registry import MethodSpec
from fedvq_app.server.workflow import run_neural_workflow
from fedvq_app.strategies.fedavg import sampling_kwargs
from fedvq_app.strategies.fedvq import FedVQStrategy
from fedvq_app.tracking.fedvq_plots import fedvq_plots

ENCODER_SCHEDULES = ("private", "shared", "warmup")


@dataclass(frozen=True)
class FedVQOptions:
    quantizer: str = option(
        "fedvq.quantizer",
        "ema",
        choices=QUANTIZERS,
        help="gumbel (seed: Gumbel-softmax sample), straight-through (argmax code, softmax gradient), "
        "ema (nearest-neighbour VQ, EMA codebook, k-means init, dead-code revival; vector-quantize-pytorch)",
    )
    encoder: str = option(
        "fedvq.encoder",
        "shared",
        choices=ENCODER_SCHEDULES,
        help="private (seed: never leaves the client), shared (averaged like the decoder), "
        "warmup (shared for fedvq.shared-encoder-rounds rounds, then private)",
    )
    shared_encoder_rounds: int = option(
        "fedvq.shared-encoder-rounds", 10, minimum=0, help="rounds the warmup schedule shares the encoder"
    )
    eval_sampling: bool = option(
        "fedvq.eval-sampling", False, help="gumbel: sample Gumbel noise at evaluation too (the seed; stochastic scores)"
    )
    ema_decay: float = option(
        "fedvq.ema-decay", 0.9, minimum=0.0, maximum=1.0, help="ema: decay of the EMA codebook updates"
    )
    dead_code_threshold: float = option(
        "fedvq.dead-code-threshold",
        2.0,
        minimum=0.0,
        help="ema: before the first global codebook, a client replaces codes whose EMA cluster size is below "
        "this (library revival); afterwards dead codes are revived by the server",
    )
    heads: int = option(
        "fedvq.heads",
        8,
        minimum=1,
        help="ema: multi-head VQ (vector-quantize-pytorch heads, one K-code codebook per head): each feature "
        "vector is split into this many chunks of D/heads, each quantized on its own; needs "
        "codebook.aggregation lloyd or mean",
    )
    rotation_trick: bool = option(
        "fedvq.rotation-trick",
        False,
        help="ema: pass the gradient through the quantizer with the rotation trick (vector-quantize-pytorch's "
        "default: rotated and rescaled by ||q||/||z||, unbounded for near-zero chunks; diverged under SGD) "
        "instead of the straight-through estimator (false)",
    )
    head: str = option(
        "fedvq.head",
        "pool",
        choices=HEADS,
        help="classifier on the decoded map: pool (seed: global average pooling + linear), flatten (the plain "
        "CNN's head: flatten + dense 128 + ReLU + linear, keeps the spatial layout)",
    )
    decoder_norm: str = option(
        "fedvq.decoder-norm",
        "batch",
        choices=DECODER_NORMS,
        help="normalisation in the decoder's conv blocks: batch (seed: BatchNorm, running statistics averaged "
        "across clients), group (GroupNorm: no running statistics)",
    )
    recalibrate_bn: bool = option(
        "fedvq.recalibrate-bn",
        True,
        help="at evaluation each client re-estimates the BatchNorm running statistics of the model it "
        "evaluates on its own training images (one forward pass; the averaged running statistics do not "
        "match the averaged weights)",
    )
    grad_clip: float = option(
        "fedvq.grad-clip",
        0.0,
        minimum=0.0,
        help="clip the global gradient norm of every local step to this (0 = off)",
    )
    aggregation: str = option(
        "codebook.aggregation",
        "lloyd",
        choices=(*AGGREGATORS, LLOYD),
        help="codebook aggregator: lloyd (ema only: exact mean of the assigned vectors from per-code counts and "
        "sums), mean (FedAvg), kmeans, weighted-kmeans (data-size sample weights), "
        "usage-kmeans (used codes, usage weights), wasserstein (POT free-support barycenter)",
    )
    privacy_threshold: int = option(
        "codebook.privacy-threshold",
        5,
        minimum=1,
        help="lloyd: a client withholds the statistics of a code fewer than this many of its vectors chose",
    )
    max_revived: int = option(
        "codebook.max-revived",
        0,
        minimum=-1,
        help="lloyd: at most this many dead codes revived by splitting per round (-1 = all, 0 = none: a dead code "
        "keeps its previous vector)",
    )
    revive_after: int = option(
        "codebook.revive-after",
        1,
        minimum=1,
        help="lloyd: revive a code only after it was dead (no vector anywhere) this many consecutive rounds",
    )
    align: str = option(
        "codebook.align",
        "hungarian",
        choices=tuple(ALIGN_MODES),
        help="index alignment: none (cold clustering, seed), warm-start (start from the previous codebook), "
        "hungarian (warm start + re-match codes to the previous indices)",
    )
    num_embeddings: int = option("codebook.num-embeddings", 64, minimum=2, help="codebook size K (seed: 512)")
    embedding_dim: int = option(
        "codebook.embedding-dim",
        64,
        minimum=1,
        help="code dimension D (seed: 512); a 1x1 conv maps the trunk's channels to D when they differ",
    )
    usage_threshold: float = option(
        "codebook.usage-threshold",
        0.01,
        minimum=0.0,
        maximum=1.0,
        help="a client 'uses' a code picked for at least this fraction of its feature positions (seed: 0.01)",
    )
    kmeans_n_init: int = option(
        "codebook.kmeans-n-init", 10, minimum=1, help="k-means++ restarts when clustering cold (codebook.align=none)"
    )
    kmeans_max_iter: int = option("codebook.kmeans-max-iter", 300, minimum=1, help="most Lloyd iterations per run")
    barycenter_iters: int = option(
        "codebook.barycenter-iters", 20, minimum=1, help="most fixed-point iterations of the Wasserstein barycenter"
    )
    temperature: float = option(
        "fedvq.temperature", 1.0, minimum=0.0, exclusive_minimum=True, help="Gumbel-softmax temperature"
    )
    proj_init_gain: float = option(
        "fedvq.proj-init-gain",
        5.0,
        minimum=0.0,
        exclusive_minimum=True,
        help="scale of the code projection's initial weights (1 = PyTorch default); lifts the small CNN's "
        "initial code logits above the Gumbel noise",
    )
    vq_weight: float = option("fedvq.vq-weight", 0.05, minimum=0.0, help="weight of the commitment loss (seed: 0.05)")
    recon_weight: float = option(
        "fedvq.recon-weight", 0.1, minimum=0.0, help="weight of the decoder's feature reconstruction loss (seed: 0.1)"
    )
    best_val: bool = option(
        "fedvq.best-val", False, help="send the local epoch that scored best on the local validation split (seed)"
    )
    save_checkpoints: bool = option(
        "fedvq.save-checkpoints", True, help="each client keeps its best-validation model as client_<id>_best.pt"
    )
    checkpoint_dir: str = option(
        "fedvq.checkpoint-dir",
        "",
        help="folder of the clients' best checkpoints (empty = <log-dir>/<experiment>/client_checkpoints)",
    )


def validate(settings: Settings) -> None:
    """Cross-field checks: combinations that cannot work are errors, not silent fallbacks."""
    opts: FedVQOptions = settings.method_options
    if opts.aggregation == LLOYD and opts.quantizer != "ema":
        raise ConfigError(
            f"config key 'codebook.aggregation' has invalid value 'lloyd' with fedvq.quantizer={opts.quantizer!r}: "
            "lloyd averages the vectors each code is the nearest neighbour of and needs fedvq.quantizer='ema'; "
            "use one of " + ", ".join(repr(a) for a in AGGREGATORS)
        )

    if opts.heads > 1:
        if opts.quantizer != "ema":
            raise ConfigError(
                f"config key 'fedvq.heads' has invalid value {opts.heads} with fedvq.quantizer={opts.quantizer!r}: "
                "multi-head VQ needs fedvq.quantizer='ema' (or fedvq.heads=1)"
            )
        if opts.aggregation not in (LLOYD, "mean"):
            raise ConfigError(
                f"config key 'codebook.aggregation' has invalid value {opts.aggregation!r} with fedvq.heads="
                f"{opts.heads}: every head has its own codebook, which only 'lloyd' and 'mean' keep apart"
            )
        if opts.embedding_dim % opts.heads:
            raise ConfigError(
                f"config key 'fedvq.heads' has invalid value {opts.heads}: it must divide "
                f"codebook.embedding-dim={opts.embedding_dim}"
            )


def build_model(settings: Settings, info: DatasetInfo):
    opts: FedVQOptions = settings.method_options
    return build_vq_classifier(
        settings.model,
        info.channels,
        info.num_classes,
        opts.num_embeddings,
        opts.embedding_dim,
        opts.temperature,
        opts.proj_init_gain,
        opts.quantizer,
        opts.eval_sampling,
        opts.ema_decay,
        opts.dead_code_threshold,
        opts.heads,
        opts.head,
        info.size,
        opts.decoder_norm,
        opts.rotation_trick,
    )


def initial_encoder(settings: Settings, info: DatasetInfo) -> dict:
    """The encoder every client builds (same seed): what the shared schedules start from."""
    torch.manual_seed(settings.seed)
    state = build_model(settings, info).state_dict()
    return {
        k: v.detach().cpu().numpy().copy()
        for k, v in state.items()
        if is_encoder(k) and not k.endswith("num_batches_tracked")
    }


def build_strategy(settings: Settings, info: DatasetInfo) -> FedVQStrategy:
    opts: FedVQOptions = settings.method_options
    params = CodebookParams(
        usage_threshold=opts.usage_threshold,
        n_init=opts.kmeans_n_init,
        max_iter=opts.kmeans_max_iter,
        barycenter_iters=opts.barycenter_iters,
    )
    return FedVQStrategy(
        aggregation=opts.aggregation,
        align=opts.align,
        codebook_shape=(opts.heads * opts.num_embeddings, opts.embedding_dim // opts.heads),
        heads=opts.heads,
        max_revived=opts.max_revived,
        revive_after=opts.revive_after,
        params=params,
        seed=settings.seed,
        experiment=settings.experiment_name,
        codebook_key=codebook_key(opts.quantizer),
        quantizer=opts.quantizer,
        encoder=opts.encoder,
        shared_encoder_rounds=opts.shared_encoder_rounds,
        initial_encoder=initial_encoder(settings, info) if opts.encoder != "private" else {},
        **sampling_kwargs(settings),
    )


def run_fedvq_workflow(grid, settings: Settings, tracker):
    """The common neural workflow, told the experiment folder so clients checkpoint beside it."""
    return run_neural_workflow(grid, dataclasses.replace(settings, experiment_name=tracker.dir.name), tracker)


def privacy_check(settings) -> str | None:
    """No DP mode: codebook statistics escape both (see docs/privacy.md)."""
    return (
        "the VQ codebook follows an EMA of raw encoder outputs and code-usage counts are sent in clear; "
        "neither DP mode covers them"
    )


SPEC = MethodSpec(
    name="fedvq",
    summary="encoder (private/shared/warmup) + VQ (gumbel/straight-through/ema); codebook by Lloyd step from "
    "usage statistics, mean, k-means, usage-k-means or OT barycenter",
    build_model=build_model,
    build_strategy=build_strategy,
    client=FedVQClient,
    is_shared=is_shared,
    options_type=FedVQOptions,
    validate=validate,
    server_workflow=run_fedvq_workflow,
    plots=fedvq_plots,
    privacy_check=privacy_check,
)
