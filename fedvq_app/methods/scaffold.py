"""SCAFFOLD (Karimireddy et al., 2020): control variates against client drift."""

from fedvq_app.clients.baselines import ScaffoldClient
from fedvq_app.methods.common import classifier_model
from fedvq_app.options import ScaffoldOptions
from fedvq_app.registry import MethodSpec
from fedvq_app.strategies.fedavg import sampling_kwargs
from fedvq_app.strategies.scaffold import ScaffoldStrategy


def privacy_check(settings) -> str | None:
    """No DP mode: the control variates travel unnoised (see docs/privacy.md)."""
    return (
        "SCAFFOLD's control-variate change (scaffold-dc, the mean raw local gradient) is sent and averaged "
        "without clipping or noise; no privacy mode covers it"
    )


SPEC = MethodSpec(
    name="scaffold",
    summary="FedAvg + server/client control variates correcting local gradients",
    build_model=classifier_model,
    build_strategy=lambda settings, info: ScaffoldStrategy(
        server_lr=settings.options(ScaffoldOptions).server_lr, **sampling_kwargs(settings)
    ),
    client=ScaffoldClient,
    options_type=ScaffoldOptions,
    privacy_check=privacy_check,
    # the weighted model and the control-variate changes (a plain sum) both go through SecAgg+
    secagg_check=lambda settings: None,
)
