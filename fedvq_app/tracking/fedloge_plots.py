"""FedLoGe's PNGs and a head/medium/tail comparison of finished runs of any method.

Plots (written by the tracker after a fedloge run):

* ``fedloge_class_accuracy.png`` -- per-class accuracy of every inference mode as
  bars, classes sorted by training frequency (line, log scale), groups shaded.
* ``fedloge_modes.png`` -- overall / head / medium / tail accuracy per round, one
  line per mode.

``python -m fedvq_app.tracking.fedloge_plots RUN_DIR [RUN_DIR ...]`` prints a
markdown table of overall/head/medium/tail accuracy of finished runs: fedloge runs
report their modes; any other method (e.g. fedavg) is scored from its clients'
``test-class-accuracy`` with the same groups, rebuilt from the run's config, on
the global test set and reweighted to FedLoGe's personal test mixes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from fedvq_app.aggregation.etf import GROUPS, accuracy_from_class_accuracy, proportional_counts, shot_groups
from fedvq_app.tracking.plots import _save, plt

MODE_COLORS = {"generic": "tab:blue", "global": "tab:orange", "personal": "tab:green", "raw-global": "tab:gray"}
GROUP_SHADES = {"head": "#dbe9f6", "medium": "#fbe5c8", "tail": "#f6d5d5"}


def class_accuracy_bars(path: Path, report: dict[str, Any]) -> Path | None:
    """Per-class accuracy of every mode against the class's training frequency."""
    modes = report.get("modes") or {}
    freq = np.asarray(report.get("class_frequencies") or [], dtype=float)
    if not modes or freq.size == 0:
        return None
    order = np.argsort(-freq, kind="stable")
    names = list(modes)
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(max(7, 0.55 * len(order) * len(names) / 2 + 3), 4.8))
    x = np.arange(len(order))
    _shade_groups(ax, order, report.get("groups") or {})
    for i, mode in enumerate(names):
        acc = [modes[mode]["class_accuracy"][c] for c in order]
        acc = [np.nan if a is None else a for a in acc]
        ax.bar(x - 0.4 + (i + 0.5) * width, acc, width, color=MODE_COLORS.get(mode), label=mode)
    ax.set_xticks(x, [str(c) for c in order])
    ax.set_xlabel("class (sorted by training frequency)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.05)
    freq_ax = ax.twinx()
    freq_ax.plot(x, np.maximum(freq[order], 0.5), color="black", marker="o", lw=1.5, label="training samples")
    freq_ax.set_yscale("log")
    freq_ax.set_ylabel("training samples (log)")
    handles = ax.get_legend_handles_labels()[0] + freq_ax.get_legend_handles_labels()[0]
    ax.legend(handles=handles, fontsize=8, loc="upper right")
    ax.set_title(f"Per-class accuracy by inference mode (round {report.get('final_round')})")
    return _save(fig, path)


def _shade_groups(ax, order: np.ndarray, groups: dict[str, list[int]]) -> None:
    position = {int(c): i for i, c in enumerate(order)}
    for name in GROUPS:
        spots = [position[c] for c in groups.get(name, []) if c in position]
        if spots:
            ax.axvspan(min(spots) - 0.5, max(spots) + 0.5, color=GROUP_SHADES[name], zorder=0)
            ax.text((min(spots) + max(spots)) / 2, 1.02, name, ha="center", fontsize=8)


def mode_curves(path: Path, rounds: list[dict[str, Any]]) -> Path | None:
    """Overall/head/medium/tail accuracy per round, one line per inference mode."""
    evaluated = [r for r in rounds if (r.get("strategy") or {}).get("modes")]
    if not evaluated:
        return None
    xs = [r["round"] for r in evaluated]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True, sharey=True)
    for ax, key in zip(axes.flat, ("overall", *GROUPS), strict=True):
        for mode in evaluated[-1]["strategy"]["modes"]:
            ys = [r["strategy"]["modes"].get(mode, {}).get(key) for r in evaluated]
            ax.plot(xs, [np.nan if y is None else y for y in ys], marker=".", color=MODE_COLORS.get(mode), label=mode)
        ax.set_title(f"{key} accuracy")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("round")
    axes[0][0].legend(fontsize=8)
    fig.suptitle("FedLoGe inference modes per round")
    return _save(fig, path)


