"""FusedSpaceFed (seed 003): private encoders, a shared decoder and classifier on x + D(E_i(x))."""

from __future__ import annotations

from fedvq_app.clients.fusedspace import FusedSpaceClient
from fedvq_app.config import Settings
from fedvq_app.data.datasets import DatasetInfo
from fedvq_app.methods.common import classifier_model
from fedvq_app.models.fusedspace import FusedSpaceNet, build_fusedspace, is_shared
from fedvq_app.options import FusedSpaceOptions
from fedvq_app.registry import MethodSpec
from fedvq_app.strategies.fedavg import sampling_kwargs
from fedvq_app.strategies.fusedspace import FusedSpaceStrategy


def fusedspace_model(settings: Settings, info: DatasetInfo) -> FusedSpaceNet:
    """The baselines' classifier wrapped by the configured autoencoder."""
    opts = settings.options(FusedSpaceOptions)
    classifier = classifier_model(settings, info)
    return build_fusedspace(classifier, info.channels, opts.dz, opts.autoencoder, opts.width)


def plots(directory, rounds, summary):
    """Method PNGs; matplotlib is imported only when a run finishes."""
    from fedvq_app.tracking.fusedspace_plots import fusedspace_plots  # noqa: PLC0415 - start-up cost: matplotlib, only on this path

    return fusedspace_plots(directory, rounds, summary)


def build_strategy(settings: Settings, info: DatasetInfo) -> FusedSpaceStrategy:
    return FusedSpaceStrategy(is_shared=is_shared, **sampling_kwargs(settings))


def privacy_check(settings: Settings) -> str | None:
    """DP-SGD covers only the loop's optimizer: no second optimizer, no warm-up (see docs/privacy.md)."""
    opts = settings.options(FusedSpaceOptions)
    if settings.privacy.mode == "sample-dpsgd" and (opts.ae_lr > 0 or opts.warmup_epochs > 0):
        return (
            "the autoencoder's own Adam (fusedspace.ae-lr > 0) and the encoder warm-up (fusedspace.warmup-epochs "
            "> 0) step on non-private gradients; set both to 0"
        )
    return None


SPEC = MethodSpec(
    name="fusedspace",
    summary="private encoders; decoder + classifier on x + D(E_i(x)) averaged (decoder-only aggregation)",
    build_model=fusedspace_model,
    build_strategy=build_strategy,
    client=FusedSpaceClient,
    is_shared=is_shared,
    options_type=FusedSpaceOptions,
    plots=plots,
    privacy_check=privacy_check,
)
