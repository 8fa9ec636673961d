"""Turn a federated k-means experiment folder into an animation (``fedvq-animate``).

For every Lloyd round it draws the seed's three frames -- the global means over
every client's data, each client's local clustering (its rows coloured by the
nearest global mean, its shared local means with their sample counts), and the
aggregation (all local means, arrows from the old to the new global means, the
convergence change) -- plus a closing frame with inertia, silhouette and ARI.
Frames are PNG files in ``<experiment>/frames/``; the video is MP4 when ``ffmpeg``
is on the PATH and an animated GIF (Pillow) otherwise.

    fedvq-animate --experiment-dir logs/kmeans_wine_... [--fps 2] [--output out.gif]
                  [--frames-only] [--cleanup]
    python -m fedvq_app.tracking.animate --experiment-dir ...

Client rows appear only where the clients' logs are in the folder (a simulation,
or logs gathered from the sites); otherwise the frames show the means alone.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from PIL import Image  # noqa: E402

from fedvq_app.aggregation.kmeans import FeatureTransform  # noqa: E402
from fedvq_app.tracking.kmeans_logs import EXPERIMENT_SUMMARY, METRICS_FILE, KMeansLogs  # noqa: E402

FIGSIZE = (12.0, 6.0)
DPI = 80
CLUSTER_COLORS = plt.get_cmap("tab10")
CLIENT_COLORS = plt.get_cmap("Set2")


@dataclass
class Experiment:
    """Everything the frames need, read once from the log folder."""

    logs: KMeansLogs
    transform: FeatureTransform | None
    rounds: list[int]
    clients: list[int]
    run: int
    summary: dict
    metrics: dict

    @classmethod
    def load(cls, directory: Path) -> Experiment:
        logs = KMeansLogs(directory)
        rounds = logs.global_rounds()
        if not rounds:
            raise SystemExit(f"error: {directory} has no global_means/round_XXX_global_means.npy (not a k-means run?)")
        summary = logs.read_json(EXPERIMENT_SUMMARY)
        _, first = logs.read_global(rounds[0])
        return cls(
            logs,
            logs.read_transform(),
            rounds,
            logs.client_ids(),
            int(first.get("run", 0)),
            summary,
            logs.read_json(METRICS_FILE),
        )

    def view(self, centroids: np.ndarray) -> np.ndarray:
        """Centroids (cluster space) -> 2-D view coordinates."""
        if self.transform is not None:
            return self.transform.view_of_centroids(centroids)
        c = np.asarray(centroids, dtype=np.float64)
        return c[:, :2] if c.shape[1] >= 2 else np.hstack([c, np.zeros((len(c), 1))])

    def global_means(self, server_round: int) -> tuple[np.ndarray, dict]:
        means, meta = self.logs.read_global(server_round)
        return self.view(means), meta

    def local(self, client: int, server_round: int) -> dict | None:
        entry = self.logs.read_local(client, server_round)
        if entry is None:
            return None
        means, counts = np.asarray(entry["means"], dtype=np.float64), np.asarray(entry["counts"])
        if means.ndim == 3:  # the client logs every run's local means: show the kept run's
            means, counts = means[min(self.run, len(means) - 1)], counts[min(self.run, len(counts) - 1)]
        shared = ~np.isnan(means).any(axis=1)
        view = np.full((len(means), 2), np.nan)
        if shared.any():
            view[shared] = self.view(means[shared])
        assignments = entry["assignments"]
        if assignments is not None and assignments.ndim == 2:
            assignments = assignments[min(self.run, len(assignments) - 1)]
        withheld = entry["metadata"].get("withheld_clusters", [])
        if withheld and isinstance(withheld[0], list):
            withheld = withheld[min(self.run, len(withheld) - 1)]
        return {"means": view, "counts": counts, "assignments": assignments, "withheld": withheld}

    def points(self, client: int) -> np.ndarray | None:
        return self.logs.read_client_points(client)


def _limits(exp: Experiment) -> tuple[tuple[float, float], tuple[float, float]]:
    """One pair of axis limits for every frame, so nothing jumps between frames."""
    clouds = [p for p in (exp.points(c) for c in exp.clients) if p is not None]
    clouds += [exp.global_means(r)[0] for r in exp.rounds]
    stacked = np.vstack(clouds)
    low, high = stacked.min(axis=0), stacked.max(axis=0)
    pad = 0.08 * np.maximum(high - low, 1e-6)
    return (low[0] - pad[0], high[0] + pad[0]), (low[1] - pad[1], high[1] + pad[1])


def _axes_style(ax, exp: Experiment, limits, title: str) -> None:
    ax.set_xlim(*limits[0])
    ax.set_ylim(*limits[1])
    ax.set_title(title, fontsize=10)
    pca = exp.transform is not None and exp.transform.components is not None
    axis = "principal component" if pca else "standardized feature"
    ax.set_xlabel(f"{axis} 1", fontsize=8)
    ax.set_ylabel(f"{axis} 2", fontsize=8)
    ax.tick_params(labelsize=7)


def _figure(ncols: int = 1):
    fig, axes = plt.subplots(1, ncols, figsize=FIGSIZE, dpi=DPI, squeeze=False)
    return fig, list(axes[0])


def _draw_means(ax, means: np.ndarray, *, hollow: bool = False, labels: bool = True, size: float = 220) -> None:
    for j, (x, y) in enumerate(means):
        color = CLUSTER_COLORS(j % 10)
        if hollow:
            ax.scatter(x, y, s=size, marker="X", facecolors="none", edgecolors=color, linewidths=1.5, zorder=4)
        else:
            ax.scatter(x, y, s=size, marker="X", color=color, edgecolors="black", linewidths=1.2, zorder=5)
        if labels:
            ax.annotate(f"C{j}", (x, y), xytext=(6, 6), textcoords="offset points", fontsize=9, weight="bold")


def _text_box(ax, lines: list[str]) -> None:
    ax.text(
        0.01,
        0.99,
        "\n".join(lines),
        transform=ax.transAxes,
        va="top",
        ha="left",
        fontsize=8,
        bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.85},
    )


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def frame_global(exp: Experiment, server_round: int, limits, path: Path) -> Path:
    """Frame 1: every client's rows with the global means the round starts from."""
    means, meta = exp.global_means(server_round - 1)
    fig, (ax,) = _figure()
    handles = []
    for i, client in enumerate(exp.clients):
        points = exp.points(client)
        if points is not None:
            ax.scatter(points[:, 0], points[:, 1], s=10, alpha=0.45, color=CLIENT_COLORS(i % 8))
            handles.append(Patch(color=CLIENT_COLORS(i % 8), label=f"client {client}"))
    _draw_means(ax, means)
    if handles:
        ax.legend(handles=handles, loc="lower right", fontsize=8)
    change = meta.get("convergence_change")
    _text_box(
        ax,
        [
            f"global means of round {server_round - 1}",
            f"convergence change: {change:.5f}" if change is not None else "initialisation",
            f"clients: {len(exp.clients)}",
        ],
    )
    _axes_style(ax, exp, limits, f"Round {server_round} - global means sent to the clients")
    return _save(fig, path)


