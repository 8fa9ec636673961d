"""Compare experiment folders: one report with curves, a final table and the config differences.

    fedvq-compare logs/                              # every experiment folder under logs/
    fedvq-compare logs/fedavg_x logs/fedvq_x --out cmp
    python -m fedvq_app.tracking.compare logs/ --out cmp --title "digits, Dirichlet 0.5"

An argument is an experiment folder (it holds ``summary.json``) or a folder whose
sub-folders are experiment folders (any depth). The report folder (``--out``,
default ``./comparison``) receives:

* ``report.md``: the final table, the communication table and the config keys
  whose values differ between the runs, with the plots linked;
* ``curves.png``: mean client test accuracy, lowest client's accuracy, train loss
  and test loss per round, one line per run;
* ``communication.png``: bytes per round and accuracy against cumulative traffic;
* ``report.html``: the same, self-contained (plots embedded as data URIs), for a
  browser or an e-mail.

The final table: mean client accuracy on the global test set, macro-F1, balanced
accuracy, own-distribution accuracy (each client on its own test distribution,
where the method reports it), the lowest client's accuracy, the spread across
clients (max - min), bytes per round (sent + received, mean over rounds), wall
time and rounds. Experiment folders are only read.

Runs are named by their method and the values of the config keys that differ
between the runs (``fedprox (mu=0.1)``), not by their folders; the "Runs" section
and report.json map each name to its folder. Accuracies are in percent throughout.
Both report files come from one Jinja2 template (``templates/report.md.j2``): the
HTML page is that Markdown rendered by markdown-it-py into ``templates/page.html.j2``.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import re
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

#: config keys that differ between any two runs by construction
IGNORED_KEYS = frozenset({"experiment-name", "log-dir", "resume-from"})


class CompareError(ValueError):
    """A bad argument: the message is one line fit for a user."""


@dataclass
class Run:
    """One experiment folder, read."""

    label: str
    path: Path
    config: dict[str, Any]
    rounds: list[dict[str, Any]]
    summary: dict[str, Any]

    @property
    def method(self) -> str:
        return str(self.summary.get("method", self.config.get("method", "?")))


# ----------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------
def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CompareError(f"cannot read {path}: {err}") from None


def read_run(folder: Path) -> Run:
    """Config, rounds and summary of one experiment folder."""
    summary = _read_json(folder / "summary.json")
    config = _read_json(folder / "config.json") if (folder / "config.json").is_file() else {}
    rounds = []
    rounds_file = folder / "rounds.jsonl"
    if rounds_file.is_file():
        for number, line in enumerate(rounds_file.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rounds.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise CompareError(f"cannot read {rounds_file} line {number}: {err}") from None
    return Run(folder.name, folder, config, rounds, summary)


def find_runs(paths: list[Path]) -> list[Run]:
    """Experiment folders named by ``paths`` (folders, or parents of folders), in argument order."""
    folders: list[Path] = []
    for path in paths:
        if not path.is_dir():
            raise CompareError(f"{path} is not a folder: expected experiment folders or a folder that holds them")
        if (path / "summary.json").is_file():
            found = [path]
        else:
            found = sorted(p.parent for p in path.rglob("summary.json"))
        if not found:
            raise CompareError(f"{path} holds no experiment folder (no summary.json in it or below it)")
        folders.extend(f.resolve() for f in found)
    unique = list(dict.fromkeys(folders))
    runs = [read_run(f) for f in unique]
    names = [r.label for r in runs]
    for run in runs:  # two folders of the same name under different parents
        if names.count(run.label) > 1:
            run.label = f"{run.path.parent.name}/{run.path.name}"
    return runs


# ----------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------
def _mean(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _evaluated(run: Run) -> list[dict[str, Any]]:
    return [r for r in run.rounds if r.get("evaluate", {}).get("clients")]


def final_row(run: Run) -> dict[str, Any]:
    """The final table's figures of one run (None where the run has none)."""
    final = run.summary.get("final") or {}
    evaluated = _evaluated(run)
    last_clients = evaluated[-1]["evaluate"]["clients"] if evaluated else {}
    per_client = [v for v in final.get("per_client_accuracy") or [] if v is not None]
    own = final.get("own_test_accuracy")
    if own is None:
        own = _mean([c.get("own-test-accuracy") for c in last_clients.values()])
    communication = run.summary.get("communication") or {}
    return {
        "accuracy": final.get("accuracy"),
        "macro_f1": final.get("macro_f1"),
        "balanced_accuracy": final.get("balanced_accuracy"),
        "own_accuracy": own,
        "min_client_accuracy": final.get("min_client_accuracy"),
        "spread": (max(per_client) - min(per_client)) if per_client else None,
        "std": _std(per_client),
        "bytes_per_round": communication.get("mean_bytes_per_round"),
        "sent_per_round": communication.get("mean_sent_bytes_per_round"),
        "received_per_round": communication.get("mean_received_bytes_per_round"),
        "per_client_sent_per_round": communication.get("per_client_mean_sent_bytes_per_round"),
        "per_client_received_per_round": communication.get("per_client_mean_received_bytes_per_round"),
        "total_bytes": communication.get("total_bytes"),
        "wall_time_s": run.summary.get("wall_time_s"),
        "rounds": run.summary.get("rounds", len(run.rounds)),
        "num_clients": run.summary.get("num_clients"),
    }


