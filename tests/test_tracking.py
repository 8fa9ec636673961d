"""TensorBoard event files, communication cost, MLflow, the progress line and fedvq-compare.

The runs are real jobs (ServerApp + ClientApp on the in-process grid), tiny: 8x8
digits, 3 clients, 2 rounds, written once per module and shared by the tests.
"""

from __future__ import annotations

import html
import importlib.util
import json
import logging
import os
import re
import runpy
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from fedvq_app.client_app import app as client_app
from fedvq_app.errors import RunFailed
from fedvq_app.local_grid import full_run_config, run_local
from fedvq_app.server_app import app as server_app
from fedvq_app.tracking.compare import compare
from fedvq_app.tracking.compare import main as compare_main
from fedvq_app.tracking.experiment import progress_line, progress_text
from fedvq_app.tracking.scalars import round_scalars
from fedvq_app.tracking.sinks import SinkSet

ROOT = Path(__file__).resolve().parent.parent
TINY = {"dataset.size": 8, "num-server-rounds": 2, "train.local-epochs": 1}
HAS_MLFLOW = importlib.util.find_spec("mlflow") is not None
NODES = 3


def _rounds(folder: Path) -> list[dict]:
    return [json.loads(x) for x in (folder / "rounds.jsonl").read_text().splitlines() if x.strip()]


def _summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


