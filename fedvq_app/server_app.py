"""ServerApp: validate the config once, then run the method's workflow.

Every failure ends the same way in simulation and in a deployment: one line
logged by the ServerApp (``[fedvq] run failed: ...``), then :class:`RunFailed`
raised, which Flower reports as the run's status ``finished:failed`` (see
:mod:`fedvq_app.errors`). A failure after the experiment folder exists also
writes ``summary.json`` with ``status: failed`` and the reason.
"""

from __future__ import annotations

import traceback
from logging import ERROR

from flwr.app import Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from fedvq_app.config import ConfigError
from fedvq_app.errors import RunFailed, install_one_line_failures
from fedvq_app.registry import get_method, load_settings
from fedvq_app.server.preflight import preflight
from fedvq_app.tracking.communication import metered
from fedvq_app.tracking.experiment import ExperimentTracker

app = ServerApp()
install_one_line_failures()

TRACEBACK_FILE = "traceback.txt"


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point of ``flwr run``."""
    tracker = None
    try:
        settings = load_settings(context.run_config)
        preflight(settings, grid)
        tracker = ExperimentTracker.create(settings)
        tracker.announce(len(list(grid.get_node_ids())))  # the run's header line
        workflow = get_method(settings.method).server_workflow or _neural_workflow()
        # every message the workflow sends or receives is counted (communication cost)
        report = workflow(metered(grid, tracker.traffic), settings, tracker)
        tracker.finish(report)
    except ConfigError as err:
        _fail(tracker, f"configuration error: {err}")
    except RunFailed as err:
        _fail(tracker, str(err))
    except Exception as err:  # noqa: BLE001 - a bug still ends the run with one line (traceback kept on disk)
        where = _save_traceback(tracker)
        _fail(tracker, f"internal error {type(err).__name__}: {err} ({where})", cause=err)


def _neural_workflow():
    """The common round loop of the neural methods (imported here, not at start-up: it loads torch,
    which a k-means job never needs)."""
    from fedvq_app.server.workflow import run_neural_workflow  # noqa: PLC0415 - start-up cost only

    return run_neural_workflow


def _save_traceback(tracker: ExperimentTracker | None) -> str:
    text = traceback.format_exc()
    if tracker is None or not tracker.writable:
        log(ERROR, "[fedvq] traceback of the internal error:\n%s", text)
        return "traceback logged above"
    path = tracker.dir / TRACEBACK_FILE
    path.write_text(text)
    return f"traceback in {path}"


def _fail(tracker: ExperimentTracker | None, reason: str, cause: Exception | None = None) -> None:
    log(ERROR, "[fedvq] run failed: %s", reason)
    if tracker is not None:
        tracker.fail(reason)
    raise RunFailed(reason) from cause