def _std(values: list[float]) -> float | None:
    if not values:
        return None
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def series(run: Run) -> dict[str, tuple[list[int], list[float]]]:
    """Per-round curves: accuracy (mean, min), train and test loss, cumulative bytes."""
    out: dict[str, tuple[list[int], list[float]]] = {}

    def add(name: str, rnd: int, value: Any) -> None:
        if isinstance(value, int | float) and math.isfinite(value):
            xs, ys = out.setdefault(name, ([], []))
            xs.append(rnd)
            ys.append(float(value))

    cumulative = 0.0
    for record in run.rounds:
        rnd = int(record["round"])
        spread = record.get("evaluate", {}).get("summary") or {}
        add("mean_accuracy", rnd, spread.get("mean_accuracy"))
        add("min_accuracy", rnd, spread.get("min_accuracy"))
        add("train_loss", rnd, (record.get("train", {}).get("aggregated") or {}).get("train-loss"))
        clients = record.get("evaluate", {}).get("clients") or {}
        add("test_loss", rnd, _mean([c.get("test-loss") for c in clients.values()]))
        traffic = record.get("communication") or {}
        if traffic:
            cumulative += float(traffic.get("total_bytes", 0))
            add("bytes", rnd, float(traffic.get("total_bytes", 0)))
            add("cumulative_bytes", rnd, cumulative)
    return out


def config_differences(runs: list[Run]) -> dict[str, list[Any]]:
    """Config keys whose values are not the same in every run (missing = None)."""
    keys = sorted(set().union(*(r.config for r in runs)) - IGNORED_KEYS)
    diffs = {}
    for key in keys:
        values = [r.config.get(key) for r in runs]
        if any(v != values[0] for v in values[1:]):
            diffs[key] = values
    return diffs


#: config keys that do not change what a run computes: left out of run names (still in the differences table)
NOT_IN_NAMES = ("tracking.", "device")


def _namespace(key: str) -> str:
    return key.split(".", 1)[0] if "." in key else ""


def run_name(run: Run, diffs: dict[str, list[Any]], index: int) -> str:
    """'fedprox (mu=0.1, partition.alpha=0.5)': the method and the run's values of the keys that differ.

    Left out: ``method`` itself, keys that do not change the computation (:data:`NOT_IN_NAMES`),
    and keys of another method (``fedprox.mu`` in a FedAvg run's name); the run's own method
    prefix is dropped (``mu`` for ``fedprox.mu``).
    """
    from fedvq_app.registry import method_names  # noqa: PLC0415 (imports no method)

    others = set(method_names()) - {run.method}
    parts = []
    for key, values in diffs.items():
        if key == "method" or key.startswith(NOT_IN_NAMES) or _namespace(key) in others:
            continue
        short = key.removeprefix(f"{run.method}.")
        parts.append(f"{short}={_config_text(values[index])}")
    return f"{run.method} ({', '.join(parts)})" if parts else run.method


def name_runs(runs: list[Run], diffs: dict[str, list[Any]]) -> None:
    """Give every run its short name (:func:`run_name`); runs whose names coincide are numbered."""
    names = [run_name(run, diffs, i) for i, run in enumerate(runs)]
    for i, run in enumerate(runs):
        same = [j for j, name in enumerate(names) if name == names[i]]
        run.label = names[i] if len(same) == 1 else f"{names[i]} #{same.index(i) + 1}"


# ----------------------------------------------------------------------------
# Plots
# ----------------------------------------------------------------------------
def _plt():
    import matplotlib  # noqa: PLC0415 (slow import)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 - start-up cost: matplotlib, only on this path

    return plt


