"""ClientApp: resolve the method from the run config and delegate to its client.

Importing this module imports no method: the registry loads a method's modules
when a message of a run using it arrives (a deployment starts a process per
message, so what is imported here is paid on every message at every site).
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedvq_app.config import load_settings
from fedvq_app.registry import custom_actions, get_method

app = ClientApp()


def _client(context: Context):
    settings = load_settings(context.run_config, context.node_config)
    return get_method(settings.method).client(settings, context)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Local training of the method's shared parameters."""
    return _client(context).train(msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluation of the client's model on its validation split and the test set."""
    return _client(context).evaluate(msg)


def _action(handler_name: str):
    """A handler that routes one custom message type to the method client's method."""

    def handle(msg: Message, context: Context) -> Message:
        return getattr(_client(context), handler_name)(msg)

    handle.__name__ = handler_name
    return handle


# custom message types of the registered methods, e.g. the federated k-means phases:
# "query.kmeans_handshake" -> KMeansClient.handshake, ...
for _message_type, _handler in custom_actions().items():
    _category, _name = _message_type.split(".")
    getattr(app, _category)(_name)(_action(_handler))
