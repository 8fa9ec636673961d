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


def test_readme_shows_another_method_on_the_same_command():
    text = (ROOT / "README.md").read_text()
    assert "--run-config \"method='fedvq'\"" in text


def test_ci_installs_into_its_own_new_environment_and_checks_declarations():
    ci = (ROOT / ".ci" / "run").read_text()
    venv, install = ci.index("-m venv"), ci.index('pip install --quiet -e ".[dev]"')
    assert venv < install, "the project must be installed into the venv the run created"
    assert 'rm -rf "$CI_VENV"' in ci
    for step in ("check_declared_deps.py fedvq_app", "ruff check", "ruff format --check", "python -m pytest tests"):
        assert step in ci, step


def test_ci_holds_the_import_layers_and_the_strategy_contract():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "lint-imports" in ci and "mypy" in ci and "tests/typecheck_strategy_contract.py" in ci
