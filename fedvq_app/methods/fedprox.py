"""FedProx (Li et al., 2020): FedAvg plus a proximal term on the client."""

from fedvq_app.clients.baselines import FedProxClient
from fedvq_app.methods.common import classifier_model
from fedvq_app.options import FedProxOptions
from fedvq_app.registry import MethodSpec
from fedvq_app.strategies.fedavg import sampling_kwargs
from fedvq_app.strategies.fedprox import FedProxStrategy

SPEC = MethodSpec(
    name="fedprox",
    summary="FedAvg + (mu/2)||w - w_global||^2 in the local loss",
    build_model=classifier_model,
    build_strategy=lambda settings, info: FedProxStrategy(
        proximal_mu=settings.options(FedProxOptions).mu, **sampling_kwargs(settings)
    ),
    client=FedProxClient,
    options_type=FedProxOptions,
    secagg_check=lambda settings: None,  # the example-weighted sum goes through SecAgg+
)
