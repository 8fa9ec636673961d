"""The PNGs a researcher looks at first, written into the experiment folder.

Every figure goes through :func:`save`: its title names the run (method, dataset,
number of clients: :func:`run_title`) and every axis labelled ``round`` gets
integer ticks. Accuracies are drawn in percent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

#: x-axis label that marks a per-round axis (integer ticks)
ROUND_AXIS = "round"
#: clients named one by one in a legend; more share one entry
MAX_NAMED_CLIENTS = 10


def run_title(summary: dict[str, Any]) -> str:
    """'fedavg on digits, 3 clients' from summary.json (parts it lacks are left out)."""
    method, dataset = summary.get("method"), summary.get("dataset")
    text = " on ".join(str(p) for p in (method, dataset) if p)
    clients = summary.get("num_clients")
    if clients:
        text = f"{text}, {clients} client{'s' if clients != 1 else ''}" if text else f"{clients} clients"
    return text


def integer_rounds(fig) -> None:
    """Integer ticks on every axis of ``fig`` labelled 'round' (no 1.25 rounds)."""
    for ax in fig.axes:
        if ax.get_xlabel() == ROUND_AXIS:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def save(fig, path: Path, run: str = "") -> Path:
    """Name the run in the figure's title, integer round ticks, write the PNG and close the figure."""
    integer_rounds(fig)
    if run:
        own = fig.get_suptitle()
        fig.suptitle(f"{run}\n{own}" if own else run, fontsize=10 if own else 11)
    if fig.get_layout_engine() is None:  # a figure made with layout="constrained" keeps its own
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


#: the name the method plot modules import
_save = save


def label_distribution(path: Path, label_counts: dict[int, list[int]], run: str = "") -> Path | None:
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
    return save(fig, path, run)


def _client_series(rounds: list[dict[str, Any]], key: str) -> tuple[list[int], dict[str, list[float]]]:
    evaluated = [r for r in rounds if r["evaluate"]["clients"]]
    xs = [r["round"] for r in evaluated]
    series: dict[str, list[float]] = {}
    for i, r in enumerate(evaluated):
        for pid, m in r["evaluate"]["clients"].items():
            series.setdefault(pid, [np.nan] * len(evaluated))[i] = m.get(key, np.nan)
    return xs, series


def same_for_every_client(values: np.ndarray) -> bool:
    """Whether every client's curve is the mean's (one global model scored on one shared test set)."""
    return values.shape[0] > 1 and bool(np.allclose(values, values[:1], rtol=0, atol=1e-12, equal_nan=True))


