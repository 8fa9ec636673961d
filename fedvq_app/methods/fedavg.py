"""FedAvg (McMahan et al., 2017): Flower's strategy, the plain client."""

from fedvq_app.clients.base import NeuralClient
from fedvq_app.methods.common import classifier_model
from fedvq_app.registry import MethodSpec
from fedvq_app.strategies.fedavg import FedAvgStrategy, sampling_kwargs

SPEC = MethodSpec(
    name="fedavg",
    summary="weighted average of all parameters",
    build_model=classifier_model,
    build_strategy=lambda settings, info: FedAvgStrategy(**sampling_kwargs(settings)),
    client=NeuralClient,
    secagg_check=lambda settings: None,  # the example-weighted sum goes through SecAgg+
)
