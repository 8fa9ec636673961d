"""FedVQ's outputs beyond the standard plots: codebook usage, codebook PCA, aggregation
statistics, and the seed's tables as Markdown (``fedvq_tables.md``).

Everything is read from ``rounds.jsonl`` records (the strategy's ``round_report``
under ``strategy``) and ``summary.json`` (``summary['fedvq']``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fedvq_app.tracking.plots import _save, run_title  # noqa: E402

METHOD = "fedvq"


def usage_heatmap(path: Path, report: dict[str, Any], run: str = "") -> Path | None:
    """Client x code usage frequency of the last round (log colour scale)."""
    usage = report.get("usage") or {}
    if not usage:
        return None
    pids = sorted(usage, key=int)
    counts = np.array([usage[p] for p in pids], dtype=float)
    freq = counts / np.maximum(counts.sum(1, keepdims=True), 1.0)
    fig, ax = plt.subplots(figsize=(min(18, 4 + 0.12 * freq.shape[1]), 0.4 * len(pids) + 2))
    floor = 1e-4
    im = ax.imshow(np.log10(np.maximum(freq, floor)), aspect="auto", cmap="magma", vmin=np.log10(floor), vmax=0)
    ax.set_yticks(range(len(pids)), [f"client {p}" for p in pids])
    ax.set_xlabel("code index")
    fig.colorbar(im, ax=ax, label="log10 usage frequency")
    ax.set_title("Codebook usage per client (last round)")
    return _save(fig, path, run)


def codebook_pca_plot(path: Path, report: dict[str, Any], run: str = "") -> Path | None:
    """The global codebook and every client's codes in the first two principal components."""
    pca = report.get("pca")
    if not pca:
        return None
    fig, ax = plt.subplots(figsize=(7, 6))
    cmap = plt.get_cmap("tab10")
    for i, (pid, points) in enumerate(sorted(pca["clients"].items(), key=lambda kv: int(kv[0]))):
        xy = np.asarray(points)
        ax.scatter(xy[:, 0], xy[:, 1], s=8, alpha=0.45, color=cmap(i % 10), label=f"client {pid}")
    xy = np.asarray(pca["global"])
    ax.scatter(xy[:, 0], xy[:, 1], s=30, marker="x", color="black", label="global codebook")
    ratio = pca.get("explained_variance_ratio", [0, 0])
    ax.set_xlabel(f"PC1 ({100 * ratio[0]:.1f} %)")
    ax.set_ylabel(f"PC2 ({100 * ratio[1]:.1f} %)")
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(f"Codebook PCA ({report.get('aggregation')}, align={report.get('align')})")
    return _save(fig, path, run)


def _strategy_value(strategy: dict[str, Any], key: str) -> Any:
    if key == "codes_used_share":
        used, size = strategy.get("codes_used"), strategy.get("codebook_size")
        return None if used is None or not size else used / size
    return strategy.get(key)