def accuracy_curves(path: Path, rounds: list[dict[str, Any]], run: str = "") -> Path | None:
    """Mean global-test accuracy with the min-max band and one thin line per client, in percent.

    When every client scores the same in every round (one global model on one shared
    test set, e.g. FedAvg without domain shift) the per-client lines would hide under
    the mean: only the mean is drawn, and the legend says so.
    """
    xs, series = _client_series(rounds, "test-accuracy")
    if not xs:
        return None
    values = 100 * np.array(list(series.values()), dtype=float)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    identical = same_for_every_client(values)
    if not identical:
        named = len(series) <= MAX_NAMED_CLIENTS  # beyond that, one legend entry for all thin lines
        for i, (pid, ys) in enumerate(sorted(series.items(), key=lambda kv: int(kv[0]))):
            label = f"client {pid}" if named else ("each client" if i == 0 else None)
            color = None if named else "tab:blue"
            ax.plot(xs, 100 * np.asarray(ys, dtype=float), lw=0.8, alpha=0.6, marker=".", color=color, label=label)
        ax.fill_between(xs, np.nanmin(values, 0), np.nanmax(values, 0), color="grey", alpha=0.2, label="min-max")
    label = f"all {values.shape[0]} clients (identical scores)" if identical else "mean"
    ax.plot(xs, np.nanmean(values, 0), color="black", lw=2.2, marker="o", label=label)
    ax.set_xlabel(ROUND_AXIS)
    ax.set_ylabel("global-test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("Test accuracy per round" if identical else "Test accuracy per client per round")
    return save(fig, path, run)


def loss_curves(path: Path, rounds: list[dict[str, Any]], run: str = "") -> Path | None:
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
    ax.set_xlabel(ROUND_AXIS)
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("Loss per round")
    return save(fig, path, run)


def _pct(value: Any) -> str:
    return "-" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{100 * value:.2f} %"


def client_rows(
    rounds: list[dict[str, Any]], summary: dict[str, Any], label_counts: dict[int, list[int]]
) -> tuple[list[str], list[list[str]]]:
    """The table's header and rows: per client its data share, final validation, global-test and
    own-distribution accuracy, and its best round (highest global-test accuracy); a mean row last."""
    final = summary.get("final") or {}
    pids = final.get("partition_ids") or []
    evaluated = [r for r in rounds if r["evaluate"]["clients"]]
    last = evaluated[-1]["evaluate"]["clients"] if evaluated else {}
    total = sum(sum(v) for v in label_counts.values()) or 1
    header = ["client", "data share", "val acc.", "test acc.", "own-dist. acc.", "best round (test acc.)"]
    rows = []
    for pid in pids:
        metrics = last.get(str(pid)) or last.get(pid) or {}
        history = [(r["round"], (r["evaluate"]["clients"].get(str(pid)) or {}).get("test-accuracy")) for r in evaluated]
        history = [(rnd, acc) for rnd, acc in history if acc is not None]
        best = max(history, key=lambda h: h[1], default=None)  # earliest round among equals
        rows.append(
            [
                str(pid),
                f"{100.0 * sum(label_counts.get(int(pid), [])) / total:.1f} %",
                _pct(metrics.get("val-accuracy")),
                _pct(metrics.get("test-accuracy")),
                _pct(metrics.get("own-test-accuracy")),
                "-" if best is None else f"{best[0]} ({_pct(best[1])})",
            ]
        )
    best_round = (summary.get("best") or {}).get("round")
    rows.append(
        [
            "mean",
            "100 %",
            _pct(final.get("val_accuracy")),
            _pct(final.get("accuracy")),
            _pct(final.get("own_test_accuracy")),
            "-" if best_round is None else f"{best_round} ({_pct((summary.get('best') or {}).get('accuracy'))})",
        ]
    )
    return header, rows


def client_table(
    path: Path,
    summary: dict[str, Any],
    label_counts: dict[int, list[int]],
    rounds: list[dict[str, Any]] | None = None,
    run: str = "",
) -> Path | None:
    """Table: per client its data share, final validation / global-test / own-distribution accuracy
    and its best round with that round's test accuracy (see :func:`client_rows`)."""
    final = summary.get("final") or {}
    if not final.get("partition_ids"):
        return None
    header, rows = client_rows(rounds or [], summary, label_counts)
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(rows) + 1.2))
    ax.axis("off")
    table = ax.table(cellText=rows, colLabels=header, loc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    table.auto_set_column_width(list(range(len(header))))
    table.scale(1, 1.3)
    ax.set_title(f"Clients after round {final.get('round')}")
    return save(fig, path, run)


def class_accuracy_heatmap(path: Path, rounds: list[dict[str, Any]], run: str = "") -> Path | None:
    """Client x class test accuracy (%) of the last evaluated round."""
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
    grid *= 100
    fig, ax = plt.subplots(figsize=(0.5 * grid.shape[1] + 3, 0.4 * len(pids) + 2))
    im = ax.imshow(grid, vmin=0, vmax=100, cmap="viridis", aspect="auto")
    for (i, j), v in np.ndenumerate(grid):
        if not np.isnan(v):
            ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=6, color="w" if v < 60 else "k")
    ax.set_yticks(range(len(pids)), [f"client {p}" for p in pids])
    ax.set_xticks(range(grid.shape[1]))
    ax.set_xlabel("class")
    fig.colorbar(im, ax=ax, label="test accuracy (%)")
    ax.set_title(f"Class-wise accuracy (round {evaluated[-1]['round']})")
    return save(fig, path, run)


def standard_plots(
    directory: Path,
    rounds: list[dict[str, Any]],
    label_counts: dict[int, list[int]],
    summary: dict[str, Any],
) -> list[Path]:
    """Every plot that applies to the run; returns the files written."""
    run = run_title(summary)
    written = [
        label_distribution(directory / "label_distribution.png", label_counts, run),
        accuracy_curves(directory / "accuracy.png", rounds, run),
        loss_curves(directory / "loss.png", rounds, run),
        client_table(directory / "client_accuracy_table.png", summary, label_counts, rounds, run),
        class_accuracy_heatmap(directory / "class_accuracy.png", rounds, run),
    ]
    return [p for p in written if p is not None]
