"""FedProx: Flower's strategy (it sends ``proximal-mu``) behind the reply guard."""

from __future__ import annotations

from flwr.serverapp.strategy import FedProx

from fedvq_app.strategies.guard import ReplyGuard


class FedProxStrategy(ReplyGuard, FedProx):
    """Flower's FedProx behind the reply guard."""
