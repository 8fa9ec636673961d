"""The README's promises: generated tables are current, Quickstart commands are the real ones."""

from __future__ import annotations

from pathlib import Path

from fedvq_app.config_reference import render

ROOT = Path(__file__).resolve().parent.parent


def test_generated_tables_are_current():
    text = (ROOT / "README.md").read_text()
    assert render(text) == text, "run: python -m fedvq_app.config_reference --write README.md"


def test_quickstart_installs_runs_and_tests():
    text = (ROOT / "README.md").read_text()
    assert 'pip install -e ".[dev]"' in text
    assert "flwr run . --stream" in text
    assert "python -m pytest tests" in text
    assert "python -m pytest tests" in (ROOT / ".ci" / "run").read_text()
