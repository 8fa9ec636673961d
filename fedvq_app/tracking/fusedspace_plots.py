"""FusedSpaceFed's PNG: reconstruction losses and gradient dissimilarity per round."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedvq_app.tracking.plots import _save, plt, run_title


def _series(rounds: list[dict[str, Any]], pick) -> tuple[list[int], list[float]]:
    points = [(r["round"], pick(r)) for r in rounds]
    points = [(x, y) for x, y in points if y is not None]
    return [x for x, _ in points], [y for _, y in points]


def training_curves(path: Path, rounds: list[dict[str, Any]], run: str = "") -> Path | None:
    """Left: warm-up and joint reconstruction loss; right: Gamma (when measured)."""
    xs_w, warmup = _series(rounds, lambda r: r.get("strategy", {}).get("warmup-loss"))
    xs_r, joint = _series(rounds, lambda r: r.get("strategy", {}).get("reconstruction-loss"))
    xs_g, gamma = _series(rounds, lambda r: r["evaluate"]["aggregated"].get("gradient-dissimilarity"))
    if not (xs_r or xs_g):
        return None
    fig, (ax_rec, ax_gamma) = plt.subplots(1, 2, figsize=(10, 4))
    ax_rec.plot(xs_w, warmup, marker="o", label="encoder warm-up")
    ax_rec.plot(xs_r, joint, marker="s", label="joint epochs")
    ax_rec.set_xlabel("round")
    ax_rec.set_ylabel("mean ||D(E_i(x)) - x||^2")
    ax_rec.set_title("Reconstruction loss (client mean)")
    ax_rec.legend()
    if xs_g:
        ax_gamma.plot(xs_g, gamma, marker="o", color="tab:red")
    else:
        ax_gamma.text(0.5, 0.5, "not measured\n(metrics.gradient-dissimilarity = false)", ha="center", va="center")
    ax_gamma.set_xlabel("round")
    ax_gamma.set_ylabel("Gamma")
    ax_gamma.set_title("Gradient dissimilarity")
    return _save(fig, path, run)


def fusedspace_plots(directory: Path, rounds: list[dict[str, Any]], summary: dict[str, Any]) -> list[Path]:
    """The method's plot hook (MethodSpec.plots)."""
    written = training_curves(directory / "fusedspace_training.png", rounds, run=run_title(summary))
    return [written] if written else []