def _strategy_series(rounds: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    pairs = [(r["round"], _strategy_value(r.get("strategy", {}), key)) for r in rounds]
    pairs = [(x, y) for x, y in pairs if y is not None]
    return [x for x, _ in pairs], [float(y) for _, y in pairs]


def aggregation_stats(path: Path, rounds: list[dict[str, Any]], run: str = "") -> Path | None:
    """Per round: inertia, usage ratio, codebook drift and seconds spent aggregating."""
    panels = [
        ("inertia", "inertia (clients' codes)"),
        ("usage_ratio", "usage ratio (codes used by any client)"),
        ("codes_used_share", "codes used / K (federation)"),
        ("perplexity", "code perplexity (pooled counts)"),
        ("drift", "mean code drift vs previous"),
        ("aggregation_s", "aggregation time (s)"),
    ]
    series = [(label, *_strategy_series(rounds, key)) for key, label in panels]
    if not any(xs for _, xs, _ in series):
        return None
    cols = 3
    fig, axes = plt.subplots(-(-len(series) // cols), cols, figsize=(4 * cols, 3.2 * -(-len(series) // cols)))
    for ax, (label, xs, ys) in zip(axes.flat, series, strict=True):
        ax.set_title(label, fontsize=9)
        if not xs:  # e.g. no drift before there is a previous codebook
            ax.text(0.5, 0.5, "not reported", ha="center", va="center", transform=ax.transAxes, color="grey")
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        ax.plot(xs, ys, marker="o")
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
    fig.suptitle("Codebook aggregation and usage statistics")
    return _save(fig, path, run)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _fmt(value: Any, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def tables_markdown(rounds: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    """The seed's tables: client x accuracy (with data share and best round), client x class,
    codebook usage per client, aggregation statistics per round."""
    report = summary.get(METHOD, {})
    evaluated = [r for r in rounds if r["evaluate"]["clients"]]
    last_train = next((r for r in reversed(rounds) if r.get("strategy", {}).get("clients")), None)
    usage = last_train["strategy"]["clients"] if last_train else {}
    best = report.get("best_round_per_client", {})
    parts = [
        f"# FedVQ tables (quantizer={report.get('quantizer')}, encoder={report.get('encoder')}, "
        f"{report.get('aggregation')}, align={report.get('align')})"
    ]
    if evaluated:
        last = evaluated[-1]
        clients = last["evaluate"]["clients"]
        pids = sorted(clients, key=int)
        rows = [
            [
                p,
                _fmt(100 * usage.get(p, {}).get("share", 0), ".1f") + " %",
                _fmt(clients[p].get("test-accuracy")),
                _fmt(best.get(p, {}).get("accuracy")),
                str(best.get(p, {}).get("round", "-")),
            ]
            for p in pids
        ]
        parts += [
            f"## Global-test accuracy per client (round {last['round']})",
            _table(["client", "data share", "test accuracy", "best accuracy", "best round"], rows),
        ]
        class_rows = [clients[p].get("test-class-accuracy") or [] for p in pids]
        width = max((len(r) for r in class_rows), default=0)
        parts += [
            "## Class-wise global-test accuracy",
            _table(
                ["client", *[f"class {c}" for c in range(width)]],
                [
                    [p, *[_fmt(v, ".2f") if v is not None and v >= 0 else "-" for v in row]]
                    for p, row in zip(pids, class_rows, strict=True)
                ],
            ),
        ]
    if usage:
        parts += [
            "## Codebook usage per client (last round)",
            _table(
                ["client", "used / K", "perplexity"],
                [
                    [p, f"{u['used']} / {u['codebook_size']}", _fmt(u["perplexity"], ".2f")]
                    for p, u in sorted(usage.items(), key=lambda kv: int(kv[0]))
                ],
            ),
        ]
    stats = [r["strategy"] for r in rounds if r.get("strategy", {}).get("inertia") is not None]
    if stats:
        parts += [
            "## Aggregation per round",
            _table(
                [
                    "round",
                    "encoder",
                    "codes used / K",
                    "perplexity",
                    "inertia",
                    "usage ratio",
                    "drift",
                    "realigned codes",
                    "revived codes",
                    "seconds",
                ],
                [
                    [
                        str(s["round"]),
                        str(s.get("encoder", "-")),
                        f"{s.get('codes_used', '-')} / {s.get('codebook_size', '-')}",
                        _fmt(s.get("perplexity"), ".2f"),
                        _fmt(s["inertia"], ".3f"),
                        _fmt(s.get("usage_ratio"), ".3f"),
                        _fmt(s.get("drift"), ".4f"),
                        str(s.get("realigned_codes", "-")),
                        str(s.get("revived_codes", "-")),
                        _fmt(s["aggregation_s"], ".3f"),
                    ]
                    for s in stats
                ],
            ),
        ]
    return "\n\n".join(parts) + "\n"


def fedvq_plots(directory: Path, rounds: list[dict[str, Any]], summary: dict[str, Any]) -> list[Path]:
    """Every FedVQ output that applies to the run; returns the files written."""
    report = summary.get(METHOD, {})
    run = run_title(summary)
    tables = directory / "fedvq_tables.md"
    tables.write_text(tables_markdown(rounds, summary))
    written = [
        usage_heatmap(directory / "codebook_usage.png", report, run=run),
        codebook_pca_plot(directory / "codebook_pca.png", report, run=run),
        aggregation_stats(directory / "codebook_aggregation.png", rounds, run=run),
        tables,
    ]
    return [p for p in written if p is not None]
