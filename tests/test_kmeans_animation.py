"""The animation command on a tiny k-means experiment."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from data_gen.generate_test_data import GeneratorOptions, generate, write
from fedvq_app.client_app import app as client_app
from fedvq_app.local_grid import run_local
from fedvq_app.server_app import app as server_app
from fedvq_app.tracking import animate


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """Two clients, 10 features (so the frames use the federated PCA view), at most 2 rounds."""
    from fedvq_app.local_grid import claim_server_identity, full_run_config  # noqa: PLC0415

    claim_server_identity()
    root = tmp_path_factory.mktemp("anim")
    opts = GeneratorOptions(num_clients=2, samples_per_client=30, num_features=10, num_clusters=2, cluster_std=3.0)
    data = write(generate(opts), root / "data")
    config = full_run_config(
        method="kmeans",
        **{
            "log-dir": str(root / "logs"),
            "experiment-name": "tiny",
            "kmeans.k": 2,
            "kmeans.data-source": "generated",
            "kmeans.data-path": str(data),
            "kmeans.max-rounds": 2,
            "kmeans.n-init": 2,
        },
    )
    run_local(server_app, client_app, 2, config)
    return root / "logs" / "tiny"


def test_animation_writes_a_gif_with_three_frames_per_round_plus_the_summary(experiment, tmp_path):
    rounds = json.loads((experiment / "summary.json").read_text())["rounds"]
    output = animate.main(
        ["--experiment-dir", str(experiment), "--output", str(tmp_path / "run.gif"), "--fps", "4", "--cleanup"]
    )
    assert output == tmp_path / "run.gif"
    with Image.open(output) as gif:
        assert gif.format == "GIF" and gif.n_frames == 3 * rounds + 1
        assert gif.info["duration"] == 250
    assert not (experiment / "frames").exists()  # --cleanup


def test_frames_only_writes_png_frames_and_no_video(experiment):
    assert animate.main(["--experiment-dir", str(experiment), "--frames-only"]) is None
    frames = sorted((experiment / "frames").glob("frame_*.png"))
    rounds = json.loads((experiment / "summary.json").read_text())["rounds"]
    assert len(frames) == 3 * rounds + 1 and frames[0].name == "frame_0001.png"
    assert not list(experiment.glob("federated_kmeans.*"))


def test_mp4_request_without_ffmpeg_falls_back_to_gif(tmp_path, capsys):
    assert animate.choose_output(tmp_path, str(tmp_path / "v.mp4"), have_ffmpeg=False) == tmp_path / "v.gif"
    assert "ffmpeg not found" in capsys.readouterr().err
    assert animate.choose_output(tmp_path, None, have_ffmpeg=True) == tmp_path / "federated_kmeans.mp4"


def test_a_folder_without_kmeans_logs_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="no global_means"):
        animate.main(["--experiment-dir", str(tmp_path)])