class _Messages(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """fedavg, 2 rounds (TensorBoard on; MLflow file store when installed), fedprox, 1 round (TensorBoard off)."""
    from fedvq_app.local_grid import claim_server_identity

    claim_server_identity()
    root = tmp_path_factory.mktemp("runs")
    logs = root / "logs"
    mlruns = root / "mlruns"
    extra = {"tracking.mlflow-uri": str(mlruns)} if HAS_MLFLOW else {}
    grids = {}
    handler = _Messages()
    logger = logging.getLogger("flwr")
    logger.addHandler(handler)
    try:
        for method, options in (
            ("fedavg", extra),
            ("fedprox", {"tracking.tensorboard": False, "num-server-rounds": 1}),
        ):
            config = full_run_config(
                method=method, **{**TINY, "log-dir": str(logs), "experiment-name": method, **options}
            )
            grids[method] = run_local(server_app, client_app, NODES, config)
    finally:
        logger.removeHandler(handler)
    return {"logs": logs, "mlruns": mlruns, "grids": grids, "log": handler.messages}


# ---------------------------------------------------------------------- TensorBoard
def test_tensorboard_event_files_match_rounds_jsonl(runs):
    from tbparse import SummaryReader

    folder = runs["logs"] / "fedavg"
    assert list(folder.glob("events.out.tfevents.*")), "no event file in the experiment folder"
    frame = SummaryReader(str(folder)).scalars
    logged = {(row.tag, int(row.step)): float(row.value) for row in frame.itertuples()}
    rounds = _rounds(folder)
    expected = {(tag, r["round"]): value for r in rounds for tag, value in round_scalars(r).items()}
    assert set(logged) == set(expected)
    for key, value in expected.items():
        assert logged[key] == pytest.approx(value, rel=1e-6, abs=1e-6), key
    # the headline figures, recomputed from rounds.jsonl without the tag mapping
    for r in rounds:
        clients = r["evaluate"]["clients"].values()
        accuracies = [c["test-accuracy"] for c in clients]
        assert logged[("test-accuracy/mean", r["round"])] == pytest.approx(np.mean(accuracies), rel=1e-6)
        assert logged[("test-accuracy/min", r["round"])] == pytest.approx(min(accuracies), rel=1e-6)
        assert logged[("test-accuracy/max", r["round"])] == pytest.approx(max(accuracies), rel=1e-6)
        for metric in ("test-macro-f1", "test-balanced-accuracy", "own-test-accuracy", "test-loss"):
            values = [c[metric] for c in clients]
            assert logged[(f"{metric}/mean", r["round"])] == pytest.approx(np.mean(values), rel=1e-6), metric
        assert logged[("train/train-loss", r["round"])] == pytest.approx(r["train"]["aggregated"]["train-loss"])
        assert logged[("communication/sent_bytes", r["round"])] == r["communication"]["sent_bytes"]
    assert sorted({step for _, step in logged}) == [1, 2]
    # one tag per quantity: the clients' mean, not also the strategy's example-weighted copy of it
    tags = {tag for tag, _ in logged}
    assert {"test-accuracy/mean", "test-loss/mean", "own-test-accuracy/mean"} <= tags
    assert not tags & {"evaluate/test-accuracy", "evaluate/test-loss", "evaluate/own-test-accuracy"}
    # the config text holds the common keys and the method's own, not every method's
    texts = SummaryReader(str(folder)).text
    config = texts[texts.tag.str.startswith("config")].value.iloc[0]
    assert "`num-server-rounds`" in config and "`train.lr`" in config and "`method` | `'fedavg'`" in config
    assert not any(f"`{m}." in config for m in ("fedprox", "kmeans", "fedvq", "cfl", "fedloge", "codebook"))


def test_tensorboard_off_writes_no_event_file(runs):
    folder = runs["logs"] / "fedprox"
    assert (folder / "summary.json").is_file()
    assert not list(folder.glob("events.out.tfevents.*"))


def test_method_statistics_become_scalars():
    record = {
        "round": 3,
        "evaluate": {"clients": {}, "aggregated": {"gradient-dissimilarity": 4.5}},
        "train": {"aggregated": {"inertia": 12.0}},
        "strategy": {
            "num_clusters": 2,
            "split": True,
            "usage_ratio": 0.25,
            "clusters": {"0": [1, 2]},
            "cluster_stats": {"0": {"mean_norm": 0.3}},
            "aggregation": "kmeans",
            "round": 3,
        },
    }
    scalars = round_scalars(record)
    assert scalars["evaluate/gradient-dissimilarity"] == 4.5  # Gamma
    assert scalars["train/inertia"] == 12.0  # k-means
    assert scalars["strategy/num_clusters"] == 2 and scalars["strategy/split"] == 1.0  # CFL
    assert scalars["strategy/usage_ratio"] == 0.25  # FedVQ codebook usage
    assert scalars["strategy/cluster_stats/0/mean_norm"] == 0.3
    assert not any(tag.startswith(("strategy/clusters", "strategy/aggregation", "strategy/round")) for tag in scalars)


# ---------------------------------------------------------------------- communication
def test_communication_is_counted_per_round_and_client(runs):
    folder = runs["logs"] / "fedavg"
    grid = runs["grids"]["fedavg"]
    rounds, summary = _rounds(folder), _summary(folder)
    model_bytes = sum(v.nbytes for v in _model_arrays(json.loads((folder / "config.json").read_text())))
    for r in rounds:
        block = r["communication"]
        assert set(block["clients"]) == {"0", "1", "2"}
        assert block["sent_bytes"] == sum(c["sent"] for c in block["clients"].values())
        assert block["received_bytes"] == sum(c["received"] for c in block["clients"].values())
        assert block["per_client_mean_sent_bytes"] == pytest.approx(block["sent_bytes"] / NODES)
        last = r["round"] == len(rounds)
        for client in block["clients"].values():
            # FedAvg sends the whole model once a round (the next train message carries the evaluation,
            # evaluate-with-train) and twice in the last (train + evaluate-only); it gets it back once
            copies = 2 if last else 1
            assert copies * model_bytes <= client["sent"] < copies * model_bytes + 20_000
            assert model_bytes <= client["received"] < model_bytes + 20_000
        assert block["phases"]["train"]["sent"] > 0
        assert ("evaluate" in block["phases"]) == last
    communication = summary["communication"]
    assert communication["sent_bytes"] == sum(r["communication"]["sent_bytes"] for r in rounds)
    assert communication["mean_bytes_per_round"] == pytest.approx(communication["total_bytes"] / len(rounds))
    # the in-process grid counts what the clients send back with the same Flower counts
    per_node = {grid.contexts[n].node_config["partition-id"]: b for n, b in grid.reply_bytes.items()}
    assert {int(k): v["received"] for k, v in communication["clients"].items()} == per_node


def _model_arrays(config: dict) -> list[np.ndarray]:
    from fedvq_app.data.datasets import dataset_info
    from fedvq_app.registry import get_method, load_settings

    settings = load_settings(config)
    model = get_method(settings.method).build_model(settings, dataset_info(settings.dataset, settings.seed))
    return [t.detach().cpu().numpy() for t in model.state_dict().values()]


def test_kmeans_counts_its_rounds_and_its_set_up_phases(tmp_path):
    config = full_run_config(
        method="kmeans",
        **{"kmeans.max-rounds": 3, "kmeans.client-logs": False, "log-dir": str(tmp_path), "experiment-name": "km"},
    )
    run_local(server_app, client_app, 3, config)
    rounds, summary = _rounds(tmp_path / "km"), _summary(tmp_path / "km")
    assert rounds and all(r["communication"]["phases"].keys() == {"train"} for r in rounds)
    assert all(r["communication"]["received_bytes"] > 0 for r in rounds)
    outside = summary["communication"]["outside_rounds"]
    assert {"query", "evaluate"} <= set(outside["phases"])  # handshake, normalization, PCA, init; evaluation
    assert summary["communication"]["all_phases_sent_bytes"] > summary["communication"]["sent_bytes"]
    from tbparse import SummaryReader  # k-means has its own workflow: its rounds reach TensorBoard too

    frame = SummaryReader(str(tmp_path / "km")).scalars
    inertia = frame[frame.tag == "train/inertia"].sort_values("step")
    assert inertia.step.tolist() == [r["round"] for r in rounds]
    assert inertia.value.tolist() == pytest.approx([r["train"]["aggregated"]["inertia"] for r in rounds], rel=1e-6)
    assert "strategy/centroid_shift" in set(frame.tag)


# ---------------------------------------------------------------------- progress line
def test_progress_text_gives_seconds_per_round_and_eta():
    assert progress_text(2, 10, [3.0, 5.0]) == "4.0 s/round, ETA 0:32"
    assert progress_text(10, 10, [2.0]).endswith("ETA 0:00")
    assert progress_text(1, 2000, [10.0]).endswith("ETA 5:33:10")


def test_the_log_shows_progress_with_eta(runs):
    lines = [line for line in runs["log"] if "[fedvq] round " in line]
    assert any("round 1/2 (50 %)" in line and " s/round, ETA " in line and " MB | " in line for line in lines)
    assert any("round 2/2 (100 %)" in line and "ETA 0:00" in line for line in lines)


def test_the_log_opens_with_one_header_and_keeps_round_lines_short(runs):
    fedavg = runs["logs"] / "fedavg"
    headers = [line for line in runs["log"] if "-> experiment folder" in line]
    assert headers == [
        f"[fedvq] fedavg on digits, {NODES} clients, 2 rounds -> experiment folder {fedavg}",
        f"[fedvq] fedprox on digits, {NODES} clients, 1 rounds -> experiment folder {runs['logs'] / 'fedprox'}",
    ]
    first = runs["log"].index(headers[0])
    assert not any("[fedvq] round" in line for line in runs["log"][:first])  # the header comes first
    rounds = [line for line in runs["log"] if line.startswith("[fedvq] round ")]
    assert len(rounds) == 3 and all(len(line) < 120 for line in rounds), rounds
    fedavg_rounds = _rounds(fedavg)
    for line, record in zip(rounds, fedavg_rounds, strict=False):
        spread = record["evaluate"]["summary"]
        assert f"acc {100 * spread['mean_accuracy']:.2f} %" in line
        # one global model, one test set: every client scores the same, so no min/max
        assert spread["min_accuracy"] == spread["max_accuracy"] and "min " not in line and "max " not in line


def test_min_and_max_are_shown_only_when_the_clients_differ():
    record = {
        "round": 3,
        "train": {"aggregated": {"train-loss": 0.5}},
        "evaluate": {
            "clients": {"0": {"test-accuracy": 0.5}, "1": {"test-accuracy": 0.75}},
            "summary": {"mean_accuracy": 0.625, "min_accuracy": 0.5, "max_accuracy": 0.75, "num_clients": 2},
        },
        "dropped": [],
        "rejected": [],
        "communication": {"total_bytes": 2_500_000},
    }
    line = progress_line(record, 10, [2.0])
    expected = "[fedvq] round 3/10 (30 %) | loss 0.500 | acc 62.50 % (min 50.0, max 75.0) | 2.50 MB | 2.0 s/round"
    assert line == expected + ", ETA 0:14"
    record["evaluate"]["summary"].update(min_accuracy=0.625, max_accuracy=0.625)
    assert "| acc 62.50 % |" in progress_line(record, 10, [2.0])


def test_a_sink_that_breaks_is_dropped_and_the_run_goes_on(caplog):
    class Broken:
        def log_round(self, record, scalars):
            raise ConnectionError("tracking server went away")

    class Counting:
        calls = 0

        def log_round(self, record, scalars):
            Counting.calls += 1

    sinks = SinkSet([Broken(), Counting()])
    for rnd in (1, 2):
        sinks.log_round({"round": rnd, "evaluate": {"clients": {}}})
    assert Counting.calls == 2 and len(sinks.sinks) == 1
    assert "Broken stopped logging (ConnectionError: tracking server went away)" in caplog.text


# ---------------------------------------------------------------------- fedvq-compare
def test_compare_writes_markdown_png_and_self_contained_html(runs, tmp_path):
    files = compare([runs["logs"]], tmp_path / "cmp", "tiny")
    markdown = files["markdown"].read_text()
    fedavg, fedprox = _summary(runs["logs"] / "fedavg"), _summary(runs["logs"] / "fedprox")
    for summary in (fedavg, fedprox):
        assert f"{100 * summary['final']['accuracy']:.2f}" in markdown
        assert f"{100 * summary['final']['own_test_accuracy']:.2f}" in markdown
    # config differences: method and the tracking switch differ, folder names are not reported
    assert "| `method` | `fedavg` | `fedprox` |" in markdown
    assert "| `tracking.tensorboard` | `True` | `False` |" in markdown
    assert "| `num-server-rounds` | `2` | `1` |" in markdown
    assert "experiment-name" not in markdown
    # runs are named by method + the differing keys that change the computation (not tracking.*)
    assert "| key | fedavg (num-server-rounds=2) | fedprox (num-server-rounds=1) |" in markdown
    assert "- fedavg (num-server-rounds=2): `" + str(runs["logs"] / "fedavg") in markdown
    headings = [line for line in markdown.splitlines() if line.startswith("## ")]
    assert headings == [
        "## Final round",
        "## Communication",
        "## Accuracy and loss per round",
        "## Traffic",
        "## Config differences",
        "## Runs",
    ]
    spread = max(fedavg["final"]["per_client_accuracy"]) - min(fedavg["final"]["per_client_accuracy"])
    table = json.loads(files["json"].read_text())["runs"]
    assert table[0]["label"] == "fedavg (num-server-rounds=2)" and table[0]["folder"] == "fedavg"
    assert table[0]["spread"] == pytest.approx(spread)
    assert table[0]["bytes_per_round"] == fedavg["communication"]["mean_bytes_per_round"]
    for key in ("curves", "communication"):
        assert files[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = files["html"].read_text()
    assert page.count('src="data:image/png;base64,') == 2
    assert "http://" not in page and "https://" not in page  # nothing to fetch
    assert "<script" not in page and "data-plots" not in page  # no test hook in what users get
    for summary in (fedavg, fedprox):  # the same figures as the Markdown, from the same template
        assert f">{100 * summary['final']['accuracy']:.2f}</" in page
    assert "<h2>Accuracy and loss per round</h2>" in page and "<td>fedavg (num-server-rounds=2)</td>" in page
    assert not (runs["logs"] / "fedavg" / "report.md").exists()  # experiment folders are only read


def test_compare_refuses_what_it_cannot_read(runs, tmp_path, capsys):
    assert compare_main([str(tmp_path / "nothing")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert compare_main([str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    error = capsys.readouterr().err
    assert "holds no experiment folder" in error and error.count("\n") == 1
    inside = runs["logs"] / "fedavg" / "cmp"
    assert compare_main([str(runs["logs"]), "--out", str(inside)]) == 2
    assert "lies in experiment folder" in capsys.readouterr().err and not inside.exists()


@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")
def test_compare_runs_as_a_module_and_is_a_console_script(runs, tmp_path, monkeypatch, capsys):
    argv = ["compare", str(runs["logs"] / "fedavg"), str(runs["logs"] / "fedprox"), "--out", str(tmp_path / "m")]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as done:  # what python -m fedvq_app.tracking.compare runs
        runpy.run_module("fedvq_app.tracking.compare", run_name="__main__", alter_sys=True)
    assert done.value.code == 0
    assert "report in" in capsys.readouterr().out
    assert (tmp_path / "m" / "report.html").is_file()
    assert 'fedvq-compare = "fedvq_app.tracking.compare:main"' in (ROOT / "pyproject.toml").read_text()


def _browser() -> str | None:
    return next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


#: appended by the test to a copy of the report (the report itself carries no hook): what the browser
#: made of the page, written into the DOM that --dump-dom prints
PROBE = """<script>
window.addEventListener('load', function () {
  var images = Array.prototype.filter.call(document.images, function (i) { return i.complete && i.naturalWidth > 0; });
  var out = document.createElement('pre');
  out.id = 'probe';
  out.textContent = JSON.stringify({
    decoded: images.map(function (i) { return [i.alt, i.naturalWidth, i.naturalHeight]; }),
    headings: Array.prototype.map.call(document.querySelectorAll('h1, h2'), function (h) { return h.textContent; }),
    firstColumn: Array.prototype.map.call(document.querySelectorAll('table')[0].rows, function (r) {
      return r.cells[0].textContent; }),
    widestTable: Math.max.apply(null, Array.prototype.map.call(document.querySelectorAll('table'), function (t) {
      return t.getBoundingClientRect().right; })),
    viewport: window.innerWidth
  });
  document.body.appendChild(out);
});
</script>"""


def _chromium(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    return subprocess.run([_browser(), *flags, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.browser
@pytest.mark.skipif(_browser() is None, reason="no headless Chromium installed (apt-get install chromium)")
def test_the_html_report_renders_in_a_real_browser(runs, tmp_path):
    from PIL import Image

    files = compare([runs["logs"]], tmp_path / "cmp", "tiny")
    page = files["html"].read_text()
    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("</body>", PROBE + "</body>"))
    dom = _chromium(["--window-size=1280,1800", "--virtual-time-budget=5000", "--dump-dom", probed.as_uri()], tmp_path)
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom.stdout, re.S)
    assert found, dom.stderr[-2000:]
    seen = json.loads(html.unescape(found.group(1)))
    # both plots decoded at their real size (curves 12x7.5 in, communication 12x4.5 in, at 100 dpi)
    assert seen["decoded"] == [["Accuracy and loss per round", 1200, 750], ["Traffic", 1200, 450]]
    assert seen["headings"] == [
        "tiny",
        "Final round",
        "Communication",
        "Accuracy and loss per round",
        "Traffic",
        "Config differences",
        "Runs",
    ]
    assert seen["firstColumn"] == ["run", "fedavg (num-server-rounds=2)", "fedprox (num-server-rounds=1)"]
    assert seen["widestTable"] <= seen["viewport"]  # the final table fits a laptop window
    shot = tmp_path / "report.png"
    _chromium(["--window-size=1280,1800", f"--screenshot={shot}", files["html"].as_uri()], tmp_path)
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=float)
    assert pixels.shape[:2] == (1800, 1280)
    assert pixels.std() > 20  # text, tables and plots, not a blank page
    coloured = np.abs(pixels[..., 0] - pixels[..., 2]) > 60  # plot lines / highlighted cells, not grey text
    assert coloured.mean() > 0.001
    if os.environ.get("FEDVQ_REPORT_SCREENSHOT"):  # keep the picture for a person to look at
        shutil.copy(shot, os.environ["FEDVQ_REPORT_SCREENSHOT"])


# ---------------------------------------------------------------------- MLflow
def _check_mlflow_run(client, run_name: str, folder: Path) -> None:
    experiment = client.get_experiment_by_name("fedvq")
    found = client.search_runs([experiment.experiment_id], filter_string=f"attributes.run_name = '{run_name}'")
    assert len(found) == 1
    run = found[0]
    assert run.info.status == "FINISHED"
    config = json.loads((folder / "config.json").read_text())
    assert run.data.params == {k: str(v) for k, v in config.items()}
    rounds = _rounds(folder)
    history = client.get_metric_history(run.info.run_id, "test-accuracy/mean")
    assert [m.step for m in history] == [r["round"] for r in rounds]
    for metric, record in zip(history, rounds, strict=True):
        assert metric.value == pytest.approx(record["evaluate"]["summary"]["mean_accuracy"])
    summary = _summary(folder)
    assert run.data.metrics["final/accuracy"] == pytest.approx(summary["final"]["accuracy"])
    assert run.data.metrics["communication_total/total_bytes"] == summary["communication"]["total_bytes"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.json", "rounds.jsonl", "summary.json", "accuracy.png"} <= artifacts


@pytest.mark.skipif(not HAS_MLFLOW, reason="the [mlflow] extra is not installed")
def test_mlflow_file_store_gets_params_metrics_and_artifacts(runs):
    from mlflow import MlflowClient

    _check_mlflow_run(MlflowClient(runs["mlruns"].as_uri()), "fedavg", runs["logs"] / "fedavg")


@pytest.mark.skipif(not HAS_MLFLOW, reason="the [mlflow] extra is not installed")
def test_an_unreachable_mlflow_server_stops_the_run_before_any_folder(tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    config = full_run_config(
        **{
            **TINY,
            "log-dir": str(tmp_path / "logs"),
            "experiment-name": "x",
            "tracking.mlflow-uri": f"http://127.0.0.1:{_free_port()}",
        }
    )
    with pytest.raises(RunFailed):
        run_local(server_app, client_app, 2, config)
    errors = [r.getMessage() for r in caplog.records if "configuration error" in r.getMessage()]
    assert len(errors) == 1 and "tracking.mlflow-uri" in errors[0] and "\n" not in errors[0]
    assert not (tmp_path / "logs" / "x").exists()


def _healthy(url: str) -> bool:
    """Whether the MLflow server answers its health check (False while it is not listening yet)."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """A real ``mlflow server`` on 127.0.0.1 (SQLite backend, proxied artifacts); stopped by its PID."""
    executable = shutil.which("mlflow")
    if executable is None or importlib.util.find_spec("sqlalchemy") is None:
        pytest.skip("mlflow server needs the mlflow CLI and SQLAlchemy")
    port = _free_port()
    log = (tmp_path / "server.log").open("w")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen(
        [
            executable,
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'mlflow.db'}",
            "--artifacts-destination",
            str(tmp_path / "artifacts"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while not _healthy(url):
            if server.poll() is not None or time.time() > deadline:
                pytest.fail("mlflow server did not start: " + (tmp_path / "server.log").read_text()[-1500:])
            time.sleep(1)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and the uvicorn worker it started, nothing else
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
        log.close()


@pytest.mark.skipif(not HAS_MLFLOW, reason="the [mlflow] extra is not installed")
def test_mlflow_tracking_server_gets_params_metrics_and_artifacts(mlflow_server, tmp_path):
    from mlflow import MlflowClient

    config = full_run_config(
        **{
            **TINY,
            "num-server-rounds": 1,
            "log-dir": str(tmp_path / "logs"),
            "experiment-name": "served",
            "tracking.mlflow-uri": mlflow_server,
            "tracking.tensorboard": False,
        }
    )
    run_local(server_app, client_app, 2, config)
    _check_mlflow_run(MlflowClient(mlflow_server), "served", tmp_path / "logs" / "served")
    assert (tmp_path / "artifacts").is_dir()  # uploaded through the server, stored where it keeps artifacts