def _colors(runs: list[Run]):
    plt = _plt()
    cmap = plt.get_cmap("tab10" if len(runs) <= 10 else "tab20")
    return {r.label: cmap(i % cmap.N) for i, r in enumerate(runs)}


def plot_curves(runs: list[Run], path: Path) -> Path:
    """2x2: mean client accuracy, lowest client accuracy, train loss, test loss."""
    plt = _plt()
    from matplotlib.ticker import MaxNLocator  # noqa: PLC0415 - start-up cost: matplotlib, only on this path

    colors = _colors(runs)
    panels = (  # (series, title, y label, scale)
        ("mean_accuracy", "Mean client test accuracy", "accuracy (%)", 100.0),
        ("min_accuracy", "Lowest client's test accuracy", "accuracy (%)", 100.0),
        ("train_loss", "Train loss (weighted mean over clients)", "loss", 1.0),
        ("test_loss", "Test loss (mean over clients)", "loss", 1.0),
    )
    fig, axes = plt.subplots(2, 2, figsize=(12, 7.5))
    all_series = {r.label: series(r) for r in runs}
    for ax, (key, title, ylabel, scale) in zip(axes.flat, panels, strict=True):
        drawn = False
        for run in runs:
            xs, ys = all_series[run.label].get(key, ([], []))
            if xs:
                ys = [scale * y for y in ys]
                ax.plot(xs, ys, marker="o", ms=4, lw=1.6, color=colors[run.label], label=run.label)
                drawn = True
        ax.set_title(title)
        ax.set_xlabel("round")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if not drawn:
            ax.text(0.5, 0.5, "no run reports it", ha="center", va="center", transform=ax.transAxes, color="grey")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if not handles:
        handles, labels = next(
            (ax.get_legend_handles_labels() for ax in axes.flat if ax.get_legend_handles_labels()[0]), ([], [])
        )
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 3), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.03 + 0.03 * math.ceil(len(labels) / 3), 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_communication(runs: list[Run], rows: dict[str, dict[str, Any]], path: Path) -> Path:
    """Bytes per round (bars, log scale) and mean client accuracy against cumulative traffic."""
    plt = _plt()
    colors = _colors(runs)
    fig, (bars, curve) = plt.subplots(1, 2, figsize=(12, 4.5))
    labels = [r.label for r in runs]
    values = [rows[r.label]["bytes_per_round"] or 0.0 for r in runs]
    drawn = bars.bar(range(len(runs)), [v / 1e6 for v in values], color=[colors[label] for label in labels])
    bars.bar_label(drawn, labels=[human_bytes(v) for v in values], fontsize=7)
    bars.set_xticks(range(len(runs)), labels, rotation=20, ha="right", fontsize=8)
    bars.set_ylabel("MB per round (sent + received)")
    bars.set_title("Traffic per round (mean over rounds)")
    bars.grid(axis="y", alpha=0.3)
    for run in runs:
        s = series(run)
        acc, traffic = s.get("mean_accuracy"), s.get("cumulative_bytes")
        if not acc or not traffic:
            continue
        by_round = dict(zip(*traffic, strict=True))
        points = [(by_round[x] / 1e6, 100 * y) for x, y in zip(*acc, strict=True) if x in by_round]
        if points:
            curve.plot(*zip(*points, strict=True), marker="o", ms=3, color=colors[run.label], label=run.label)
    if any(v > 0 for v in values):
        from matplotlib.ticker import FuncFormatter  # noqa: PLC0415 - start-up cost: matplotlib, only when plotting

        curve.set_xscale("log")
        plain = FuncFormatter(lambda v, _: f"{v:g}")  # 2, 3, 4 MB rather than 2 x 10^0
        curve.xaxis.set_major_formatter(plain)
        curve.xaxis.set_minor_formatter(plain)
    curve.set_xlabel("cumulative MB (sent + received)")
    curve.set_ylabel("mean client test accuracy (%)")
    curve.set_title("Accuracy against traffic")
    curve.grid(alpha=0.3)
    if curve.get_legend_handles_labels()[0]:
        curve.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------
# Rendering: one data model, one template (templates/report.md.j2) for Markdown and HTML
# ----------------------------------------------------------------------------
def _pct(value: Any) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def _pp(value: Any) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def human_bytes(value: Any) -> str:
    if value is None:
        return "–"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:.0f} B"


def _seconds(value: Any) -> str:
    return "–" if value is None else f"{value:.1f}"


#: formatter marker of a byte column: one unit for the whole column (the largest that suits its values)
BYTES = "bytes"


