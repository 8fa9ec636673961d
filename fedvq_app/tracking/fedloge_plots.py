"""FedLoGe's PNGs and a head/medium/tail comparison of finished runs of any method.

Plots (written by the tracker after a fedloge run):

* ``fedloge_class_accuracy.png`` -- per-class accuracy of every inference mode as
  bars against the class's training frequency (line, log scale), classes sorted by
  frequency, groups shaded; top: the clients' own long-tailed test data, bottom: the
  class-balanced global test set.
* ``fedloge_modes.png`` -- overall / head / medium / tail accuracy per round, one
  line per mode (dashed: on the balanced test set).

``python -m fedvq_app.tracking.fedloge_plots RUN_DIR [RUN_DIR ...]`` prints a
markdown table of overall/head/medium/tail accuracy of finished runs: fedloge runs
report their modes; a run of any other classification method carries the same
figures for its final models (``model``: on every client's own long-tailed test rows,
``model-balanced``: on the global test set, with the same head/medium/tail groups),
pooled by the tracker from the clients' final evaluation (:mod:`fedvq_app.tracking.groups`).
This module only reads experiment folders: it builds no model and loads no data.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.colors import to_rgb

from fedvq_app.aggregation.etf import GROUPS
from fedvq_app.protocol import BALANCED_SUFFIX
from fedvq_app.tracking.groups import SUMMARY_KEY as GROUPS_KEY
from fedvq_app.tracking.plots import _save, plt, run_title

MODE_COLORS = {"generic": "tab:blue", "global": "tab:orange", "personal": "tab:green", "raw-global": "tab:gray"}
GROUP_SHADES = {"head": "#dbe9f6", "medium": "#fbe5c8", "tail": "#f6d5d5"}
FIGURES = ("overall", *GROUPS)


def mode_colors(modes) -> dict[str, Any]:
    """One colour per mode, shared by a mode and its ``-balanced`` variant; the four main modes
    keep their fixed colours, the others get distinct ones of tab20 (no two modes alike)."""
    bases = list(dict.fromkeys(m.removesuffix(BALANCED_SUFFIX) for m in modes))
    taken = {to_rgb(c) for c in MODE_COLORS.values()}
    candidates = dict.fromkeys(to_rgb(c) for c in (*plt.get_cmap("tab10").colors, *plt.get_cmap("tab20").colors))
    spare = iter([c for c in candidates if c not in taken] * 2)  # 24 distinct colours, then repeats
    base_color = {b: MODE_COLORS.get(b) or next(spare) for b in bases}
    return {m: base_color[m.removesuffix(BALANCED_SUFFIX)] for m in modes}


def class_accuracy_bars(path: Path, report: dict[str, Any], run: str = "") -> Path | None:
    """Per-class accuracy of every mode against the class's training frequency (own data / balanced)."""
    modes = report.get("modes") or {}
    freq = np.asarray(report.get("class_frequencies") or [], dtype=float)
    if not modes or freq.size == 0:
        return None
    panels = [
        ("clients' own long-tailed test data", [m for m in modes if not m.endswith(BALANCED_SUFFIX)]),
        ("class-balanced global test set", [m for m in modes if m.endswith(BALANCED_SUFFIX)]),
    ]
    panels = [(title, names) for title, names in panels if names]
    colors = mode_colors(modes)
    order = np.argsort(-freq, kind="stable")
    x = np.arange(len(order))
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(8, 0.9 * len(order) + 3), 4.2 * len(panels)), squeeze=False)
    for ax, (title, names) in zip(axes[:, 0], panels, strict=True):
        _shade_groups(ax, order, report.get("groups") or {})
        width = 0.8 / len(names)
        for i, mode in enumerate(names):
            acc = [modes[mode]["class_accuracy"][c] for c in order]
            acc = [np.nan if a is None else 100 * a for a in acc]
            ax.bar(x - 0.4 + (i + 0.5) * width, acc, width, color=colors[mode], label=mode)
        ax.set_xticks(x, [str(c) for c in order])
        ax.set_xlabel("class (sorted by training frequency)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_ylim(0, 110)
        freq_ax = ax.twinx()
        freq_ax.plot(x, np.maximum(freq[order], 0.5), color="black", marker="o", lw=1.5, label="training samples")
        freq_ax.set_yscale("log")
        freq_ax.set_ylabel("training samples (log)")
        handles = ax.get_legend_handles_labels()[0] + freq_ax.get_legend_handles_labels()[0]
        ax.legend(handles=handles, fontsize=8, loc="upper right")
        ax.set_title(f"Per-class accuracy, {title} (round {report.get('final_round')})")
    return _save(fig, path, run)


def _shade_groups(ax, order: np.ndarray, groups: dict[str, list[int]]) -> None:
    position = {int(c): i for i, c in enumerate(order)}
    for name in GROUPS:
        spots = [position[c] for c in groups.get(name, []) if c in position]
        if spots:
            ax.axvspan(min(spots) - 0.5, max(spots) + 0.5, color=GROUP_SHADES[name], zorder=0)
            ax.text((min(spots) + max(spots)) / 2, 103, name, ha="center", fontsize=8)


def mode_curves(path: Path, rounds: list[dict[str, Any]], run: str = "") -> Path | None:
    """Overall/head/medium/tail accuracy per round, one line per inference mode."""
    evaluated = [r for r in rounds if (r.get("strategy") or {}).get("modes")]
    if not evaluated:
        return None
    xs = [r["round"] for r in evaluated]
    colors = mode_colors(evaluated[-1]["strategy"]["modes"])
    fig, axes = plt.subplots(2, 2, figsize=(13, 7.5), sharex=True, sharey=True, layout="constrained")
    for ax, key in zip(axes.flat, FIGURES, strict=True):
        for mode in evaluated[-1]["strategy"]["modes"]:
            ys = [r["strategy"]["modes"].get(mode, {}).get(key) for r in evaluated]
            style = "--" if mode.endswith(BALANCED_SUFFIX) else "-"
            ax.plot(
                xs, [np.nan if y is None else 100 * y for y in ys], style, marker=".", color=colors[mode], label=mode
            )
        ax.set_title(f"{key} accuracy (%)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("round")
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="outside right upper", fontsize=8)
    fig.suptitle("FedLoGe inference modes per round (solid: own long-tailed test data, dashed: balanced test set)")
    return _save(fig, path, run)


def fedloge_plots(directory: Path, rounds: list[dict[str, Any]], summary: dict[str, Any]) -> list[Path]:
    """The method's PNGs (MethodSpec.plots)."""
    report = summary.get("fedloge") or {}
    run = run_title(summary)
    written = [
        class_accuracy_bars(directory / "fedloge_class_accuracy.png", report, run=run),
        mode_curves(directory / "fedloge_modes.png", rounds, run=run),
    ]
    return [p for p in written if p is not None]


# ----------------------------------------------------------------------------
# head / medium / tail comparison of finished runs
# ----------------------------------------------------------------------------
class NoGroupFigures(ValueError):
    """A folder whose summary.json holds no head/medium/tail figures (k-means, or a run recorded
    before the clients sent per-class counts)."""


def group_report(directory: Path) -> dict[str, dict[str, Any]]:
    """mode -> overall/head/medium/tail accuracy (and class_accuracy, class_total) of one finished run.

    Read from summary.json, never recomputed: the modes of a method that reports its own
    (fedloge: its inference modes, last evaluated round), otherwise the ``model`` /
    ``model-balanced`` figures that the tracker pooled from the clients' final evaluation
    (:mod:`fedvq_app.tracking.groups`).
    """
    directory = Path(directory)
    summary = json.loads((directory / "summary.json").read_text())
    own = (summary.get(summary["method"]) or {}).get("modes")
    if own:
        return own
    modes = (summary.get(GROUPS_KEY) or {}).get("modes")
    if not modes:
        raise NoGroupFigures(
            f"{directory}: summary.json has no {GROUPS_KEY!r} figures (a run without per-class test counts: "
            "k-means, or recorded by an older version; run it again to get them)"
        )
    return modes


def pooled_accuracy(figures: dict[str, Any], classes: list[int]) -> float | None:
    """Accuracy over all test images of ``classes`` pooled across clients (from the per-class figures)."""
    acc, total = figures.get("class_accuracy"), figures.get("class_total")
    if not classes or acc is None or total is None:
        return None
    images = sum(total[c] for c in classes)
    return sum((acc[c] or 0.0) * total[c] for c in classes) / images if images else None


def comparison_table(directories: list[Path]) -> str:
    """Markdown table: run, method, mode, overall/head/medium/tail accuracy (client means) and the
    tail accuracy pooled over all clients' tail test images (with their number)."""
    lines = [
        "| run | method | mode | overall | head | medium | tail | tail, pooled (client test images) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for directory in directories:
        summary = json.loads((Path(directory) / "summary.json").read_text())
        tail = (summary.get("fedloge") or {}).get("groups", {}).get("tail")
        for mode, figures in group_report(directory).items():
            cells = ["-" if figures.get(k) is None else f"{figures[k]:.4f}" for k in FIGURES]
            classes = tail if tail is not None else figures.get("groups", {}).get("tail", [])
            pooled = pooled_accuracy(figures, classes)
            images = sum(figures["class_total"][c] for c in classes) if figures.get("class_total") else 0
            cells.append("-" if pooled is None else f"{pooled:.4f} ({images})")
            lines.append(f"| {Path(directory).name} | {summary['method']} | {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Overall/head/medium/tail accuracy of finished runs.")
    parser.add_argument("runs", nargs="+", type=Path, help="experiment folders (with summary.json)")
    try:
        print(comparison_table(parser.parse_args(argv).runs))
    except NoGroupFigures as err:
        print(f"fedloge_plots: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
