"""FusedSpaceFed (seed 003): private encoders, a shared decoder and classifier on x + D(E_i(x))."""

from __future__ import annotations

from dataclasses import dataclass

from fedvq_app.clients.fusedspace import FusedSpaceClient
from fedvq_app.config import Settings, option
from fedvq_app.data.datasets import DatasetInfo
from fedvq_app.methods.common import classifier_model
from fedvq_app.models.fusedspace import FusedSpaceNet, build_fusedspace, is_shared
from fedvq_app.registry import MethodSpec
from fedvq_app.strategies.fedavg import sampling_kwargs
from fedvq_app.strategies.fusedspace import DecoderOnlyFedAvg


@dataclass(frozen=True)
class FusedSpaceOptions:
    dz: int = option("fusedspace.dz", 16, minimum=1, help="latent channels of the autoencoder bottleneck (H/4 x W/4)")
    lambda_rec: float = option(
        "fusedspace.lambda-rec",
        1.0,
        minimum=0.0,
        help="weight of the reconstruction loss ||D(E_i(x)) - x||^2 next to the classification loss",
    )
    warmup_epochs: int = option(
        "fusedspace.warmup-epochs",
        1,
        minimum=0,
        help="epochs per round training the private encoder alone against the frozen new global decoder",
    )
    ae_lr: float = option(
        "fusedspace.ae-lr",
        0.001,
        minimum=0.0,
        help="Adam learning rate of encoder and decoder (seed: 1e-3); 0 = train.optimizer at train.lr for all",
    )
    gamma_scope: str = option(
        "fusedspace.gamma-scope",
        "classifier",
        choices=("classifier", "shared"),
        help="parameters behind Gamma: the classifier (comparable with the baselines) or decoder + classifier",
    )


def fusedspace_model(settings: Settings, info: DatasetInfo) -> FusedSpaceNet:
    """The baselines' classifier wrapped by an encoder/decoder of width ``fusedspace.dz``."""
    classifier = classifier_model(settings, info)
    return build_fusedspace(classifier, info.channels, settings.method_options.dz)


def plots(directory, rounds, summary):
    """Method PNGs; matplotlib is imported only when a run finishes."""
    from fedvq_app.tracking.fusedspace_plots import fusedspace_plots  # noqa: PLC0415

    return fusedspace_plots(directory, rounds, summary)


def build_strategy(settings: Settings, info: DatasetInfo) -> DecoderOnlyFedAvg:
    return DecoderOnlyFedAvg(is_shared=is_shared, **sampling_kwargs(settings))


def privacy_check(settings: Settings) -> str | None:
    """DP-SGD covers only the loop's optimizer: no second optimizer, no warm-up (see docs/privacy.md)."""
    opts: FusedSpaceOptions = settings.method_options
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