def byte_unit(values: list[Any]) -> tuple[str, float]:
    """The unit a column of byte counts is shown in: the largest whose scale its largest value reaches."""
    top = max((v for v in values if v is not None), default=0.0)
    return next(((unit, scale) for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)) if top >= scale), ("B", 1.0))


def _column(heading: str, fmt: Any, values: list[Any]) -> tuple[str, Any]:
    """A column's heading and formatter; byte columns get their unit into the heading."""
    if fmt != BYTES:
        return heading, fmt
    unit, scale = byte_unit(values)
    return f"{heading} ({unit})", lambda v: "–" if v is None else f"{v / scale:.2f}"


#: (heading, row key, formatter, higher is better / None = no best)
FINAL_COLUMNS = (
    ("accuracy %", "accuracy", _pct, True),
    ("macro-F1 %", "macro_f1", _pct, True),
    ("balanced acc. %", "balanced_accuracy", _pct, True),
    ("own-distribution acc. %", "own_accuracy", _pct, True),
    ("min client acc. %", "min_client_accuracy", _pct, True),
    ("spread (max-min) pp", "spread", _pp, False),
    ("bytes / round", "bytes_per_round", BYTES, False),
    ("wall time s", "wall_time_s", _seconds, None),
    ("rounds", "rounds", lambda v: "–" if v is None else str(v), None),
)
COMM_COLUMNS = (
    ("sent / round", "sent_per_round", BYTES),
    ("received / round", "received_per_round", BYTES),
    ("per client sent / round", "per_client_sent_per_round", BYTES),
    ("per client received / round", "per_client_received_per_round", BYTES),
    ("total", "total_bytes", BYTES),
)
#: (file, heading, caption) of the report's plots
PLOTS = (
    (
        "curves.png",
        "Accuracy and loss per round",
        "Mean client test accuracy, the lowest client's test accuracy (both in percent), train loss and "
        "test loss, one line per run.",
    ),
    (
        "communication.png",
        "Traffic",
        "Left: megabytes sent and received per round (mean over rounds). Right: mean client test accuracy "
        "against the cumulative traffic.",
    ),
)


def _best(rows: list[dict[str, Any]], key: str, higher: bool | None) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    if higher is None or len(values) < 2:
        return None
    return max(values) if higher else min(values)


