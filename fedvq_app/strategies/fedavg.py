"""FedAvg with screened replies and scalar-only metric averaging."""

from __future__ import annotations

from flwr.serverapp.strategy import FedAvg

from fedvq_app.strategies.guard import ReplyGuard


def sampling_kwargs(settings) -> dict:
    """The FedAvg sampling arguments every strategy takes from the run config."""
    return {
        "fraction_train": settings.fraction_train,
        "fraction_evaluate": settings.fraction_evaluate,
        "min_train_nodes": settings.min_train_nodes,
        "min_evaluate_nodes": settings.min_evaluate_nodes,
        "min_available_nodes": settings.min_available_nodes,
    }


class FedAvgStrategy(ReplyGuard, FedAvg):
    """Flower's FedAvg behind the reply guard."""
