"""FedLoGe (Xiao et al., ICLR 2024, seed 002): joint local and generic FL on long-tailed data.

A backbone trained through a static sparse ETF classifier (SSE-C), a global head
and private local heads trained on detached features, GLA-FR realignment, and
three inference modes (generic, global, personalized). See docs/fedloge.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedvq_app.clients.fedloge import FedLoGeClient
from fedvq_app.config import ConfigError, Settings, option
from fedvq_app.models.fedloge import (
    PERSONAL_FORMULAS,
    PERSONAL_GLOBAL_HEADS,
    SSE_C_KINDS,
    build_fedloge_model,
    is_shared,
)
from fedvq_app.registry import MethodSpec
from fedvq_app.strategies.fedavg import sampling_kwargs
from fedvq_app.strategies.fedloge import FedLoGeStrategy
from fedvq_app.tracking.fedloge_plots import fedloge_plots


@dataclass(frozen=True)
class FedLoGeOptions:
    sse_c: str = option(
        "fedloge.sse-c",
        "top-magnitude",
        choices=SSE_C_KINDS,
        help="SSE-C: top-magnitude (per-row largest entries kept, unit norm, no bias) or reference (the reference "
        "code's: random positions zeroed, class vectors at norm 0.1 with the ETF's angles, random bias)",
    )
    sparsity: float = option(
        "fedloge.sparsity",
        0.6,
        minimum=0.0,
        maximum=0.95,
        help="share of the SSE-C entries zeroed before it is frozen",
    )
    tau: float = option(
        "fedloge.tau",
        1.7,
        minimum=0.0,
        exclusive_minimum=True,
        help="GLA-FR: norm every class row of the realigned global head is scaled to",
    )
    realign_each_round: bool = option(
        "fedloge.realign-each-round",
        True,
        help="apply GLA-FR at every evaluation (false: only after the last round; earlier rounds use raw heads)",
    )
    personal_formula: str = option(
        "fedloge.personal-formula",
        "raw-heads",
        choices=PERSONAL_FORMULAS,
        help="personal mode: raw-local (the reference's realignment: raw local head + global rows at the local row "
        "norms), realigned-local (realigned local head + fedloge.personal-global-head) or raw-heads (the reference's "
        "per-round localtest: raw local head + raw global head)",
    )
    personal_global_head: str = option(
        "fedloge.personal-global-head",
        "raw",
        choices=PERSONAL_GLOBAL_HEADS,
        help="realigned-local formula: the global head added to the realigned local head, raw or realigned",
    )
    local_refit_epochs: int = option(
        "fedloge.local-refit-epochs",
        20,
        minimum=0,
        help="at evaluation, epochs of training the local head (alone, train.optimizer at train.lr) on the received "
        "backbone's features of the client's train split before the personal modes are scored; used for that "
        "evaluation only (0 = the reference: the local head as trained against the client's own pre-aggregation "
        "backbone; 20 chosen on the clients' own validation splits, docs/fedloge.md)",
    )
    head_share: float = option(
        "fedloge.head-share",
        0.75,
        minimum=0.0,
        maximum=1.0,
        exclusive_minimum=True,
        help="head classes = most frequent classes holding this share of the training samples",
    )
    medium_share: float = option(
        "fedloge.medium-share",
        0.95,
        minimum=0.0,
        maximum=1.0,
        exclusive_minimum=True,
        help="head + medium classes hold this share of the training samples; the rest is the tail",
    )


def validate(settings: Settings) -> None:
    """The group thresholds must nest."""
    opts: FedLoGeOptions = settings.method_options
    if opts.medium_share < opts.head_share:
        raise ConfigError(
            f"config key 'fedloge.medium-share' has invalid value {opts.medium_share}: "
            f"expected a float >= fedloge.head-share ({opts.head_share})"
        )


def build_strategy(settings: Settings, info) -> FedLoGeStrategy:
    opts: FedLoGeOptions = settings.method_options
    return FedLoGeStrategy(
        num_classes=info.num_classes,
        num_rounds=settings.num_server_rounds,
        realign_each_round=opts.realign_each_round,
        head_share=opts.head_share,
        medium_share=opts.medium_share,
        **sampling_kwargs(settings),
    )


SPEC = MethodSpec(
    name="fedloge",
    summary="backbone through a frozen sparse ETF (SSE-C), global + private local heads, GLA-FR realignment",
    build_model=build_fedloge_model,
    build_strategy=build_strategy,
    client=FedLoGeClient,
    is_shared=is_shared,
    options_type=FedLoGeOptions,
    validate=validate,
    plots=fedloge_plots,
)
