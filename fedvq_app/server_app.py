"""ServerApp: validate the config once, then run the method's workflow."""

from __future__ import annotations

from logging import ERROR

from flwr.app import Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from fedvq_app.config import ConfigError, load_settings
from fedvq_app.registry import get_method
from fedvq_app.server.workflow import run_neural_workflow
from fedvq_app.tracking.communication import metered
from fedvq_app.tracking.experiment import ExperimentTracker

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point of ``flwr run``."""
    tracker = None
    try:
        settings = load_settings(context.run_config)
        tracker = ExperimentTracker.create(settings)
        workflow = get_method(settings.method).server_workflow or run_neural_workflow
        # every message the workflow sends or receives is counted (communication cost)
        report = workflow(metered(grid, tracker.traffic), settings, tracker)
    except ConfigError as err:
        log(ERROR, "[fedvq] configuration error: %s", err)
        if tracker is not None:
            tracker.fail(f"configuration error: {err}")
        raise SystemExit(2) from None
    except Exception as err:
        if tracker is not None:
            tracker.fail(f"{type(err).__name__}: {err}")
        raise
    tracker.finish(report)
