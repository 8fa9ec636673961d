"""A Flower ``Grid`` that forwards every call to the run's real grid.

The server wraps the grid it is given to change one behaviour and keep the rest:
:class:`~fedvq_app.tracking.communication.MeteredGrid` counts the bytes of what passes
through, :class:`~fedvq_app.server.loop.PatientGrid` waits a bounded time for nodes.
Each subclass overrides its hook and calls ``super()`` for the real work.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import Message
from flwr.serverapp import Grid


class GridProxy(Grid):
    """Every ``Grid`` method delegated to ``grid`` (attributes too)."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid

    def set_run(self, run) -> None:
        self.grid.set_run(run)

    @property
    def run(self):
        return self.grid.run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.grid.send_and_receive(messages, timeout=timeout)

    def __getattr__(self, name: str):
        return getattr(self.grid, name)
