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
from typing import TYPE_CHECKING, Any

import torch

from fedvq_app.aggregation.codebook import AGGREGATORS, CodebookParams
from fedvq_app.aggregation.codebook_lloyd import LLOYD
from fedvq_app.clients.fedvq import FedVQClient
from fedvq_app.config import ConfigError, Settings
from fedvq_app.data.datasets import DatasetInfo
from fedvq_app.models.vq import (
    build_vq_classifier,
    codebook_key,
    is_encoder,
    is_shared,
)
from fedvq_app.options import FedVQOptions
from fedvq_app.registry import MethodSpec

if TYPE_CHECKING:
    from fedvq_app.strategies.fedvq import FedVQStrategy


# Server-only parts (strategy, workflow, plots) are imported where they are called: a deployed
# site starts a ClientApp process per message, which loads this module and must not pay for them.


def validate(settings: Settings) -> None:
    """Cross-field checks: combinations that cannot work are errors, not silent fallbacks."""
    opts = settings.options(FedVQOptions)
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
    opts = settings.options(FedVQOptions)
    return build_vq_classifier(settings.model, info.channels, info.num_classes, opts, size=info.size)


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
    from fedvq_app.strategies.fedavg import sampling_kwargs  # noqa: PLC0415 (server only)
    from fedvq_app.strategies.fedvq import FedVQStrategy  # noqa: PLC0415 (server only)

    opts = settings.options(FedVQOptions)
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
    from fedvq_app.server.workflow import run_neural_workflow  # noqa: PLC0415 (server only)

    return run_neural_workflow(grid, dataclasses.replace(settings, experiment_name=tracker.dir.name), tracker)


def plots(*args: Any, **kwargs: Any) -> Any:
    """FedVQ's figures (:func:`~fedvq_app.tracking.fedvq_plots.fedvq_plots`; matplotlib: server only)."""
    from fedvq_app.tracking.fedvq_plots import fedvq_plots  # noqa: PLC0415 (server only)

    return fedvq_plots(*args, **kwargs)


def privacy_check(settings) -> str | None:
    """No DP mode: codebook statistics escape both (see docs/privacy.md)."""
    return (
        "the VQ codebook follows an EMA of raw encoder outputs and code-usage counts are sent in clear; "
        "neither DP mode covers them"
    )


def secagg_check(settings) -> str | None:
    """Only the lloyd codebook aggregation is a sum over clients (docs/privacy.md)."""
    aggregation = settings.options(FedVQOptions).aggregation
    if aggregation != LLOYD:
        return (
            f"codebook.aggregation={aggregation!r} aligns or clusters each client's own codebook; only 'lloyd' "
            "(per-code counts and sums) is a sum over clients"
        )
    return None


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
    plots=plots,
    privacy_check=privacy_check,
    secagg_check=secagg_check,
)
