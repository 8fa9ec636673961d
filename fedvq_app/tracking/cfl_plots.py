"""CFL's PNGs: the seed's training view, its results table, similarity at each split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fedvq_app.tracking.plots import _save, plt, run_title


def _client_accuracy(rounds: list[dict[str, Any]], key: str = "val-accuracy") -> tuple[list[int], np.ndarray]:
    """Evaluated rounds and a rounds x clients array of ``key`` (NaN where missing)."""
    evaluated = [r for r in rounds if r["evaluate"]["clients"]]
    pids = sorted({int(p) for r in evaluated for p in r["evaluate"]["clients"]})
    values = np.full((len(evaluated), len(pids)), np.nan)
    for i, r in enumerate(evaluated):
        for p, metrics in r["evaluate"]["clients"].items():
            values[i, pids.index(int(p))] = metrics.get(key, np.nan)
    return [r["round"] for r in evaluated], values


def training_stats(path: Path, rounds: list[dict[str, Any]], cfl: dict[str, Any], run: str = "") -> Path | None:
    """Seed's ``display_train_stats``: client accuracy (mean +- std) and per-cluster update norms."""
    norm_rounds = [r for r in rounds if r.get("strategy", {}).get("cluster_stats")]
    if not norm_rounds:
        return None
    fig, (ax_acc, ax_norm) = plt.subplots(1, 2, figsize=(12, 4.5))
    xs, acc = _client_accuracy(rounds)
    if xs and acc.size:
        mean, std = np.nanmean(acc, 1), np.nanstd(acc, 1)
        ax_acc.plot(xs, 100 * mean, color="C0", marker="o", ms=3, label="mean client accuracy (own val)")
        ax_acc.fill_between(xs, 100 * (mean - std), 100 * (mean + std), color="C0", alpha=0.25, label="+- std")
    ax_acc.set_ylim(0, 100)
    ax_acc.set_xlabel("round")
    ax_acc.set_ylabel("accuracy (%)")
    series: dict[str, dict[str, list]] = {}
    for r in norm_rounds:
        for cid, s in r["strategy"]["cluster_stats"].items():
            entry = series.setdefault(str(cid), {"x": [], "mean": [], "max": []})
            entry["x"].append(r["round"])
            entry["mean"].append(s["mean_norm"])
            entry["max"].append(s["max_norm"])
    for i, (cid, entry) in enumerate(sorted(series.items(), key=lambda kv: int(kv[0]))):
        ax_norm.plot(entry["x"], entry["mean"], color=f"C{i}", marker="o", ms=3, label=f"cluster {cid}: ||mean dW||")
        ax_norm.plot(
            entry["x"], entry["max"], color=f"C{i}", ls="--", marker="x", ms=3, label=f"cluster {cid}: max ||dW||"
        )
    relative = cfl.get("threshold_scale") == "relative"
    for key, style in (("eps1", ":"), ("eps2", "-.")):
        if cfl.get(key) is not None:
            option = f" ({cfl[key + '_option']:g} x reference {cfl['reference_norm']:.3g})" if relative else ""
            ax_norm.axhline(cfl[key], color="k", lw=0.8, ls=style, label=f"{key} = {cfl[key]:.3g}{option}")
    for ax in (ax_acc, ax_norm):
        for k, split_round in enumerate(cfl.get("split_rounds", [])):
            ax.axvline(split_round, color="red", ls="--", lw=1, label="split" if k == 0 else None)
        ax.grid(alpha=0.3)
    ax_norm.set_xlabel("round")
    ax_norm.set_ylabel("update norm")
    ax_acc.legend(fontsize=8, loc="lower right")
    ax_norm.legend(fontsize=7, ncol=2)
    ax_acc.set_title("Client accuracy")
    ax_norm.set_title("Update norms per cluster")
    return _save(fig, path, run)


def results_table(path: Path, table: dict[str, Any], metric: str = "val-accuracy", run: str = "") -> Path | None:
    """Seed's results table: model x client accuracy (0 outside the model's cluster), best per client marked."""
    rows = table.get("models") or []
    if not rows:
        return None
    clients = table["clients"]
    values = np.array([[np.nan if v is None else v for v in row[metric]] for row in rows], dtype=float)
    best = np.nanmax(values, axis=0) if len(rows) else []
    cells = [[f"{v:.3f}" if not np.isnan(v) else "-" for v in line] for line in values]
    colors = [
        ["#fff176" if not np.isnan(v) and v == b and v > 0 else "white" for v, b in zip(line, best, strict=True)]
        for line in values
    ]
    fig, ax = plt.subplots(figsize=(1.0 * len(clients) + 3, 0.3 * len(rows) + 0.9))
    ax.axis("off")
    grid = ax.table(
        cellText=cells,
        cellColours=colors,
        rowLabels=[row["label"] for row in rows],
        colLabels=[f"client {c}" for c in clients],
        loc="center",
    )
    grid.auto_set_font_size(False)
    grid.set_fontsize(8)
    grid.scale(1, 1.4)
    ax.set_title(f"CFL results ({metric}; 0 = client outside the model's cluster; yellow = best per client)")
    return _save(fig, path, run)


def similarity_at_split(path: Path, split: dict[str, Any], groups: dict[str, int], run: str = "") -> Path:
    """Cosine similarity of the members' updates in the round their cluster split."""
    ids = split["similarity_ids"]
    order = [ids.index(p) for half in split["members"] for p in half if p in ids]
    matrix = np.array(split["similarity"], dtype=float)[np.ix_(order, order)]
    labels = [f"{ids[i]}{' (rot)' if groups.get(str(ids[i])) else ''}" for i in order]
    fig, ax = plt.subplots(figsize=(0.5 * len(ids) + 3, 0.5 * len(ids) + 2.4))
    im = ax.imshow(matrix, vmin=-1, vmax=1, cmap="RdBu_r")
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="w" if abs(v) > 0.6 else "k")
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    boundary = len([p for p in split["members"][0] if p in ids]) - 0.5
    ax.axhline(boundary, color="k", lw=1.5)
    ax.axvline(boundary, color="k", lw=1.5)
    fig.colorbar(im, ax=ax, label="cosine similarity of updates")
    ax.set_title(f"Round {split['round']}: cluster {split['parent']} -> {split['children']}")
    return _save(fig, path, run)


def cfl_plots(directory: Path, rounds: list[dict[str, Any]], summary: dict[str, Any]) -> list[Path]:
    """The method's plot hook (MethodSpec.plots)."""
    cfl = summary.get("cfl") or {}
    run = run_title(summary)
    if "eps1" not in cfl:
        return []
    written = [
        training_stats(directory / "cfl_training.png", rounds, cfl, run=run),
        results_table(directory / "cfl_results_table.png", cfl.get("results_table") or {}, run=run),
    ]
    groups = cfl.get("rotation_groups") or {}
    for split in cfl.get("splits", []):
        name = f"cfl_similarity_round{split['round']}_cluster{split['parent']}.png"
        written.append(similarity_at_split(directory / name, split, groups, run=run))
    return [p for p in written if p is not None]
