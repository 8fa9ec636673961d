"""FedProx (Li et al., 2020): FedAvg plus a proximal term on the client."""

from dataclasses import dataclass

from fedvq_app.clients.baselines import FedProxClient
from fedvq_app.config import option
from fedvq_app.methods.common import classifier_model
from fedvq_app.registry import MethodSpec
from fedvq_app.strategies.fedavg import sampling_kwargs
from fedvq_app.strategies.fedprox import GuardedFedProx


@dataclass(frozen=True)
class FedProxOptions:
    mu: float = option("fedprox.mu", 0.01, minimum=0.0, help="proximal coefficient mu of (mu/2)||w - w_global||^2")


SPEC = MethodSpec(
    name="fedprox",
    summary="FedAvg + (mu/2)||w - w_global||^2 in the local loss",
    build_model=classifier_model,
    build_strategy=lambda settings, info: GuardedFedProx(
        proximal_mu=settings.method_options.mu, **sampling_kwargs(settings)
    ),
    client=FedProxClient,
    options_type=FedProxOptions,
)
