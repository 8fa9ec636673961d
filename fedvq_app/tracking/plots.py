"""The PNGs a researcher looks at first, written into the experiment folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def label_distribution(path: Path, label_counts: dict[int, list[int]]) -> Path | None:
    """Stacked bars: samples of each class held by each client."""
    if not label_counts:
        return None
    clients = sorted(label_counts)
    counts = np.array([label_counts[c] for c in clients], dtype=float)
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(clients) + 3), 4))
    bottom = np.zeros(len(clients))
    cmap = plt.get_cmap("tab20")
    for cls in range(counts.shape[1]):
        ax.bar([str(c) for c in clients], counts[:, cls], bottom=bottom, color=cmap(cls % 20), label=str(cls))
        bottom += counts[:, cls]
    ax.set_xlabel("client (partition id)")
    ax.set_ylabel("training samples")
    ax.set_title("Label distribution per client")
    ax.legend(title="class", bbox_to_anchor=(1.01, 1), loc="upper left", fontsize=7)
    return _save(fig, path)


def _client_series(rounds: list[dict[str, Any]], key: str) -> tuple[list[int], dict[str, list[float]]]:
    evaluated = [r for r in rounds if r["evaluate"]["clients"]]
    xs = [r["round"] for r in evaluated]
    series: dict[str, list[float]] = {}
    for i, r in enumerate(evaluated):
        for pid, m in r["evaluate"]["clients"].items():
            series.setdefault(pid, [np.nan] * len(evaluated))[i] = m.get(key, np.nan)
    return xs, series


def accuracy_curves(path: Path, rounds: list[dict[str, Any]]) -> Path | None:
    """Per-client test accuracy (thin) with the mean and min-max band (thick)."""
    xs, series = _client_series(rounds, "test-accuracy")
    if not xs:
        return None
    values = np.array(list(series.values()), dtype=float)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for pid, ys in sorted(series.items(), key=lambda kv: int(kv[0])):
        ax.plot(xs, ys, lw=0.8, alpha=0.6, label=f"client {pid}")
    ax.fill_between(xs, np.nanmin(values, 0), np.nanmax(values, 0), color="grey", alpha=0.2)
    ax.plot(xs, np.nanmean(values, 0), color="black", lw=2.2, label="mean")
    ax.set_xlabel("round")
    ax.set_ylabel("global-test accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("Accuracy per client per round")
    return _save(fig, path)


def loss_curves(path: Path, rounds: list[dict[str, Any]]) -> Path | None:
    """Aggregated train loss and mean test loss per round."""
    train = [(r["round"], r["train"]["aggregated"].get("train-loss")) for r in rounds]
    train = [(x, y) for x, y in train if y is not None]
    xs, series = _client_series(rounds, "test-loss")
    if not train and not xs:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if train:
        ax.plot(*zip(*train, strict=True), marker="o", label="train loss (weighted)")
    if xs:
        ax.plot(xs, np.nanmean(np.array(list(series.values()), dtype=float), 0), marker="s", label="test loss (mean)")
    ax.set_xlabel("round")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("Loss per round")
    return _save(fig, path)


def client_table(path: Path, summary: dict[str, Any], label_counts: dict[int, list[int]]) -> Path | None:
    """Table: client, data share, final val/test accuracy, best round."""
    final = summary.get("final") or {}
    pids = final.get("partition_ids") or []
    if not pids:
        return None
    total = sum(sum(v) for v in label_counts.values()) or 1
    rows = []
    for pid, acc in zip(pids, final["per_client_accuracy"], strict=True):
        share = 100.0 * sum(label_counts.get(pid, [])) / total
        rows.append([str(pid), f"{share:.1f} %", f"{acc:.4f}" if acc is not None else "-"])
    rows.append(["mean", "100 %", f"{final['accuracy']:.4f}"])
    fig, ax = plt.subplots(figsize=(5, 0.35 * len(rows) + 1.2))
    ax.axis("off")
    table = ax.table(cellText=rows, colLabels=["client", "data share", "test accuracy"], loc="center")
    table.scale(1, 1.3)
    ax.set_title(f"{summary['method']} on {summary['dataset']}: round {final.get('round')}")
    return _save(fig, path)


def class_accuracy_heatmap(path: Path, rounds: list[dict[str, Any]]) -> Path | None:
    """Client x class test accuracy of the last evaluated round."""
    evaluated = [r for r in rounds if r["evaluate"]["clients"]]
    if not evaluated:
        return None
    clients = evaluated[-1]["evaluate"]["clients"]
    pids = sorted(clients, key=int)
    rows = [clients[p].get("test-class-accuracy") for p in pids]
    if not rows or any(r is None for r in rows):
        return None
    grid = np.array(rows, dtype=float)
    grid[grid < 0] = np.nan
    fig, ax = plt.subplots(figsize=(0.5 * grid.shape[1] + 3, 0.4 * len(pids) + 2))
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    for (i, j), v in np.ndenumerate(grid):
        if not np.isnan(v):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="w" if v < 0.6 else "k")
    ax.set_yticks(range(len(pids)), [f"client {p}" for p in pids])
    ax.set_xticks(range(grid.shape[1]))
    ax.set_xlabel("class")
    fig.colorbar(im, ax=ax, label="test accuracy")
    ax.set_title("Class-wise accuracy (last round)")
    return _save(fig, path)


def standard_plots(
    directory: Path,
    rounds: list[dict[str, Any]],
    label_counts: dict[int, list[int]],
    summary: dict[str, Any],
) -> list[Path]:
    """Every plot that applies to the run; returns the files written."""
    written = [
        label_distribution(directory / "label_distribution.png", label_counts),
        accuracy_curves(directory / "accuracy.png", rounds),
        loss_curves(directory / "loss.png", rounds),
        client_table(directory / "client_accuracy_table.png", summary, label_counts),
        class_accuracy_heatmap(directory / "class_accuracy.png", rounds),
    ]
    return [p for p in written if p is not None]