def _relative(runs: list[Run], rows: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """Bytes per round relative to the first FedAvg run (None without one)."""
    base = next((rows[r.label]["bytes_per_round"] for r in runs if r.method == "fedavg"), None)
    return {
        r.label: (rows[r.label]["bytes_per_round"] / base if base and rows[r.label]["bytes_per_round"] else None)
        for r in runs
    }


def _config_text(value: Any) -> str:
    if value is None:
        return "–"
    return '""' if value == "" else str(value)


def markdown_code(value: Any) -> str:
    """A config value as a Markdown code span (``–`` when the run has no such key), safe in a table cell."""
    if value is None:
        return "–"
    text = _config_text(value).replace("|", "\\|")
    fence = "`" * (max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    return f"{fence} {text} {fence}" if text.startswith("`") or text.endswith("`") else f"{fence}{text}{fence}"


def report_model(
    title: str, date: str, runs: list[Run], rows: dict[str, dict[str, Any]], diffs: dict[str, list[Any]]
) -> dict[str, Any]:
    """Everything the report shows, as text: what the template renders into Markdown and HTML."""
    row_list = [rows[r.label] for r in runs]
    bests = {key: _best(row_list, key, higher) for _, key, _, higher in FINAL_COLUMNS}
    relative = _relative(runs, rows)
    final = [(*_column(h, fmt, [r[key] for r in row_list]), key) for h, key, fmt, _ in FINAL_COLUMNS]
    traffic = [(*_column(h, fmt, [r[key] for r in row_list]), key) for h, key, fmt in COMM_COLUMNS]
    return {
        "title": title,
        "date": date,
        "runs": [{"label": r.label, "method": r.method, "path": str(r.path)} for r in runs],
        "final": {
            "columns": [heading for heading, _, _ in final],
            "rows": [
                {
                    "label": r.label,
                    "method": r.method,
                    "cells": [
                        {
                            "text": fmt(rows[r.label][key]),
                            "best": bests[key] is not None and rows[r.label][key] == bests[key],
                        }
                        for _, fmt, key in final
                    ],
                }
                for r in runs
            ],
        },
        "communication": {
            "columns": [heading for heading, _, _ in traffic] + ["vs FedAvg"],
            "rows": [
                {
                    "label": r.label,
                    "cells": [fmt(rows[r.label][key]) for _, fmt, key in traffic]
                    + ["–" if relative[r.label] is None else f"{relative[r.label]:.3f}x"],
                }
                for r in runs
            ],
        },
        "differences": {
            "labels": [r.label for r in runs],
            "rows": [{"key": key, "cells": values} for key, values in diffs.items()],
        },
        "plots": [{"file": file, "heading": heading, "caption": caption} for file, heading, caption in PLOTS],
    }


#: characters that mean something in Markdown text or in a table cell
_MARKDOWN_SPECIAL = frozenset("\\`*_[]<>|#")


def markdown_text(value: Any) -> str:
    """``value`` as literal Markdown text (safe in a table cell): special characters backslash-escaped."""
    return "".join(f"\\{c}" if c in _MARKDOWN_SPECIAL else c for c in str(value))


def _environment():
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape  # noqa: PLC0415 - report only

    env = Environment(
        loader=PackageLoader("fedvq_app.tracking", "templates"),
        # the page shell escapes what it inserts; the Markdown escapes through markdown_text/markdown_code
        # and reaches HTML through markdown-it with raw HTML off
        autoescape=select_autoescape(enabled_extensions=("html.j2",), default_for_string=False),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=StrictUndefined,
    )
    env.filters["md"] = markdown_text
    env.filters["code"] = markdown_code
    return env


def render_markdown(model: dict[str, Any], plot_src: dict[str, str] | None = None) -> str:
    """The report in Markdown; a plot's image source is its file name unless ``plot_src`` maps it."""
    plots = [{**p, "src": (plot_src or {}).get(p["file"], p["file"])} for p in model["plots"]]
    return _environment().get_template("report.md.j2").render(**{**model, "plots": plots})


def render_html(model: dict[str, Any], folder: Path) -> str:
    """The same Markdown as a self-contained page: plots from ``folder`` embedded as data URIs."""
    from markdown_it import MarkdownIt  # noqa: PLC0415 - start-up cost: only for report.html
    from markupsafe import Markup  # noqa: PLC0415 (jinja2's own dependency)

    sources = {p["file"]: _data_uri(folder / p["file"]) for p in model["plots"] if (folder / p["file"]).is_file()}
    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(render_markdown(model, sources))
    return _environment().get_template("page.html.j2").render(title=model["title"], body=Markup(body))


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def compare(paths: list[Path], out: Path, title: str = "") -> dict[str, Path]:
    """Write the report of the experiment folders under ``paths`` into ``out``; the files written."""
    runs = find_runs(paths)
    out = out.expanduser().resolve()
    inside = next((r for r in runs if out == r.path or r.path in out.parents), None)
    if inside is not None:
        raise CompareError(f"--out {out} lies in experiment folder {inside.path}: expected a folder outside it")
    out.mkdir(parents=True, exist_ok=True)
    diffs = config_differences(runs)
    name_runs(runs, diffs)
    rows = {r.label: final_row(r) for r in runs}
    model = report_model(
        title or f"Comparison of {len(runs)} run{'s' if len(runs) != 1 else ''}",
        f"{datetime.now():%Y-%m-%d %H:%M}",
        runs,
        rows,
        diffs,
    )
    curves = plot_curves(runs, out / "curves.png")
    traffic = plot_communication(runs, rows, out / "communication.png")
    files = {"markdown": out / "report.md", "html": out / "report.html", "curves": curves, "communication": traffic}
    files["markdown"].write_text(render_markdown(model))
    files["html"].write_text(render_html(model, out))
    (out / "report.json").write_text(
        json.dumps(
            {
                "runs": [
                    {"label": r.label, "folder": r.path.name, "path": str(r.path), "method": r.method, **rows[r.label]}
                    for r in runs
                ],
                "config_differences": diffs,
            },
            indent=2,
        )
        + "\n"
    )
    files["json"] = out / "report.json"
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fedvq-compare", description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path, help="experiment folders, or folders that hold them")
    parser.add_argument("--out", type=Path, default=Path("comparison"), help="report folder (default ./comparison)")
    parser.add_argument("--title", default="", help="report title")
    args = parser.parse_args(argv)
    try:
        files = compare(args.paths, args.out, args.title)
    except CompareError as err:
        print(f"fedvq-compare: {err}", file=sys.stderr)
        return 2
    print(f"fedvq-compare: report in {files['html'].parent} (report.md, report.html, curves.png, communication.png)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
