"""FusedSpaceFed (seed 003): private encoders, a shared decoder and classifier on x + D(E_i(x))."""

from __future__ import annotations

from dataclasses import dataclass

from fedvq_app.clients.fusedspace import AE_OPTIMIZERS, FusedSpaceClient
from fedvq_app.config import Settings, option
from fedvq_app.data.datasets import DatasetInfo
from fedvq_app.methods.common import classifier_model
from fedvq_app.models.fusedspace import AUTOENCODERS, FusedSpaceNet, build_fusedspace, is_shared
from fedvq_app.registry import MethodSpec
from fedvq_app.strategies.fedavg import sampling_kwargs
from fedvq_app.strategies.fusedspace import DecoderOnlyFedAvg


@dataclass(frozen=True)
class FusedSpaceOptions:
    autoencoder: str = option(
        "fusedspace.autoencoder",
        "unet",
        choices=AUTOENCODERS,
        help="unet: the reference's small U-Net (private encoder levels feed the shared decoder through skips); "
        "plain: conv encoder to a dz latent, decoder without skips",
    )
    width: int = option("fusedspace.width", 16, minimum=1, help="channels of the autoencoder's first level")
    dz: int = option(
        "fusedspace.dz", 16, minimum=1, help="plain autoencoder: latent channels of the bottleneck (H/4 x W/4)"
    )
    task_aware: bool = option(
        "fusedspace.task-aware",
        True,
        help="true: the classification loss trains the autoencoder through x + D(E_i(x)); false: the reference's "
        "two steps (autoencoder on reconstruction only, classifier on x + D(E_i(x)) detached)",
    )
    lambda_rec: float = option(
        "fusedspace.lambda-rec",
        5.0,
        minimum=0.0,
        help="weight of the reconstruction loss ||D(E_i(x)) - x||^2 next to the classification loss (5 chosen on "
        "the pooled validation splits at 30 rounds, docs/fusedspace.md; the seed: 1)",
    )
    warmup_epochs: int = option(
        "fusedspace.warmup-epochs",
        1,
        minimum=0,
        help="epochs per round training the private encoder alone against the frozen new global decoder",
    )
    l2sp: float = option(
        "fusedspace.l2sp",
        0.0,
        minimum=0.0,
        help="L2-SP: weight of sum ||w - w_0||^2 pulling the encoder towards its initial weights (reference: 1e-3)",
    )
    ae_optimizer: str = option(
        "fusedspace.ae-optimizer",
        "sgd",
        choices=AE_OPTIMIZERS,
        help="optimizer of encoder + decoder: sgd (the reference: momentum, weight decay) or adam",
    )
    ae_lr: float = option(
        "fusedspace.ae-lr",
        0.01,
        minimum=0.0,
        help="learning rate of the autoencoder's optimizer (reference: SGD 0.01; the seed's Adam: 0.001); "
        "0 = train.optimizer at train.lr for everything",
    )
    ae_momentum: float = option(
        "fusedspace.ae-momentum", 0.9, minimum=0.0, maximum=1.0, help="SGD momentum of the autoencoder"
    )
    ae_weight_decay: float = option(
        "fusedspace.ae-weight-decay", 5e-4, minimum=0.0, help="weight decay of the autoencoder's optimizer"
    )
    ae_keep_state: bool = option(
        "fusedspace.ae-keep-state",
        True,
        help="keep the autoencoder optimizer's state (momentum / Adam moments) across rounds in context.state, "
        "as the reference's long-lived clients do; false = a fresh optimizer every round",
    )
    gamma_scope: str = option(
        "fusedspace.gamma-scope",
        "classifier",
        choices=("classifier", "shared"),
        help="parameters behind Gamma: the classifier (comparable with the baselines) or decoder + classifier",
    )


def fusedspace_model(settings: Settings, info: DatasetInfo) -> FusedSpaceNet:
    """The baselines' classifier wrapped by the configured autoencoder."""
    opts: FusedSpaceOptions = settings.method_options
    classifier = classifier_model(settings, info)
    return build_fusedspace(classifier, info.channels, opts.dz, opts.autoencoder, opts.width)


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
