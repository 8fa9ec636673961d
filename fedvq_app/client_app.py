"""ClientApp: resolve the method from the run config and delegate to its client.

A :class:`~fedvq_app.config.ConfigError` on a client (bad node config, missing
data file, unusable device...) never reaches Flower as an exception, which would
print a traceback for every node and round: the node logs the one line and
replies with an error marked as a configuration error (see fedvq_app.errors),
which the server counts as rejected and stops on when every node sends one.
"""

from __future__ import annotations

from logging import ERROR

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.common.logger import log

from fedvq_app.clients.kmeans import ACTIONS as KMEANS_ACTIONS
from fedvq_app.config import ConfigError, check_node_config, load_settings
from fedvq_app.errors import config_error_reply
from fedvq_app.registry import get_method

app = ClientApp()


def _client(context: Context):
    check_node_config(context.node_config)
    settings = load_settings(context.run_config, context.node_config)
    return get_method(settings.method).client(settings, context)


def _run(handler_name: str, msg: Message, context: Context) -> Message:
    try:
        return getattr(_client(context), handler_name)(msg)
    except ConfigError as err:
        log(ERROR, "[fedvq] configuration error on node %s: %s", context.node_id, err)
        return config_error_reply(msg, err)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Local training of the method's shared parameters."""
    return _run("train", msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluation of the client's model on its validation split and the test set."""
    return _run("evaluate", msg, context)


def _action(handler_name: str):
    """A handler that routes one custom message type to the method client's method."""

    def handle(msg: Message, context: Context) -> Message:
        return _run(handler_name, msg, context)

    handle.__name__ = handler_name
    return handle


# federated k-means phases: "query.kmeans_handshake" -> KMeansClient.handshake, ...
for _message_type, _handler in KMEANS_ACTIONS.items():
    _category, _name = _message_type.split(".")
    getattr(app, _category)(_name)(_action(_handler))
