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
report their modes; a run of any other method whose model is entirely shared (e.g.
fedavg) has its final checkpointed model evaluated here on exactly the same
per-client long-tailed test sets (``model``) and on the global test set
(``model-balanced``), with the same head/medium/tail groups.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from fedvq_app.aggregation.etf import GROUPS, class_hits, mode_summary, personal_test_rows, shot_groups
from fedvq_app.protocol import BALANCED_SUFFIX
from fedvq_app.tracking.plots import _save, plt

MODE_COLORS = {"generic": "tab:blue", "global": "tab:orange", "personal": "tab:green", "raw-global": "tab:gray"}
GROUP_SHADES = {"head": "#dbe9f6", "medium": "#fbe5c8", "tail": "#f6d5d5"}
FIGURES = ("overall", *GROUPS)


def _color(mode: str) -> str | None:
    return MODE_COLORS.get(mode.removesuffix(BALANCED_SUFFIX))


def class_accuracy_bars(path: Path, report: dict[str, Any]) -> Path | None:
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
    order = np.argsort(-freq, kind="stable")
    x = np.arange(len(order))
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(8, 0.9 * len(order) + 3), 4.2 * len(panels)), squeeze=False)
    for ax, (title, names) in zip(axes[:, 0], panels, strict=True):
        _shade_groups(ax, order, report.get("groups") or {})
        width = 0.8 / len(names)
        for i, mode in enumerate(names):
            acc = [modes[mode]["class_accuracy"][c] for c in order]
            acc = [np.nan if a is None else a for a in acc]
            ax.bar(x - 0.4 + (i + 0.5) * width, acc, width, color=_color(mode), label=mode)
        ax.set_xticks(x, [str(c) for c in order])
        ax.set_xlabel("class (sorted by training frequency)")
        ax.set_ylabel("test accuracy")
        ax.set_ylim(0, 1.1)
        freq_ax = ax.twinx()
        freq_ax.plot(x, np.maximum(freq[order], 0.5), color="black", marker="o", lw=1.5, label="training samples")
        freq_ax.set_yscale("log")
        freq_ax.set_ylabel("training samples (log)")
        handles = ax.get_legend_handles_labels()[0] + freq_ax.get_legend_handles_labels()[0]
        ax.legend(handles=handles, fontsize=8, loc="upper right")
        ax.set_title(f"Per-class accuracy, {title} (round {report.get('final_round')})")
    return _save(fig, path)


def _shade_groups(ax, order: np.ndarray, groups: dict[str, list[int]]) -> None:
    position = {int(c): i for i, c in enumerate(order)}
    for name in GROUPS:
        spots = [position[c] for c in groups.get(name, []) if c in position]
        if spots:
            ax.axvspan(min(spots) - 0.5, max(spots) + 0.5, color=GROUP_SHADES[name], zorder=0)
            ax.text((min(spots) + max(spots)) / 2, 1.03, name, ha="center", fontsize=8)


