"""ClientApp: resolve the method from the run config and delegate to its client.

Importing this module imports no method: the registry loads a method's modules
when a message of a run using it arrives (a deployment starts a process per
message, so what is imported here is paid on every message at every site).

A :class:`~fedvq_app.config.ConfigError` on a client (bad node config, missing
data file, unusable device...) never reaches Flower as an exception, which would
print a traceback for every node and round: the node logs the one line and
replies with an error marked as a configuration error (see fedvq_app.errors),
which the server counts as rejected and stops on when every node sends one.
"""

from __future__ import annotations

from functools import lru_cache
from logging import ERROR

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.common.logger import log

from fedvq_app.clients.secure_sum import secure_handler, secure_sum_mod
from fedvq_app.config import ConfigError, check_node_config
from fedvq_app.errors import config_error_reply
from fedvq_app.registry import custom_actions, get_method, load_settings

# secure aggregation (secagg.mode): Flower's SecAgg+ mod for secure exchanges, no summed reply in the clear
app = ClientApp(mods=[secure_sum_mod])


@lru_cache(maxsize=16)
def _settings(run_config: tuple, data_dir: str | None):
    """Validated settings of a run, once per process and site data folder (not once per message)."""
    return load_settings(dict(run_config), {"data-dir": data_dir} if data_dir else None)


def _client(context: Context):
    check_node_config(context.node_config)
    # the node config enters the settings only through a site's data-dir (the rest is read by the client)
    settings = _settings(tuple(sorted(context.run_config.items())), context.node_config.get("data-dir"))
    return get_method(settings.method).client(settings, context)


def _run(handler_name: str, msg: Message, context: Context) -> Message:
    try:
        return getattr(_client(context), handler_name)(msg)
    except ConfigError as err:
        log(ERROR, "[fedvq] configuration error on node %s: %s", context.node_id, err)
        return config_error_reply(msg, err)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Local training of the method's shared parameters.

    Every SecAgg+ stage arrives as a ``train`` message: the server names the handler of a secure exchange
    (e.g. a k-means Lloyd step) in the message, see fedvq_app/clients/secure_sum.py.
    """
    return _run(secure_handler(msg) or "train", msg, context)


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


# custom message types of the registered methods, e.g. the federated k-means phases:
# "query.kmeans_handshake" -> KMeansClient.handshake, ...
for _message_type, _handler in custom_actions().items():
    _category, _name = _message_type.split(".")
    getattr(app, _category)(_name)(_action(_handler))
