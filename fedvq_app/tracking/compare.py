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
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import math
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
    panels = (
        ("mean_accuracy", "mean client test accuracy"),
        ("min_accuracy", "lowest client's test accuracy"),
        ("train_loss", "train loss (weighted mean)"),
        ("test_loss", "test loss (mean over clients)"),
    )
    fig, axes = plt.subplots(2, 2, figsize=(12, 7.5))
    all_series = {r.label: series(r) for r in runs}
    for ax, (key, title) in zip(axes.flat, panels, strict=True):
        drawn = False
        for run in runs:
            xs, ys = all_series[run.label].get(key, ([], []))
            if xs:
                ax.plot(xs, ys, marker="o", ms=3, lw=1.6, color=colors[run.label], label=run.label)
                drawn = True
        ax.set_title(title)
        ax.set_xlabel("round")
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
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.03 + 0.03 * math.ceil(len(labels) / 4), 1, 1))
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
    bars.set_xticks(range(len(runs)), labels, rotation=30, ha="right", fontsize=8)
    bars.set_ylabel("MB per round (sent + received)")
    bars.set_title("communication per round (mean over rounds)")
    bars.grid(axis="y", alpha=0.3)
    for run in runs:
        s = series(run)
        acc, traffic = s.get("mean_accuracy"), s.get("cumulative_bytes")
        if not acc or not traffic:
            continue
        by_round = dict(zip(*traffic, strict=True))
        points = [(by_round[x] / 1e6, y) for x, y in zip(*acc, strict=True) if x in by_round]
        if points:
            curve.plot(*zip(*points, strict=True), marker="o", ms=3, color=colors[run.label], label=run.label)
    if any(v > 0 for v in values):
        curve.set_xscale("log")
    curve.set_xlabel("cumulative MB (sent + received)")
    curve.set_ylabel("mean client test accuracy")
    curve.set_title("accuracy against traffic")
    curve.grid(alpha=0.3)
    if curve.get_legend_handles_labels()[0]:
        curve.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------
# Rendering
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