def frame_local(exp: Experiment, server_round: int, limits, path: Path) -> Path:
    """Frame 2: each client assigns its rows to the global means and forms local means."""
    previous, _ = exp.global_means(server_round - 1)
    fig, axes = _figure(max(1, len(exp.clients)))
    for ax, client in zip(axes, exp.clients or [None], strict=False):
        local = exp.local(client, server_round) if client is not None else None
        points = exp.points(client) if client is not None else None
        if points is not None:
            assignments = local["assignments"] if local else None
            colors = [CLUSTER_COLORS(int(a) % 10) for a in assignments] if assignments is not None else "grey"
            ax.scatter(points[:, 0], points[:, 1], s=8, alpha=0.4, c=colors)
        _draw_means(ax, previous, hollow=True, labels=False, size=150)
        withheld = []
        if local is not None:
            withheld = local["withheld"]
            for j, ((x, y), n) in enumerate(zip(local["means"], local["counts"], strict=True)):
                if np.isnan(x):
                    continue
                ax.scatter(x, y, s=90, marker="D", color=CLUSTER_COLORS(j % 10), edgecolors="black", zorder=5)
                ax.annotate(f"n={int(n)}", (x, y), xytext=(5, -10), textcoords="offset points", fontsize=7)
        note = f" - withheld {withheld}" if withheld else ""
        _axes_style(ax, exp, limits, f"client {client}{note}")
    fig.suptitle(f"Round {server_round} - local means per client (diamonds; hollow X = global means)", fontsize=11)
    return _save(fig, path)


def frame_aggregate(exp: Experiment, server_round: int, limits, path: Path) -> Path:
    """Frame 3: local means of all clients are merged; arrows show how the global means move."""
    previous, _ = exp.global_means(server_round - 1)
    new, meta = exp.global_means(server_round)
    fig, (ax,) = _figure()
    for i, client in enumerate(exp.clients):
        points = exp.points(client)
        if points is not None:
            ax.scatter(points[:, 0], points[:, 1], s=6, alpha=0.15, color="grey")
        local = exp.local(client, server_round)
        if local is None:
            continue
        counts = np.asarray(local["counts"], dtype=float)
        for j, ((x, y), n) in enumerate(zip(local["means"], counts, strict=True)):
            if not np.isnan(x):
                ax.scatter(
                    x,
                    y,
                    s=30 + 2 * n,
                    marker="D",
                    color=CLUSTER_COLORS(j % 10),
                    alpha=0.6,
                    edgecolors=CLIENT_COLORS(i % 8),
                    linewidths=2,
                )
    _draw_means(ax, previous, hollow=True, labels=False)
    _draw_means(ax, new)
    for (x0, y0), (x1, y1) in zip(previous, new, strict=True):
        if np.hypot(x1 - x0, y1 - y0) > 1e-9:
            ax.annotate("", xy=(x1, y1), xytext=(x0, y0), arrowprops={"arrowstyle": "->", "lw": 1.5})
    lines = [f"convergence change: {meta.get('convergence_change', float('nan')):.5f}"]
    if "cluster_counts" in meta:
        lines.append(f"cluster sizes: {meta['cluster_counts']}")
    if "inertia_before_update" in meta:
        lines.append(f"inertia (before update): {meta['inertia_before_update']:.3f}")
    if "participating_clients" in meta:
        lines.append(f"participating clients: {_short(str(meta['participating_clients']))}")
    _text_box(ax, lines)
    _axes_style(ax, exp, limits, f"Round {server_round} - aggregation (diamond size ~ sample count)")
    return _save(fig, path)


