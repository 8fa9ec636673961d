"""Clustered Federated Learning (Sattler et al., 2020; seed 001).

Server: :class:`~fedvq_app.strategies.cfl.CFLStrategy` (per-cluster models, norm
criterion, complete-linkage bipartition). Client: the plain FedAvg client -- it
trains the model it is sent and replies with the new weights; the server takes
the update as ``reply - sent`` for every array it sent. Workflow: the common
round loop plus a final cross-evaluation of the cached models.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fedvq_app.aggregation.clustering import SplitRule
from fedvq_app.clients.base import NeuralClient
from fedvq_app.config import Settings
from fedvq_app.data.datasets import DatasetInfo
from fedvq_app.methods.common import classifier_model
from fedvq_app.options import CflOptions
from fedvq_app.registry import MethodSpec

if TYPE_CHECKING:
    from fedvq_app.strategies.cfl import CFLStrategy


# Server-only parts (strategy, workflow, plots) are imported where they are called: a deployed
# site starts a ClientApp process per message, which loads this module and must not pay for them.


def build_strategy(settings: Settings, info: DatasetInfo) -> CFLStrategy:
    """The CFL strategy; norms and similarities use the model's trainable parameters."""
    from fedvq_app.strategies.cfl import CFLStrategy  # noqa: PLC0415 (server only)
    from fedvq_app.strategies.fedavg import sampling_kwargs  # noqa: PLC0415 (server only)

    opts = settings.options(CflOptions)
    model = classifier_model(settings, info)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    rule = SplitRule(
        opts.eps1,
        opts.eps2,
        opts.min_cluster_size,
        opts.warmup_rounds,
        opts.threshold_scale,
        None if opts.max_cross_similarity >= 1.0 else opts.max_cross_similarity,
    )
    shift = settings.shift
    rotated = any(a % 360 for a in shift.angles) or (shift.rotate_fraction > 0 and shift.rotate_degrees % 360 != 0)
    return CFLStrategy(
        rule=rule,
        trainable=trainable,
        weighting=opts.weighting,
        rotation_active=rotated,
        **sampling_kwargs(settings),
    )


def workflow(*args: Any, **kwargs: Any) -> Any:
    """The round loop, then the cross-evaluation (:func:`~fedvq_app.server.cfl_workflow.run_cfl_workflow`)."""
    from fedvq_app.server.cfl_workflow import run_cfl_workflow  # noqa: PLC0415 (server only)

    return run_cfl_workflow(*args, **kwargs)


def plots(*args: Any, **kwargs: Any) -> Any:
    """CFL's figures (:func:`~fedvq_app.tracking.cfl_plots.cfl_plots`; matplotlib: server only)."""
    from fedvq_app.tracking.cfl_plots import cfl_plots  # noqa: PLC0415 (server only)

    return cfl_plots(*args, **kwargs)


def privacy_check(settings) -> str | None:
    """Sample-level DP-SGD only (see docs/privacy.md)."""
    if settings.privacy.client_level:
        return (
            "CFL averages within data-dependent clusters split on raw update similarities, while the client-level "
            "noise is calibrated to one mean over all sampled clients; use 'sample-dpsgd'"
        )
    return None


def secagg_check(settings) -> str | None:
    """CFL needs every client's own update (docs/privacy.md)."""
    return "CFL splits clusters on the pairwise cosine similarities of each client's own update"


SPEC = MethodSpec(
    name="cfl",
    summary="clustered FL: per-cluster models, bipartition by update cosine similarity when norms say so",
    build_model=classifier_model,
    build_strategy=build_strategy,
    client=NeuralClient,
    options_type=CflOptions,
    server_workflow=workflow,
    plots=plots,
    privacy_check=privacy_check,
    secagg_check=secagg_check,
)