#: (heading, row key, formatter, higher is better / None = no best)
FINAL_COLUMNS = (
    ("accuracy %", "accuracy", _pct, True),
    ("macro-F1 %", "macro_f1", _pct, True),
    ("balanced acc. %", "balanced_accuracy", _pct, True),
    ("own-distribution acc. %", "own_accuracy", _pct, True),
    ("min client acc. %", "min_client_accuracy", _pct, True),
    ("spread (max-min) pp", "spread", _pp, False),
    ("bytes / round", "bytes_per_round", human_bytes, False),
    ("wall time s", "wall_time_s", _seconds, None),
    ("rounds", "rounds", lambda v: "–" if v is None else str(v), None),
)
COMM_COLUMNS = (
    ("sent / round", "sent_per_round"),
    ("received / round", "received_per_round"),
    ("per client sent / round", "per_client_sent_per_round"),
    ("per client received / round", "per_client_received_per_round"),
    ("total", "total_bytes"),
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


def _config_cell(value: Any) -> str:
    if value is None:
        return "–"
    return '`""`' if value == "" else f"`{value}`"


def render_markdown(report: dict[str, Any]) -> str:
    runs, rows, diffs = report["runs"], report["rows"], report["diffs"]
    lines = [f"# {report['title']}", "", f"{len(runs)} runs, compared {report['date']}.", ""]
    lines += ["## Final round", ""]
    lines.append("| run | method | " + " | ".join(h for h, *_ in FINAL_COLUMNS) + " |")
    lines.append("|---|---|" + "---:|" * len(FINAL_COLUMNS))
    row_list = [rows[r.label] for r in runs]
    bests = {key: _best(row_list, key, higher) for _, key, _, higher in FINAL_COLUMNS}
    for run in runs:
        cells = []
        for _, key, fmt, _ in FINAL_COLUMNS:
            text = fmt(rows[run.label][key])
            cells.append(f"**{text}**" if bests[key] is not None and rows[run.label][key] == bests[key] else text)
        lines.append(f"| {run.label} | {run.method} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Accuracy figures are means over clients of each client's model on the global test set "
        "(own-distribution: on the client's own test distribution); bold = best of the column.",
        "",
    ]
    relative = _relative(runs, rows)
    lines += ["## Communication", "", "Bytes of the records (Flower's `count_bytes`), per round, mean over rounds.", ""]
    lines.append("| run | " + " | ".join(h for h, _ in COMM_COLUMNS) + " | vs FedAvg |")
    lines.append("|---|" + "---:|" * (len(COMM_COLUMNS) + 1))
    for run in runs:
        cells = [human_bytes(rows[run.label][key]) for _, key in COMM_COLUMNS]
        ratio = relative[run.label]
        cells.append("–" if ratio is None else f"{ratio:.3f}x")
        lines.append(f"| {run.label} | " + " | ".join(cells) + " |")
    lines += ["", "## Config differences", ""]
    if diffs:
        lines.append("| key | " + " | ".join(r.label for r in runs) + " |")
        lines.append("|---|" + "---|" * len(runs))
        for key, values in diffs.items():
            lines.append(f"| `{key}` | " + " | ".join(_config_cell(v) for v in values) + " |")
    else:
        lines.append("The runs share every config value (apart from folder names).")
    lines += ["", "## Plots", "", "![curves](curves.png)", "", "![communication](communication.png)", "", "## Runs", ""]
    lines += [f"- {r.label}: `{r.path}`" for r in runs]
    return "\n".join(lines) + "\n"


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


HTML_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.88em; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 4px 8px; } th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; } td.best { font-weight: bold; background: #e8f5e9; }
img { max-width: 100%; border: 1px solid #eee; } .note { color: #666; font-size: 0.85em; }
code { font-size: 0.95em; }
"""

#: sets data-plots-loaded on <body> to the number of plots the browser decoded (checked by the tests)
HTML_CHECK = """
window.addEventListener('load', function () {
  var ok = Array.prototype.filter.call(document.images, function (i) { return i.complete && i.naturalWidth > 0; });
  document.body.setAttribute('data-plots-loaded', String(ok.length));
});
"""


def render_html(report: dict[str, Any], plots: list[Path]) -> str:
    runs, rows, diffs = report["runs"], report["rows"], report["diffs"]
    esc = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(report['title'])}</title><style>{HTML_STYLE}</style>",
        f"<script>{HTML_CHECK}</script></head>",
        f'<body data-plots="{len(plots)}">',
        f"<h1>{esc(report['title'])}</h1>",
        f"<p class='note'>{len(runs)} runs, compared {esc(report['date'])}.</p>",
        "<h2>Final round</h2><table><tr><th>run</th><th>method</th>"
        + "".join(f"<th>{esc(h)}</th>" for h, *_ in FINAL_COLUMNS)
        + "</tr>",
    ]
    row_list = [rows[r.label] for r in runs]
    bests = {key: _best(row_list, key, higher) for _, key, _, higher in FINAL_COLUMNS}
    for run in runs:
        cells = []
        for _, key, fmt, _ in FINAL_COLUMNS:
            value = rows[run.label][key]
            best = bests[key] is not None and value == bests[key]
            cells.append(f"<td class='num{' best' if best else ''}'>{esc(fmt(value))}</td>")
        out.append(f"<tr><td>{esc(run.label)}</td><td>{esc(run.method)}</td>{''.join(cells)}</tr>")
    out.append(
        "</table><p class='note'>Means over clients of each client's model on the global test set "
        "(own-distribution: on the client's own test distribution); highlighted = best of the column.</p>"
    )
    relative = _relative(runs, rows)
    out.append(
        "<h2>Communication</h2><p class='note'>Bytes of the records (Flower's count_bytes), "
        "per round, mean over rounds.</p><table><tr><th>run</th>"
        + "".join(f"<th>{esc(h)}</th>" for h, _ in COMM_COLUMNS)
        + "<th>vs FedAvg</th></tr>"
    )
    for run in runs:
        cells = "".join(f"<td class='num'>{esc(human_bytes(rows[run.label][k]))}</td>" for _, k in COMM_COLUMNS)
        ratio = relative[run.label]
        cells += f"<td class='num'>{'–' if ratio is None else f'{ratio:.3f}x'}</td>"
        out.append(f"<tr><td>{esc(run.label)}</td>{cells}</tr>")
    out.append("</table>")
    for plot in plots:
        out.append(f"<h2>{esc(plot.stem)}</h2><img alt='{esc(plot.stem)}' src='{_data_uri(plot)}'>")
    out.append("<h2>Config differences</h2>")
    if diffs:
        out.append("<table><tr><th>key</th>" + "".join(f"<th>{esc(r.label)}</th>" for r in runs) + "</tr>")
        for key, values in diffs.items():
            out.append(
                f"<tr><td><code>{esc(key)}</code></td>"
                + "".join(f"<td>{'–' if v is None else esc(str(v))}</td>" for v in values)
                + "</tr>"
            )
        out.append("</table>")
    else:
        out.append("<p>The runs share every config value (apart from folder names).</p>")
    out.append(
        "<h2>Runs</h2><ul>"
        + "".join(f"<li>{esc(r.label)}: <code>{esc(str(r.path))}</code></li>" for r in runs)
        + "</ul></body></html>"
    )
    return "\n".join(out) + "\n"


def compare(paths: list[Path], out: Path, title: str = "") -> dict[str, Path]:
    """Write the report of the experiment folders under ``paths`` into ``out``; the files written."""
    runs = find_runs(paths)
    out = out.expanduser().resolve()
    inside = next((r for r in runs if out == r.path or r.path in out.parents), None)
    if inside is not None:
        raise CompareError(f"--out {out} lies in experiment folder {inside.path}: expected a folder outside it")
    out.mkdir(parents=True, exist_ok=True)
    rows = {r.label: final_row(r) for r in runs}
    report = {
        "title": title or f"Comparison of {len(runs)} runs",
        "date": f"{datetime.now():%Y-%m-%d %H:%M}",
        "runs": runs,
        "rows": rows,
        "diffs": config_differences(runs),
    }
    curves = plot_curves(runs, out / "curves.png")
    traffic = plot_communication(runs, rows, out / "communication.png")
    files = {"markdown": out / "report.md", "html": out / "report.html", "curves": curves, "communication": traffic}
    files["markdown"].write_text(render_markdown(report))
    files["html"].write_text(render_html(report, [curves, traffic]))
    (out / "report.json").write_text(
        json.dumps(
            {
                "runs": [{"label": r.label, "path": str(r.path), "method": r.method, **rows[r.label]} for r in runs],
                "config_differences": report["diffs"],
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
