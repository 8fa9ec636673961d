"""FedLoGe (Xiao et al., ICLR 2024, seed 002): joint local and generic FL on long-tailed data.

A backbone trained through a static sparse ETF classifier (SSE-C), a global head
and private local heads trained on detached features, GLA-FR realignment, and
three inference modes (generic, global, personalized). See docs/fedloge.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fedvq_app.clients.fedloge import FedLoGeClient
from fedvq_app.config import ConfigError, Settings
from fedvq_app.models.fedloge import (
    build_fedloge_model,
    is_shared,
)
from fedvq_app.options import FedLoGeOptions
from fedvq_app.registry import MethodSpec

if TYPE_CHECKING:
    from fedvq_app.strategies.fedloge import FedLoGeStrategy


# Server-only parts (strategy, workflow, plots) are imported where they are called: a deployed
# site starts a ClientApp process per message, which loads this module and must not pay for them.


def validate(settings: Settings) -> None:
    """The group thresholds must nest."""
    opts = settings.options(FedLoGeOptions)
    if opts.medium_share < opts.head_share:
        raise ConfigError(
            f"config key 'fedloge.medium-share' has invalid value {opts.medium_share}: "
            f"expected a float >= fedloge.head-share ({opts.head_share})"
        )


def build_strategy(settings: Settings, info) -> FedLoGeStrategy:
    from fedvq_app.strategies.fedavg import sampling_kwargs  # noqa: PLC0415 (server only)
    from fedvq_app.strategies.fedloge import FedLoGeStrategy  # noqa: PLC0415 (server only)

    opts = settings.options(FedLoGeOptions)
    return FedLoGeStrategy(
        num_classes=info.num_classes,
        num_rounds=settings.num_server_rounds,
        realign_each_round=opts.realign_each_round,
        head_share=opts.head_share,
        medium_share=opts.medium_share,
        **sampling_kwargs(settings),
    )


def plots(*args: Any, **kwargs: Any) -> Any:
    """FedLoGe's figures (:func:`~fedvq_app.tracking.fedloge_plots.fedloge_plots`; matplotlib: server only)."""
    from fedvq_app.tracking.fedloge_plots import fedloge_plots  # noqa: PLC0415 (server only)

    return fedloge_plots(*args, **kwargs)


SPEC = MethodSpec(
    name="fedloge",
    summary="backbone through a frozen sparse ETF (SSE-C), global + private local heads, GLA-FR realignment",
    build_model=build_fedloge_model,
    build_strategy=build_strategy,
    client=FedLoGeClient,
    is_shared=is_shared,
    options_type=FedLoGeOptions,
    validate=validate,
    plots=plots,
)