def mode_curves(path: Path, rounds: list[dict[str, Any]]) -> Path | None:
    """Overall/head/medium/tail accuracy per round, one line per inference mode."""
    evaluated = [r for r in rounds if (r.get("strategy") or {}).get("modes")]
    if not evaluated:
        return None
    xs = [r["round"] for r in evaluated]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), sharex=True, sharey=True)
    for ax, key in zip(axes.flat, FIGURES, strict=True):
        for mode in evaluated[-1]["strategy"]["modes"]:
            ys = [r["strategy"]["modes"].get(mode, {}).get(key) for r in evaluated]
            style = "--" if mode.endswith(BALANCED_SUFFIX) else "-"
            ax.plot(xs, [np.nan if y is None else y for y in ys], style, marker=".", color=_color(mode), label=mode)
        ax.set_title(f"{key} accuracy")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("round")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("FedLoGe inference modes per round (solid: own long-tailed test data, dashed: balanced test set)")
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
def evaluate_final_model(directory: Path) -> dict[str, dict[str, Any]]:
    """A finished run's final (checkpointed) global model on every client's own long-tailed
    test set (``model``) and on the global test set (``model-balanced``).

    The split, the personal test rows and the head/medium/tail groups are rebuilt
    from the run's ``config.json`` exactly as a fedloge run with the same seed
    builds them, so the figures compare like for like. Only for methods whose whole
    model is shared (fedavg, fedprox, scaffold): with private parts there is no one
    final model.
    """
    import torch  # noqa: PLC0415 (torch and the data stack are slow to import)

    from fedvq_app.data.client_data import eval_loader, load_client_data  # noqa: PLC0415
    from fedvq_app.data.datasets import dataset_info  # noqa: PLC0415
    from fedvq_app.models.state import load_arrays  # noqa: PLC0415
    from fedvq_app.records import to_record  # noqa: PLC0415
    from fedvq_app.registry import (
        get_method,  # noqa: PLC0415
        load_settings,  # noqa: PLC0415
    )
    from fedvq_app.server.checkpoint import load_checkpoint  # noqa: PLC0415 - start-up cost: torch, only on this path
    from fedvq_app.training.loop import predict  # noqa: PLC0415

    directory = Path(directory)
    summary = json.loads((directory / "summary.json").read_text())
    settings = load_settings(json.loads((directory / "config.json").read_text()))
    spec = get_method(settings.method)
    if spec.build_model is None:
        raise ValueError(f"{directory}: method {settings.method!r} has no neural model to evaluate")
    torch.manual_seed(settings.seed)
    model = spec.build_model(settings, dataset_info(settings.dataset, settings.seed))
    private = [k for k in model.state_dict() if not spec.is_shared(k)]
    if private:
        raise ValueError(f"{directory}: method {settings.method!r} keeps private parameters ({private[0]} ...)")
    load_arrays(model, to_record(load_checkpoint(directory).arrays))
    clients = [load_client_data(settings, pid, summary["num_clients"]) for pid in range(summary["num_clients"])]
    num_classes = clients[0].num_classes
    groups = shot_groups(
        np.sum([c.label_counts() for c in clients], axis=0),
        settings.raw.get("fedloge.head-share", 0.75),
        settings.raw.get("fedloge.medium-share", 0.95),
    )
    counts: dict[str, tuple[list, list]] = {"model": ([], []), "model" + BALANCED_SUFFIX: ([], [])}
    with torch.no_grad():
        for data in clients:
            logits, labels = predict(model, eval_loader(data.test_x, data.test_y), torch.device("cpu"))
            preds, labels = logits.argmax(1).numpy(), labels.numpy()
            rows = personal_test_rows(labels, data.label_counts(), settings.seed, data.partition_id)
            for name, keep in (("model", rows), ("model" + BALANCED_SUFFIX, slice(None))):
                correct, total = class_hits(preds[keep], labels[keep], num_classes)
                counts[name][0].append(correct)
                counts[name][1].append(total)
    table = {name: np.flatnonzero(groups == gid).tolist() for gid, name in enumerate(GROUPS)}
    return {name: {**mode_summary(c, t, groups), "groups": table} for name, (c, t) in counts.items()}


def group_report(directory: Path) -> dict[str, dict[str, Any]]:
    """mode -> overall/head/medium/tail accuracy (and class_accuracy) of one finished run.

    A fedloge run reports its own modes (last evaluated round); any other method
    gets :func:`evaluate_final_model`.
    """
    directory = Path(directory)
    summary = json.loads((directory / "summary.json").read_text())
    if summary["method"] == "fedloge":
        return (summary.get("fedloge") or {}).get("modes") or {}
    return evaluate_final_model(directory)


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Overall/head/medium/tail accuracy of finished runs.")
    parser.add_argument("runs", nargs="+", type=Path, help="experiment folders (with summary.json)")
    print(comparison_table(parser.parse_args(argv).runs))


if __name__ == "__main__":
    main()
