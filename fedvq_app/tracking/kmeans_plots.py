"""The k-means PNG: convergence (centroid shift and inertia per round)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedvq_app.tracking.plots import _save, plt, run_title


def convergence(path: Path, rounds: list[dict[str, Any]], tol: float | None = None, run: str = "") -> Path | None:
    """Largest centroid shift (log scale) and total inertia per Lloyd round."""
    points = [(r["round"], r["strategy"]) for r in rounds if r.get("strategy", {}).get("centroid_shift") is not None]
    if not points:
        return None
    xs = [x for x, _ in points]
    fig, (ax_shift, ax_inertia) = plt.subplots(1, 2, figsize=(10, 4))
    ax_shift.semilogy(xs, [max(s["centroid_shift"], 1e-16) for _, s in points], marker="o")
    if tol:
        ax_shift.axhline(tol, color="grey", ls="--", label=f"tol = {tol:g}")
        ax_shift.legend()
    ax_shift.set_xlabel("round")
    ax_shift.set_ylabel("largest centroid shift")
    ax_shift.set_title("Convergence")
    ax_inertia.plot(xs, [s["inertia_before_update"] for _, s in points], marker="o", color="tab:orange")
    ax_inertia.set_xlabel("round")
    ax_inertia.set_ylabel("inertia (sum of squared distances)")
    ax_inertia.set_title("Inertia at the start of each round")
    return _save(fig, path, run)


def kmeans_plots(directory: Path, rounds: list[dict[str, Any]], summary: dict[str, Any]) -> list[Path]:
    """The method's plot hook (MethodSpec.plots)."""
    written = convergence(
        directory / "kmeans_convergence.png", rounds, summary.get("kmeans", {}).get("tol"), run=run_title(summary)
    )
    return [written] if written else []
