"""The strategy contract: what the round loop, the workflows and the checkpoint read from a strategy.

Flower's :class:`~flwr.serverapp.strategy.Strategy` covers sending and aggregating
(``configure_train``, ``aggregate_train``, ``configure_evaluate``, ``aggregate_evaluate``).
The project's loop (:mod:`fedvq_app.server.loop`), the neural workflow
(:mod:`fedvq_app.server.workflow`) and the checkpoint (:mod:`fedvq_app.server.checkpoint`)
also read the members below. They are declared once, here; :class:`~fedvq_app.strategies.guard.ReplyGuard`
implements them with defaults for every neural strategy, the privacy wrappers
(:mod:`fedvq_app.strategies.privacy`) forward them explicitly, and
``tests/test_strategy_contract.py`` holds every method's strategy, wrapped or not, to it.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from flwr.serverapp.strategy import Strategy


@runtime_checkable
class RoundStrategy(Protocol):
    """A Flower strategy the project's round loop can drive, report on and checkpoint."""

    @property
    def weighted_by_key(self) -> str:
        """Reply metric that weighs a client (and must be a positive number)."""
        ...

    @property
    def rejections(self) -> list[tuple[int, str]]:
        """(node id, reason) of every reply the last aggregation refused."""
        ...

    @property
    def accepted_nodes(self) -> list[int]:
        """Node ids whose replies the last aggregation used."""
        ...

    @property
    def max_num_examples(self) -> int | None:
        """Most examples one client can claim (the whole training pool); None = unchecked."""
        ...

    @max_num_examples.setter
    def max_num_examples(self, value: int | None) -> None: ...

    @property
    def min_available_nodes(self) -> int:
        """Flower's sampling minimums: the loop waits for this many nodes."""
        ...

    @property
    def min_train_nodes(self) -> int: ...

    @property
    def min_evaluate_nodes(self) -> int: ...

    def configure_train(self, server_round: int, arrays: Any, config: Any, grid: Any) -> Any: ...

    def aggregate_train(self, server_round: int, replies: Any) -> Any: ...

    def configure_evaluate(self, server_round: int, arrays: Any, config: Any, grid: Any) -> Any: ...

    def aggregate_evaluate(self, server_round: int, replies: Any) -> Any: ...

    def round_report(self) -> dict[str, Any]:
        """The method's own figures of the round just finished (rounds.jsonl ``strategy``)."""
        ...

    def final_report(self) -> dict[str, Any]:
        """The method's own figures at the end (summary.json under the method's name)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """What the strategy must keep across a resume (arrays and JSON-able values)."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""
        ...


def innermost(strategy: Strategy) -> Strategy:
    """The method's own strategy under any privacy wrappers (Flower's DP wrappers keep it in ``.strategy``)."""
    inner = getattr(strategy, "strategy", None)
    while isinstance(inner, Strategy):
        strategy, inner = inner, getattr(inner, "strategy", None)
    return strategy
