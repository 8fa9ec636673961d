"""How a failed run ends: one line for the user, the run marked failed in every runtime.

Flower 1.41 marks a run *failed* only when the ServerApp raises an ``Exception``
(``flwr/simulation/run_simulation.py`` runs it in a thread that catches
``Exception``; ``flwr/superlink/runtime/run_serverapp.py`` catches ``Exception``,
logs it with its traceback, pushes the buffered log and reports
``finished:failed`` with ``details = "ServerApp failed with exception: <str>"``).
A ``SystemExit`` slips past both: the run looks completed in simulation, and in a
deployment the log is never pushed.

So the ServerApp ends every failure by raising :class:`RunFailed`, whose ``str``
is the one line, after logging that line itself. :class:`OneLineFailures`, a
filter on Flower's logger, drops the traceback Flower would print for it (and
for a :class:`~fedvq_app.config.ConfigError`): the line is the whole story.

Clients never raise a ConfigError into Flower (which would print a traceback on
the SuperNode, or in the simulation log, for every node and round): the ClientApp
turns it into an error reply whose reason starts with :data:`CONFIG_ERROR_PREFIX`,
so the server can tell a configuration error from a crash
(:func:`config_error_of`) and stop the run when every reply of a round carries one.
"""

from __future__ import annotations

import logging
import sys
from logging import WARNING

from flwr.app import Error, Message
from flwr.common.constant import ErrorCode
from flwr.common.logger import FLOWER_LOGGER, log

from fedvq_app.config import ConfigError

#: reason prefix of a client's error reply that carries a configuration error
CONFIG_ERROR_PREFIX = "ConfigError: "


class RunFailed(Exception):  # noqa: N818 - reads as what happened to the run
    """The run cannot go on; ``str(err)`` is the one line the user sees."""


class OneLineFailures(logging.Filter):
    """Strip the traceback Flower attaches to a RunFailed / ConfigError it logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if isinstance(record.exc_info, tuple) else None
        if isinstance(exc, RunFailed | ConfigError):
            record.exc_info, record.exc_text = None, None
            if isinstance(record.msg, str) and "raised an exception" in record.msg:
                record.msg = record.msg + ": %s"
                record.args = (*(record.args or ()), str(exc))
        return True


def install_one_line_failures() -> None:
    """Add the filter to Flower's logger once per process."""
    if not any(isinstance(f, OneLineFailures) for f in FLOWER_LOGGER.filters):
        FLOWER_LOGGER.addFilter(OneLineFailures())


def config_error_reply(msg: Message, err: ConfigError) -> Message:
    """An error reply a ClientApp sends instead of raising (no traceback anywhere)."""
    error = Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=f"{CONFIG_ERROR_PREFIX}{err}")
    return Message(error, reply_to=msg)


def config_error_of(reason: str) -> str | None:
    """The configuration error a client's error reason carries, or None for any other error."""
    return reason[len(CONFIG_ERROR_PREFIX) :] if reason.startswith(CONFIG_ERROR_PREFIX) else None


def is_node_unavailable(reply: Message) -> bool:
    """The SuperLink's own error for a node that is gone (not a reply of that node)."""
    return reply.has_error() and reply.error.code == ErrorCode.NODE_UNAVAILABLE


# ---------------------------------------------------------------------------- named warnings
#: names of the warnings a run may raise about legal but suspicious input (docs/reliability.md)
WARNING_NAMES = ("tiny-clients", "dominant-client", "empty-classes", "few-samples", "rejected-replies", "site-excluded")


def warn(collector: list | None, name: str, message: str) -> None:
    """Log ``[fedvq] warning <name>: message`` and keep it for summary.json's ``warnings``.

    A warning repeated with the same message is kept once; the same name with another
    message (e.g. ``site-excluded`` for a second site) is kept as another entry.
    """
    if name not in WARNING_NAMES:
        raise ValueError(f"unknown warning name {name!r}")
    log(WARNING, "[fedvq] warning %s: %s", name, message)
    if collector is not None and all((w["name"], w["message"]) != (name, message) for w in collector):
        collector.append({"name": name, "message": message})


def cli(main) -> int:
    """Exit code of a project script's ``main``: a failed run prints its one line and gives 1."""
    try:
        result = main()
    except (RunFailed, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 1
    return result if isinstance(result, int) else 0
