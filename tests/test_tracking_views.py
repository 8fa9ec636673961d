"""What users look at, checked without a run: plot content, head/medium/tail pooling, report escaping.

Synthetic rounds.jsonl records (the tracker's format), so every test takes milliseconds
to a second; tests/test_tracking.py checks the same views on real runs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from fedvq_app.tracking import plots
from fedvq_app.tracking.compare import compare, markdown_code, markdown_text, render_html, render_markdown
from fedvq_app.tracking.fedloge_plots import NoGroupFigures, group_report
from fedvq_app.tracking.groups import SUMMARY_KEY, head_medium_tail

SUMMARY = {"method": "fedprox", "dataset": "digits", "num_clients": 2}


def _record(rnd: int, clients: dict[str, dict], loss: float = 1.0) -> dict:
    return {
        "round": rnd,
        "train": {"aggregated": {"train-loss": loss}, "clients": {}},
        "evaluate": {"aggregated": {}, "clients": clients, "summary": {}},
        "dropped": [],
        "rejected": [],
    }


@pytest.fixture
def figures(monkeypatch):
    """The figures plots.save wrote, kept open for inspection (save closes them otherwise)."""
    kept, close = [], plots.plt.close
    monkeypatch.setattr(plots.plt, "close", kept.append)
    yield kept
    for fig in kept:
        close(fig)


def _round_ticks(ax) -> list[float]:
    low, high = ax.get_xlim()
    return [t for t in ax.get_xticks() if low <= t <= high]


def test_one_global_model_draws_one_line_not_a_line_per_client(tmp_path, figures):
    same = [_record(r, {"0": {"test-accuracy": a}, "1": {"test-accuracy": a}}) for r, a in ((1, 0.25), (2, 0.5))]
    plots.accuracy_curves(tmp_path / "a.png", same, plots.run_title(SUMMARY))
    ax = figures[-1].axes[0]
    assert [line.get_label() for line in ax.lines] == ["all 2 clients (identical scores)"]
    assert list(ax.lines[0].get_ydata()) == [25.0, 50.0]  # percent
    assert ax.lines[0].get_marker() == "o"
    assert figures[-1].get_suptitle() == "fedprox on digits, 2 clients"
    assert all(float(t).is_integer() for t in _round_ticks(ax)) and (tmp_path / "a.png").stat().st_size > 0

    apart = [_record(r, {"0": {"test-accuracy": 0.2 * r}, "1": {"test-accuracy": 0.3 * r}}) for r in (1, 2, 3)]
    plots.accuracy_curves(tmp_path / "b.png", apart, "x")
    ax = figures[-1].axes[0]
    assert [line.get_label() for line in ax.lines] == ["client 0", "client 1", "mean"]
    assert list(ax.lines[2].get_ydata()) == pytest.approx([25.0, 50.0, 75.0])
    assert all(line.get_marker() not in (None, "None", "") for line in ax.lines)
    assert all(float(t).is_integer() for t in _round_ticks(ax))


def test_every_standard_plot_names_method_dataset_and_clients(tmp_path, figures):
    clients = {
        str(p): {"test-accuracy": 0.5 + 0.1 * p, "test-loss": 1.0, "test-class-accuracy": [0.5, 1.0]} for p in (0, 1)
    }
    rounds = [_record(1, clients), _record(2, clients, 0.5)]
    summary = {**SUMMARY, "final": {"partition_ids": [0, 1], "round": 2, "accuracy": 0.55}, "best": {"round": 1}}
    written = plots.standard_plots(tmp_path, rounds, {0: [3, 1], 1: [1, 3]}, summary)
    assert {p.name for p in written} == {
        "label_distribution.png",
        "accuracy.png",
        "loss.png",
        "client_accuracy_table.png",
        "class_accuracy.png",
    }
    assert [f.get_suptitle() for f in figures] == ["fedprox on digits, 2 clients"] * 5


def test_client_table_draws_what_its_docstring_promises():
    clients = {
        "0": {"val-accuracy": 0.5, "test-accuracy": 0.6, "own-test-accuracy": 0.7},
        "1": {"val-accuracy": 0.8, "test-accuracy": 0.4, "own-test-accuracy": 0.9},
    }
    earlier = {"0": {"test-accuracy": 0.65}, "1": {"test-accuracy": 0.3}}
    rounds = [_record(1, earlier), _record(2, clients)]
    summary = {
        "final": {
            "partition_ids": [0, 1],
            "round": 2,
            "accuracy": 0.5,
            "val_accuracy": 0.65,
            "own_test_accuracy": 0.8,
        },
        "best": {"round": 2, "accuracy": 0.5},
    }
    header, rows = plots.client_rows(rounds, summary, {0: [3, 0], 1: [0, 1]})
    assert header == ["client", "data share", "val acc.", "test acc.", "own-dist. acc.", "best round (test acc.)"]
    assert rows == [
        ["0", "75.0 %", "50.00 %", "60.00 %", "70.00 %", "1 (65.00 %)"],
        ["1", "25.0 %", "80.00 %", "40.00 %", "90.00 %", "2 (40.00 %)"],
        ["mean", "100 %", "65.00 %", "50.00 %", "80.00 %", "2 (50.00 %)"],
    ]


def _counts_client(correct_own, total_own, correct_test, total_test) -> dict:
    return {
        "own-test-class-correct": correct_own,
        "own-test-class-total": total_own,
        "test-class-correct": correct_test,
        "test-class-total": total_test,
    }


def test_head_medium_tail_pools_the_last_rounds_per_class_counts():
    # class 0 holds 80 % of the training samples (head), class 1 15 % (medium), class 2 5 % (tail)
    label_counts = {0: [70, 10, 0], 1: [10, 5, 5]}
    clients = {
        "0": _counts_client([7, 1, 0], [8, 2, 0], [9, 5, 2], [10, 10, 10]),
        "1": _counts_client([1, 0, 1], [2, 1, 2], [10, 5, 0], [10, 10, 10]),
    }
    stale = {p: _counts_client([0, 0, 0], [1, 1, 1], [0, 0, 0], [1, 1, 1]) for p in ("0", "1")}
    report = head_medium_tail([_record(1, stale), _record(2, clients)], label_counts)
    assert report["round"] == 2 and report["groups"] == {"head": [0], "medium": [1], "tail": [2]}
    model, balanced = report["modes"]["model"], report["modes"]["model-balanced"]
    # client means of each client's accuracy; a client without tail rows does not count for the tail
    assert model["overall"] == pytest.approx((8 / 10 + 2 / 5) / 2)
    assert model["head"] == pytest.approx((7 / 8 + 1 / 2) / 2)
    assert model["medium"] == pytest.approx((1 / 2 + 0 / 1) / 2)
    assert model["tail"] == pytest.approx(1 / 2)
    assert model["class_total"] == [10, 3, 2] and model["class_accuracy"] == pytest.approx([0.8, 1 / 3, 0.5])
    assert balanced["overall"] == pytest.approx((16 / 30 + 15 / 30) / 2)
    assert balanced["tail"] == pytest.approx((2 / 10 + 0 / 10) / 2)
    # no per-class counts (k-means, folders of older versions): nothing to store
    old = {p: {"test-accuracy": 0.5} for p in ("0", "1")}
    assert head_medium_tail([_record(1, old)], label_counts) == {}
    assert head_medium_tail([_record(2, clients)], {}) == {}
    assert head_medium_tail([_record(2, clients)], {0: [1, 2], 1: [1, 2, 3]}) == {}


def test_group_report_reads_the_stored_figures_and_names_folders_without_them(tmp_path):
    figures = {"model": {"overall": 0.5, "head": 0.6, "medium": 0.4, "tail": None}}
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "summary.json").write_text(json.dumps({"method": "fedavg", SUMMARY_KEY: {"modes": figures}}))
    assert group_report(tmp_path / "new") == figures
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "summary.json").write_text(json.dumps({"method": "fedavg", "final": {}}))
    with pytest.raises(NoGroupFigures, match="no 'head_medium_tail' figures"):
        group_report(tmp_path / "old")


def test_report_text_is_escaped_for_markdown_and_html():
    assert markdown_text("a|b *c* <x>") == "a\\|b \\*c\\* \\<x\\>"
    assert markdown_code("x|y") == "`x\\|y`" and markdown_code(None) == "–" and markdown_code("") == '`""`'
    assert markdown_code("a`b") == "``a`b``"
    model = {
        "title": "<script>alert(1)</script> | run",
        "date": "today",
        "runs": [{"label": "fedavg (x=<b>)", "method": "fedavg", "path": "/p"}],
        "final": {
            "columns": ["accuracy %"],
            "rows": [{"label": "fedavg (x=<b>)", "cells": [{"text": "1", "best": 0}]}],
        },
        "communication": {"columns": ["total"], "rows": [{"label": "fedavg (x=<b>)", "cells": ["1 B"]}]},
        "differences": {"labels": ["fedavg (x=<b>)"], "rows": [{"key": "x", "cells": ["a|<b>"]}]},
        "plots": [],
    }
    markdown = render_markdown(model)
    assert "| `x` | `a\\|<b>` |" in markdown
    page = render_html(model, Path("."))
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; | run" in page
    assert "<td><code>a|&lt;b&gt;</code></td>" in page and "<td>fedavg (x=&lt;b&gt;)</td>" in page


def test_compare_still_reads_folders_of_older_versions(tmp_path):
    """A folder from before the per-class counts, the short names and head_medium_tail."""
    for name, acc in (("fedavg_old", 0.5), ("fedprox_old", 0.6)):
        folder = tmp_path / "logs" / name
        folder.mkdir(parents=True)
        method = name.split("_")[0]
        clients = {"0": {"test-accuracy": acc, "test-loss": 1.0}, "1": {"test-accuracy": acc + 0.1, "test-loss": 1.2}}
        record = _record(1, clients)
        record["evaluate"]["summary"] = {"mean_accuracy": acc + 0.05, "min_accuracy": acc, "max_accuracy": acc + 0.1}
        (folder / "rounds.jsonl").write_text(json.dumps(record) + "\n")
        (folder / "config.json").write_text(json.dumps({"method": method, "seed": 1}))
        final = {"accuracy": acc + 0.05, "per_client_accuracy": [acc, acc + 0.1], "min_client_accuracy": acc}
        (folder / "summary.json").write_text(json.dumps({"method": method, "rounds": 1, "final": final}))
    files = compare([tmp_path / "logs"], tmp_path / "cmp")
    markdown = files["markdown"].read_text()
    assert "| fedavg | **55.00** |" not in markdown and "| fedavg | 55.00 |" in markdown
    assert "| fedprox | **65.00** |" in markdown
    assert [r["folder"] for r in json.loads(files["json"].read_text())["runs"]] == ["fedavg_old", "fedprox_old"]


def test_runs_with_the_same_name_are_numbered(tmp_path):
    source = tmp_path / "logs"
    for seed in (1, 2):
        folder = source / f"run{seed}"
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps({"method": "fedavg", "tracking.tensorboard": seed == 1}))
        (folder / "summary.json").write_text(json.dumps({"method": "fedavg", "final": {}}))
    shutil.copytree(source / "run1", source / "run3")
    files = compare([source], tmp_path / "cmp")
    labels = [r["label"] for r in json.loads(files["json"].read_text())["runs"]]
    assert labels == ["fedavg #1", "fedavg #2", "fedavg #3"]  # tracking.* does not name a run
    assert np.all([(tmp_path / "cmp" / f).is_file() for f in ("report.md", "report.html", "curves.png")])


def test_tensorboard_logs_each_number_once():
    from fedvq_app.tracking.scalars import round_scalars

    record = {
        "round": 2,
        "train": {"aggregated": {"train-loss": 0.5}},
        "evaluate": {
            "aggregated": {"test-accuracy": 0.61, "generic-overall-accuracy": 0.7, "generic-tail-accuracy": 0.0},
            "clients": {"0": {"test-accuracy": 0.6}, "1": {"test-accuracy": 0.7}},
        },
        "strategy": {
            "modes": {"generic": {"overall": 0.7, "tail": 0.0}, "global": {"overall": 0.0}},
            "usage_ratio": 0.7,
        },
    }
    tags = round_scalars(record)
    assert tags["test-accuracy/mean"] == pytest.approx(0.65) and "evaluate/test-accuracy" not in tags
    assert tags["evaluate/generic-overall-accuracy"] == 0.7 and "strategy/modes/generic/overall" not in tags
    # the clients' mean under another name: logged once, as <metric>/mean
    record["evaluate"]["clients"] = {"0": {"generic-accuracy": 0.6}, "1": {"generic-accuracy": 0.8}}
    tags = round_scalars(record)
    assert tags["generic-accuracy/mean"] == pytest.approx(0.7) and "evaluate/generic-overall-accuracy" not in tags
    assert "strategy/modes/generic/overall" not in tags
    assert tags["evaluate/generic-tail-accuracy"] == 0.0
    assert "strategy/modes/generic/tail" not in tags
    # same value, other quantity: kept (its name is not in the aggregated metric's name)
    assert tags["strategy/modes/global/overall"] == 0.0 and tags["strategy/usage_ratio"] == 0.7


def test_many_clients_share_one_legend_entry(tmp_path, figures):
    rounds = [_record(r, {str(p): {"test-accuracy": 0.01 * p * r} for p in range(12)}) for r in (1, 2)]
    plots.accuracy_curves(tmp_path / "a.png", rounds)
    labels = figures[-1].axes[0].get_legend_handles_labels()[1]
    assert labels == ["each client", "min-max", "mean"]