def _short(text: str, limit: int = 60) -> str:
    """A frame's text line cut to ``limit`` characters (id ranges of thousands of clients)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def frame_final(exp: Experiment, limits, path: Path) -> Path:
    """Closing frame: final global means over all rows with the evaluation metrics."""
    means, _ = exp.global_means(exp.rounds[-1])
    fig, (ax,) = _figure()
    for i, client in enumerate(exp.clients):
        points = exp.points(client)
        if points is not None:
            ax.scatter(points[:, 0], points[:, 1], s=10, alpha=0.45, color=CLIENT_COLORS(i % 8))
    _draw_means(ax, means)
    m = exp.metrics
    lines = [f"rounds: {exp.summary.get('total_rounds', exp.rounds[-1])}, converged: {exp.summary.get('converged')}"]
    for key in ("inertia", "silhouette", "ari"):
        if m.get(key) is not None:
            lines.append(f"{key}: {m[key]:.4f}")
    _text_box(ax, lines)
    _axes_style(ax, exp, limits, "Final global means")
    return _save(fig, path)


def render_frames(exp: Experiment, frames_dir: Path) -> list[Path]:
    """All frames in order: three per round, then the closing frame."""
    frames_dir.mkdir(parents=True, exist_ok=True)
    limits = _limits(exp)
    frames: list[Path] = []

    def next_path() -> Path:
        return frames_dir / f"frame_{len(frames) + 1:04d}.png"

    for server_round in exp.rounds[1:]:
        for draw in (frame_global, frame_local, frame_aggregate):
            frames.append(draw(exp, server_round, limits, next_path()))
    frames.append(frame_final(exp, limits, next_path()))
    return frames


def write_gif(frames: list[Path], output: Path, fps: float) -> Path:
    images = [Image.open(p).convert("RGB") for p in frames]
    images[0].save(output, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return output


def write_mp4(frames_dir: Path, output: Path, fps: float) -> Path:
    command = [
        "ffmpeg",
        "-y",
        "-loglevel",
        "error",
        "-framerate",
        str(fps),
        "-i",
        str(frames_dir / "frame_%04d.png"),
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        "-vf",
        "pad=ceil(iw/2)*2:ceil(ih/2)*2",
        str(output),
    ]
    subprocess.run(command, check=True)
    return output


def choose_output(directory: Path, requested: str | None, have_ffmpeg: bool) -> Path:
    """The video path: as asked, but a GIF where an MP4 was asked and ffmpeg is missing."""
    output = (
        Path(requested)
        if requested
        else directory / ("federated_kmeans.mp4" if have_ffmpeg else "federated_kmeans.gif")
    )
    if output.suffix.lower() != ".gif" and not have_ffmpeg:
        print(f"ffmpeg not found: writing {output.with_suffix('.gif').name} instead of {output.name}", file=sys.stderr)
        output = output.with_suffix(".gif")
    return output


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fedvq-animate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment-dir", required=True, help="experiment folder of a kmeans run")
    parser.add_argument("--output", help="video file (default <experiment>/federated_kmeans.mp4, .gif without ffmpeg)")
    parser.add_argument("--fps", type=float, default=2.0, help="frames per second (default 2)")
    parser.add_argument("--frames-only", action="store_true", help="write the PNG frames, no video")
    parser.add_argument("--cleanup", action="store_true", help="delete the PNG frames once the video is written")
    args = parser.parse_args(argv)
    if args.fps <= 0:
        parser.error("--fps must be > 0")
    return args


def main(argv: list[str] | None = None) -> Path | None:
    """Command-line entry point; returns the video path (None with --frames-only)."""
    args = parse_args(argv)
    directory = Path(args.experiment_dir).expanduser().resolve()
    exp = Experiment.load(directory)
    frames_dir = directory / "frames"
    if frames_dir.exists():
        shutil.rmtree(frames_dir)
    frames = render_frames(exp, frames_dir)
    print(f"wrote {len(frames)} frames to {frames_dir}")
    if args.frames_only:
        return None
    have_ffmpeg = shutil.which("ffmpeg") is not None
    output = choose_output(directory, args.output, have_ffmpeg)
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix.lower() == ".gif":
        write_gif(frames, output, args.fps)
    else:
        write_mp4(frames_dir, output, args.fps)
    if args.cleanup:
        shutil.rmtree(frames_dir)
    print(f"wrote {output}")
    return output


if __name__ == "__main__":
    main()