def fedloge_plots(directory: Path, rounds: list[dict[str, Any]], summary: dict[str, Any]) -> list[Path]:
    """The method's PNGs (MethodSpec.plots)."""
    report = summary.get("fedloge") or {}
    written = [
        class_accuracy_bars(directory / "fedloge_class_accuracy.png", report),
        mode_curves(directory / "fedloge_modes.png", rounds),
    ]
    return [p for p in written if p is not None]


# ----------------------------------------------------------------------------
# head / medium / tail comparison of finished runs
# ----------------------------------------------------------------------------
def _read_rounds(directory: Path) -> list[dict[str, Any]]:
    lines = (directory / "rounds.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def client_label_counts_of_run(config: dict[str, Any], num_clients: int) -> np.ndarray:
    """(clients, classes) training label counts of a finished run, rebuilt from its config (same split)."""
    from fedvq_app.config import load_settings  # noqa: PLC0415 (data stack is slow to import)
    from fedvq_app.data.client_data import load_client_data  # noqa: PLC0415

    settings = load_settings(config)
    return np.array([load_client_data(settings, pid, num_clients).label_counts() for pid in range(num_clients)])


def test_counts_of_run(config: dict[str, Any]) -> np.ndarray:
    """Images per class of the run's global test set."""
    from fedvq_app.config import load_settings  # noqa: PLC0415
    from fedvq_app.data.datasets import load_image_data  # noqa: PLC0415

    settings = load_settings(config)
    data = load_image_data(settings.dataset, settings.seed)
    return np.bincount(data.test_y, minlength=data.num_classes)


def _mean_figures(per_client: list[dict[str, float | None]]) -> dict[str, float | None]:
    figures = {}
    for key in ("overall", *GROUPS):
        values = [p[key] for p in per_client if p[key] is not None]
        figures[key] = float(np.mean(values)) if values else None
    return figures


def group_report(directory: Path) -> dict[str, dict[str, float | None]]:
    """mode -> overall/head/medium/tail accuracy of one finished run (last evaluated round).

    A fedloge run reports its own modes. Any other method gets ``model`` (its
    clients' models on the global test set, from ``test-class-accuracy``) and
    ``model@personal-mix``: the same per-class accuracies reweighted to each
    client's personal test mix (:func:`proportional_counts`) -- the expected
    score on FedLoGe's personal test sets, for a like-for-like comparison.
    """
    directory = Path(directory)
    summary = json.loads((directory / "summary.json").read_text())
    own = (summary.get(summary["method"]) or {}).get("modes") if summary["method"] == "fedloge" else None
    if own:
        return {mode: {k: figures[k] for k in ("overall", *GROUPS)} for mode, figures in own.items()}
    config = json.loads((directory / "config.json").read_text())
    evaluated = [r for r in _read_rounds(directory) if r["evaluate"]["clients"]]
    clients = evaluated[-1]["evaluate"]["clients"]
    label_counts = client_label_counts_of_run(config, summary["num_clients"])
    groups = shot_groups(
        label_counts.sum(axis=0), config.get("fedloge.head-share", 0.75), config.get("fedloge.medium-share", 0.95)
    )
    test_counts = test_counts_of_run(config)
    on_test, on_mix = [], []
    for pid, metrics in clients.items():
        class_acc = metrics["test-class-accuracy"]
        on_test.append(accuracy_from_class_accuracy(class_acc, test_counts, groups))
        mix = proportional_counts(label_counts[int(pid)], test_counts)
        on_mix.append(accuracy_from_class_accuracy(class_acc, mix, groups))
    return {"model": _mean_figures(on_test), "model@personal-mix": _mean_figures(on_mix)}


def comparison_table(directories: list[Path]) -> str:
    """Markdown table: run, method, mode, overall/head/medium/tail accuracy."""
    lines = ["| run | method | mode | overall | head | medium | tail |", "|---|---|---|---|---|---|---|"]
    for directory in directories:
        method = json.loads((Path(directory) / "summary.json").read_text())["method"]
        for mode, figures in group_report(directory).items():
            cells = ["-" if figures[k] is None else f"{figures[k]:.4f}" for k in ("overall", *GROUPS)]
            lines.append(f"| {Path(directory).name} | {method} | {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Overall/head/medium/tail accuracy of finished runs.")
    parser.add_argument("runs", nargs="+", type=Path, help="experiment folders (with summary.json)")
    print(comparison_table(parser.parse_args(argv).runs))


if __name__ == "__main__":
    main()
