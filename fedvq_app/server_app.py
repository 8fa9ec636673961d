"""ServerApp: validate the config once, then run the method's workflow."""

from __future__ import annotations

from logging import ERROR

from flwr.app import Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from fedvq_app.config import ConfigError, load_settings
from fedvq_app.registry import get_method
from fedvq_app.tracking.experiment import ExperimentTracker

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point of ``flwr run``."""
    try:
        settings = load_settings(context.run_config)
        tracker = ExperimentTracker.create(settings)
        workflow = get_method(settings.method).workflow()
        report = workflow(grid, settings, tracker)
    except ConfigError as err:
        log(ERROR, "[fedvq] configuration error: %s", err)
        raise SystemExit(2) from None
    tracker.finish(report)
