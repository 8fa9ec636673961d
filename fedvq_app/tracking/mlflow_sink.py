"""MLflow tracking (optional extra ``[mlflow]``: ``pip install 'fedvq-app[mlflow]'``, i.e. mlflow-skinny).

With ``tracking.mlflow-uri`` set, every run becomes one MLflow run in the MLflow
experiment ``tracking.mlflow-experiment``, named after the experiment folder:

* params: the resolved run config (config.json), logged when the run starts;
* metrics: every round's scalars (the same tags as TensorBoard, step = round) and
  at the end the final figures and communication totals (``final/...``,
  ``communication_total/...``);
* artifacts: the whole experiment folder (config, rounds.jsonl, summary.json,
  plots, event files), uploaded when the run ends; status FINISHED, or FAILED
  when the run stopped on an error.

The URI is anything MLflow's client accepts: ``http(s)://host:port`` (a tracking
server), ``sqlite:///path/mlflow.db`` (needs SQLAlchemy), or a local folder /
``file:`` URI (MLflow's file store, ``mlruns/``). MLflow 3 keeps the file store in
maintenance mode and opens it only with ``MLFLOW_ALLOW_FILE_STORE=true``; a
``file:`` target is an explicit request for it, so this module sets that variable
(unless it is set already) for this process and says so in the log.

It talks through ``MlflowClient`` (explicit run ids) rather than MLflow's fluent
API, whose active run is process-global state.
"""

from __future__ import annotations

import os
import time
from logging import INFO
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from flwr.common.logger import log

from fedvq_app.config import ConfigError, Settings
from fedvq_app.tracking.scalars import summary_scalars

#: MLflow's limits: params per log_batch call, metrics per call, characters of a param value
PARAM_BATCH, METRIC_BATCH, PARAM_VALUE_CHARS = 100, 1000, 6000
FILE_STORE_FLAG = "MLFLOW_ALLOW_FILE_STORE"


def tracking_uri(raw: str) -> tuple[str, bool]:
    """The URI to hand MLflow and whether it names a local file store (a plain path becomes ``file:``)."""
    scheme = urlparse(raw).scheme
    if scheme in ("", "file"):
        path = Path(raw[len("file://") :] if raw.startswith("file://") else raw).expanduser().resolve()
        return path.as_uri(), True
    return raw, False


class MlflowSink:
    """One MLflow run per experiment folder."""

    def __init__(self, client, run_id: str) -> None:
        self.client = client
        self.run_id = run_id

    @classmethod
    def open(cls, settings: Settings, directory: Path) -> MlflowSink:
        key = "tracking.mlflow-uri"
        raw = settings.tracking.mlflow_uri
        try:
            from mlflow import MlflowClient  # noqa: PLC0415 - start-up cost: the optional mlflow extra, only on this path
            from mlflow.entities import Param  # noqa: PLC0415 - start-up cost: the optional mlflow extra, only on this path
        except ImportError:
            raise ConfigError(
                f"config key '{key}' has value {raw!r} but MLflow is not installed: "
                "expected '' or install the extra with pip install 'fedvq-app[mlflow]'"
            ) from None
        uri, file_store = tracking_uri(raw)
        if file_store and FILE_STORE_FLAG not in os.environ:
            os.environ[FILE_STORE_FLAG] = "true"
            log(INFO, "[fedvq] MLflow file store %s (set %s=true for this process)", uri, FILE_STORE_FLAG)
        try:
            client = MlflowClient(tracking_uri=uri)
            name = settings.tracking.mlflow_experiment
            experiment = client.get_experiment_by_name(name)
            experiment_id = experiment.experiment_id if experiment else client.create_experiment(name)
            run = client.create_run(
                experiment_id,
                run_name=directory.name,
                tags={
                    "fedvq.method": settings.method,
                    "fedvq.dataset": settings.dataset.name,
                    "fedvq.experiment_dir": str(directory),
                    **({"fedvq.resumed_from": settings.resume_from} if settings.resume_from else {}),
                },
            )
            params = [Param(k, str(v)[:PARAM_VALUE_CHARS]) for k, v in settings.to_dict().items()]
            for start in range(0, len(params), PARAM_BATCH):
                client.log_batch(run.info.run_id, params=params[start : start + PARAM_BATCH])
        except Exception as err:  # noqa: BLE001 - MlflowException, connection errors: one line, before any file
            reason = " ".join(str(err).split())[:300]
            raise ConfigError(
                f"config key '{key}' has value {raw!r} but MLflow cannot track there ({type(err).__name__}: "
                f"{reason}): expected a reachable tracking server, a sqlite: URI or a local folder"
            ) from None
        log(INFO, "[fedvq] MLflow run %s in experiment %r at %s", run.info.run_id, name, uri)
        return cls(client, run.info.run_id)

    def _log_metrics(self, scalars: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric  # noqa: PLC0415 - start-up cost: the optional mlflow extra, only on this path

        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for key, value in scalars.items()]
        for start in range(0, len(metrics), METRIC_BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[start : start + METRIC_BATCH])

    def log_round(self, record: dict[str, Any], scalars: dict[str, float]) -> None:
        self._log_metrics(scalars, int(record["round"]))

    def finish(self, summary: dict[str, Any], directory: Path) -> None:
        self._log_metrics(summary_scalars(summary), int(summary.get("rounds") or 0))
        self.client.log_artifacts(self.run_id, str(directory))
        self.client.set_terminated(self.run_id, "FINISHED")

    def fail(self, reason: str) -> None:
        self.client.set_tag(self.run_id, "fedvq.failure", reason[:PARAM_VALUE_CHARS])
        self.client.set_terminated(self.run_id, "FAILED")
