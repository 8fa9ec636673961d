"""Where a run's rounds go besides rounds.jsonl: TensorBoard event files and, optionally, MLflow.

The tracker calls every sink after each round (:meth:`Sink.log_round`) and at the
end (:meth:`Sink.finish`, or :meth:`Sink.fail` when the run stops on an error). A
sink that breaks mid-run (a tracking server that went away) is logged once and
dropped: the federated run goes on and rounds.jsonl stays complete.

* TensorBoard (``tracking.tensorboard``, on by default): event files written with
  the ``tensorboard`` package's writer (through ``torch.utils.tensorboard``) right
  in the experiment folder, so ``tensorboard --logdir logs`` shows every experiment
  as one run, side by side. A resumed run writes a new event file that tells
  TensorBoard to discard the first process's steps from the resumed round on.
* MLflow (``tracking.mlflow-uri``, extra ``[mlflow]``): see
  :mod:`fedvq_app.tracking.mlflow_sink`.
"""

from __future__ import annotations

import sys
from logging import WARNING
from pathlib import Path
from typing import Any, Protocol

from flwr.common.logger import log

from fedvq_app.config import COMMON_SECTIONS, Settings, option_keys
from fedvq_app.registry import get_method
from fedvq_app.tracking.scalars import round_scalars


class Sink(Protocol):
    def log_round(self, record: dict[str, Any], scalars: dict[str, float]) -> None: ...

    def finish(self, summary: dict[str, Any], directory: Path) -> None: ...

    def fail(self, reason: str) -> None: ...


def method_config(settings: Settings) -> dict[str, Any]:
    """The run config without other methods' keys: the common sections and the method's own options.

    config.json keeps every key (a resumed run needs them); TensorBoard's config text is for
    people, and 128 keys of which 100 belong to methods that did not run hide the ones that did.
    """
    spec = get_method(settings.method)
    keys = {key for section in COMMON_SECTIONS for key in option_keys(section)}
    if spec.options_type is not None:
        keys |= set(option_keys(spec.options_type))
    return {k: v for k, v in settings.to_dict().items() if k in keys}


def _config_markdown(config: dict[str, Any]) -> str:
    rows = "\n".join(f"| `{k}` | `{v!r}` |" for k, v in sorted(config.items()))
    return "| key | value |\n|---|---|\n" + rows


class _ScalarWriter:
    """``tensorboard.summary.Writer`` behind the few SummaryWriter calls the sink makes (scalars only)."""

    def __init__(self, directory: Path) -> None:
        from tensorboard.summary import Writer  # noqa: PLC0415 - start-up cost: tensorboard, only when it is on

        self.writer = Writer(str(directory))

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.writer.add_scalar(tag, float(value), step)

    def add_text(self, tag: str, text: str, step: int = 0) -> None:
        """Text summaries need torch's writer; the same facts are in config.json and summary.json."""

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class TensorBoardSink:
    """Scalars per round into event files in the experiment folder."""

    def __init__(self, directory: Path, config: dict[str, Any], resumed: bool) -> None:
        self.directory = directory
        self.config = config
        self.resumed = resumed
        self.writer = None

    def _open(self, first_step: int):
        if "torch" not in sys.modules:
            # a run that never loaded torch (federated k-means) keeps it that way: tensorboard's own
            # scalar writer (no text summaries; k-means runs are never resumed, so nothing to purge)
            self.writer = _ScalarWriter(self.directory)
            return self.writer
        from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415 (imports tensorboard)

        # purge_step: a resumed run drops the steps the crashed process logged after its checkpoint
        self.writer = SummaryWriter(
            log_dir=str(self.directory), purge_step=first_step if self.resumed else None, flush_secs=30
        )
        if not self.resumed:
            self.writer.add_text("config", _config_markdown(self.config), 0)
        return self.writer

    def log_round(self, record: dict[str, Any], scalars: dict[str, float]) -> None:
        step = int(record["round"])
        writer = self.writer or self._open(step)
        for tag, value in scalars.items():
            writer.add_scalar(tag, value, step)
        writer.flush()

    def finish(self, summary: dict[str, Any], directory: Path) -> None:
        if self.writer is None:
            return
        final = summary.get("final") or {}
        lines = [f"| {k} | {v} |" for k, v in final.items() if not isinstance(v, list)]
        lines += [
            f"| communication {k} | {v} |"
            for k, v in (summary.get("communication") or {}).items()
            if isinstance(v, int | float)
        ]
        self.writer.add_text("summary", "| figure | value |\n|---|---|\n" + "\n".join(lines), summary.get("rounds", 0))
        self.writer.close()

    def fail(self, reason: str) -> None:
        if self.writer is not None:
            self.writer.add_text("failed", reason)
            self.writer.close()


def open_sinks(settings: Settings, directory: Path) -> list[Sink]:
    """The sinks ``tracking.*`` asks for (an unusable MLflow target raises ConfigError here, before any file)."""
    sinks: list[Sink] = []
    tracking = settings.tracking
    resumed = bool(settings.resume_from)
    if tracking.mlflow_uri:
        from fedvq_app.tracking.mlflow_sink import MlflowSink  # noqa: PLC0415 (optional extra)

        sinks.append(MlflowSink.open(settings, directory))
    if tracking.tensorboard:
        sinks.append(TensorBoardSink(directory, method_config(settings), resumed))
    return sinks


class SinkSet:
    """The tracker's sinks; a failing one is reported once and removed."""

    def __init__(self, sinks: list[Sink]) -> None:
        self.sinks = list(sinks)

    def _each(self, action: str, *args) -> None:
        for sink in list(self.sinks):
            try:
                getattr(sink, action)(*args)
            except Exception as err:  # noqa: BLE001 - a tracking backend must not end the federated run
                log(WARNING, "[fedvq] %s stopped logging (%s: %s)", type(sink).__name__, type(err).__name__, err)
                self.sinks.remove(sink)

    def log_round(self, record: dict[str, Any]) -> None:
        if self.sinks:
            self._each("log_round", record, round_scalars(record))

    def finish(self, summary: dict[str, Any], directory: Path) -> None:
        self._each("finish", summary, directory)
        self.sinks = []

    def fail(self, reason: str) -> None:
        self._each("fail", reason)
        self.sinks = []
