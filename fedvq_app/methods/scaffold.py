"""SCAFFOLD (Karimireddy et al., 2020): control variates against client drift."""

from dataclasses import dataclass

from fedvq_app.clients.baselines import ScaffoldClient
from fedvq_app.config import option
from fedvq_app.methods.common import classifier_model
from fedvq_app.registry import MethodSpec
from fedvq_app.strategies.fedavg import sampling_kwargs
from fedvq_app.strategies.scaffold import Scaffold


@dataclass(frozen=True)
class ScaffoldOptions:
    server_lr: float = option(
        "scaffold.server-lr", 1.0, minimum=0.0, exclusive_minimum=True, help="server step size towards the mean model"
    )


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
    build_strategy=lambda settings, info: Scaffold(
        server_lr=settings.method_options.server_lr, **sampling_kwargs(settings)
    ),
    client=ScaffoldClient,
    options_type=ScaffoldOptions,
    privacy_check=privacy_check,
)
