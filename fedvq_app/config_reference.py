"""Generate the README's method table and config reference from the code.

``python -m fedvq_app.config_reference --write README.md`` refreshes the blocks
between the ``<!-- methods -->`` and ``<!-- config-reference -->`` markers; a test
fails when they are stale, so the README can never drift from the options.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from fedvq_app.config import COMMON_SECTIONS
from fedvq_app.registry import get_method, method_names

BLOCKS = ("methods", "config-reference")


def _cell(text: str) -> str:
    """Escape what would break a Markdown table cell."""
    return text.replace("|", "\\|")


def _allowed(meta) -> str:
    if meta["choices"]:
        return ", ".join(f"`{c}`" for c in meta["choices"])
    low, high = meta["minimum"], meta["maximum"]
    op = ">" if meta["exclusive_minimum"] else ">="
    parts = ([f"{op} {low}"] if low is not None else []) + ([f"<= {high}"] if high is not None else [])
    return " and ".join(parts)


def _rows(cls, method: str = "") -> list[str]:
    rows = []
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if "key" not in meta:
            continue
        default = f'`"{f.default}"`' if isinstance(f.default, str) else f"`{str(f.default).lower()}`"
        scope = f" ({method} only)" if method else ""
        rows.append(f"| `{meta['key']}` | {default} | {_allowed(meta)} | {_cell(meta['help'])}{scope} |")
    return rows


def config_reference() -> str:
    """Markdown table of every run-config key: default, allowed values, meaning."""
    lines = ["| key | default | allowed | meaning |", "|---|---|---|---|"]
    for cls in COMMON_SECTIONS:
        lines += _rows(cls)
    for name in method_names():
        spec = get_method(name)
        if spec.options_type is not None:
            lines += _rows(spec.options_type, name)
    return "\n".join(lines)


def method_table() -> str:
    """Markdown table of the registered methods."""
    lines = ["| method | what it does | docs |", "|---|---|---|"]
    for name in method_names():
        doc = Path("docs") / f"{name}.md"
        link = f"[{doc}]({doc})" if (Path(__file__).resolve().parent.parent / doc).is_file() else "-"
        lines.append(f"| `{name}` | {_cell(get_method(name).summary)} | {link} |")
    return "\n".join(lines)


def render(text: str) -> str:
    """``text`` with every generated block replaced by its current content."""
    content = {"methods": method_table(), "config-reference": config_reference()}
    for block in BLOCKS:
        start, end = f"<!-- {block}:start -->", f"<!-- {block}:end -->"
        if start not in text or end not in text:
            raise ValueError(f"README lacks the markers {start} ... {end}")
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = f"{head}{start}\n{content[block]}\n{end}{tail}"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path, help="update this README in place")
    args = parser.parse_args()
    if args.write:
        args.write.write_text(render(args.write.read_text()))
    else:
        print(method_table() + "\n\n" + config_reference())


if __name__ == "__main__":
    main()
