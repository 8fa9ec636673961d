"""FedVQ (seed 000): vector-quantized models whose codebook is aggregated by clustering.

Clients keep their encoder; the VQ layer, decoder and classifier travel. The
server averages everything but the codebook, which one of the aggregators of
``fedvq_app.aggregation.codebook`` rebuilds (``codebook.aggregation``) under an
index-alignment mode (``codebook.align``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from fedvq_app.aggregation.codebook import AGGREGATORS, ALIGN_MODES, CodebookParams
from fedvq_app.clients.fedvq import FedVQClient
from fedvq_app.config import Settings, option
from fedvq_app.data.datasets import DatasetInfo
from fedvq_app.models.vq import build_vq_classifier, is_shared
from fedvq_app.registry import MethodSpec
from fedvq_app.server.workflow import run_neural_workflow
from fedvq_app.strategies.fedavg import sampling_kwargs
from fedvq_app.strategies.fedvq import FedVQStrategy
from fedvq_app.tracking.fedvq_plots import fedvq_plots


@dataclass(frozen=True)
class FedVQOptions:
    aggregation: str = option(
        "codebook.aggregation",
        "kmeans",
        choices=tuple(AGGREGATORS),
        help="codebook aggregator: mean (FedAvg), kmeans, weighted-kmeans (data-size sample weights), "
        "usage-kmeans (used codes, usage weights), wasserstein (POT free-support barycenter)",
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
        "fedvq.best-val", True, help="send the local epoch that scored best on the local validation split (seed)"
    )
    save_checkpoints: bool = option(
        "fedvq.save-checkpoints", True, help="each client keeps its best-validation model as client_<id>_best.pt"
    )
    checkpoint_dir: str = option(
        "fedvq.checkpoint-dir",
        "",
        help="folder of the clients' best checkpoints (empty = <log-dir>/<experiment>/client_checkpoints)",
    )


def build_model(settings: Settings, info: DatasetInfo):
    opts: FedVQOptions = settings.method_options
    return build_vq_classifier(
        settings.model, info.channels, info.num_classes, opts.num_embeddings, opts.embedding_dim, opts.temperature,
        opts.proj_init_gain,
    )


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
        codebook_shape=(opts.num_embeddings, opts.embedding_dim),
        params=params,
        seed=settings.seed,
        experiment=settings.experiment_name,
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
    summary="private encoder + Gumbel VQ; codebook aggregated by mean/k-means/usage-k-means/OT barycenter",
    build_model=build_model,
    build_strategy=build_strategy,
    client=FedVQClient,
    is_shared=is_shared,
    options_type=FedVQOptions,
    server_workflow=run_fedvq_workflow,
    plots=fedvq_plots,
    privacy_check=privacy_check,
)
