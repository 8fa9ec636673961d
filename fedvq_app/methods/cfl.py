"""Clustered Federated Learning (Sattler et al., 2020; seed 001).

Server: :class:`~fedvq_app.strategies.cfl.ClusteredFL` (per-cluster models, norm
criterion, complete-linkage bipartition). Client: the plain FedAvg client -- it
trains the model it is sent and replies with the new weights; the server takes
the update as ``reply - sent`` for every array it sent. Workflow: the common
round loop plus a final cross-evaluation of the cached models.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedvq_app.aggregation.clustering import SplitRule
from fedvq_app.clients.base import NeuralClient
from fedvq_app.config import Settings, option
from fedvq_app.data.datasets import DatasetInfo
from fedvq_app.methods.common import classifier_model
from fedvq_app.registry import MethodSpec
from fedvq_app.server.cfl_workflow import run_cfl_workflow
from fedvq_app.strategies.cfl import WEIGHTINGS, ClusteredFL
from fedvq_app.strategies.fedavg import sampling_kwargs
from fedvq_app.tracking.cfl_plots import cfl_plots


@dataclass(frozen=True)
class CflOptions:
    eps1: float = option(
        "cfl.eps1",
        0.4,
        minimum=0.0,
        exclusive_minimum=True,
        help="split only when the norm of a cluster's mean update is below this (joint convergence)",
    )
    eps2: float = option(
        "cfl.eps2",
        1.4,
        minimum=0.0,
        help="... and the largest member update norm is above this (some member still pulls away)",
    )
    min_cluster_size: int = option(
        "cfl.min-cluster-size",
        2,
        minimum=1,
        help="a cluster splits only with >= 2x this many participants, and only if both halves get this many",
    )
    warmup_rounds: int = option(
        "cfl.warmup-rounds", 5, minimum=1, help="no split before this round (norms are large while training starts)"
    )
    weighting: str = option(
        "cfl.weighting",
        "uniform",
        choices=WEIGHTINGS,
        help="mean of member updates: uniform (as the reference code) or weighted by num-examples",
    )


def build_strategy(settings: Settings, info: DatasetInfo) -> ClusteredFL:
    """The CFL strategy; norms and similarities use the model's trainable parameters."""
    opts: CflOptions = settings.method_options
    model = classifier_model(settings, info)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    rule = SplitRule(opts.eps1, opts.eps2, opts.min_cluster_size, opts.warmup_rounds)
    shift = settings.shift
    rotated = any(a % 360 for a in shift.angles) or (shift.rotate_fraction > 0 and shift.rotate_degrees % 360 != 0)
    return ClusteredFL(
        rule=rule,
        trainable=trainable,
        weighting=opts.weighting,
        rotation_active=rotated,
        **sampling_kwargs(settings),
    )


SPEC = MethodSpec(
    name="cfl",
    summary="clustered FL: per-cluster models, bipartition by update cosine similarity when norms say so",
    build_model=classifier_model,
    build_strategy=build_strategy,
    client=NeuralClient,
    options_type=CflOptions,
    server_workflow=run_cfl_workflow,
    plots=cfl_plots,
)
