"""Client id lists that stay short at any federation size: ranges, counts and exceptions.

``ranges([0, 1, 2, 5, 7, 8])`` is ``"0-2,5,7-8"`` (what rounds.jsonl and summary.json
keep instead of the full id list; :func:`parse_ranges` reads it back), and
``describe(present, expected)`` is the console's ``"9,998 of 10,000 clients; missing:
17, 4242"`` -- a count plus the ids that differ from the full set, at most
``limit`` of them, so that a log line stays short at any number of clients.
"""

from __future__ import annotations

from collections.abc import Iterable

#: most ids a console line names; the rest are counted ("... and 37 more")
NAMED_IDS = 10


def ranges(ids: Iterable[int]) -> str:
    """Sorted distinct ids as comma-separated runs: ``"0-2,5,7-8"`` (``""`` for none)."""
    ordered = sorted({int(i) for i in ids})
    parts: list[str] = []
    start = previous = None
    for value in ordered:
        if previous is not None and value == previous + 1:
            previous = value
            continue
        if start is not None:
            parts.append(str(start) if start == previous else f"{start}-{previous}")
        start = previous = value
    if start is not None:
        parts.append(str(start) if start == previous else f"{start}-{previous}")
    return ",".join(parts)


def parse_ranges(text: str) -> list[int]:
    """The ids of a :func:`ranges` string, sorted."""
    ids: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        low, _, high = part.partition("-")
        ids.extend(range(int(low), int(high or low) + 1))
    return ids


def named(ids: Iterable[int], limit: int = NAMED_IDS) -> str:
    """At most ``limit`` ids, then how many more: ``"17, 4242"`` / ``"0, 1, ... and 9,990 more"``."""
    ordered = sorted({int(i) for i in ids})
    shown = ", ".join(str(i) for i in ordered[:limit])
    rest = len(ordered) - limit
    return f"{shown} ... and {rest:,} more" if rest > 0 else shown


def describe(present: Iterable[int], expected: Iterable[int], noun: str = "clients", limit: int = NAMED_IDS) -> str:
    """``"10,000 of 10,000 clients"`` or ``"9,998 of 10,000 clients; missing: 17, 4242"``.

    Ids present but not expected are named as ``extra``; each list is cut at ``limit``.
    """
    have, want = {int(i) for i in present}, {int(i) for i in expected}
    text = f"{len(have):,} of {len(want):,} {noun}"
    missing, extra = want - have, have - want
    if missing:
        text += f"; missing: {named(missing, limit)}"
    if extra:
        text += f"; extra: {named(extra, limit)}"
    return text


def count_and_named(ids: Iterable[int], noun: str = "nodes", limit: int = NAMED_IDS) -> str:
    """``"2 nodes: 17, 4242"`` -- a list with no full set to compare with (dropped, rejected...)."""
    ordered = sorted({int(i) for i in ids})
    return f"{len(ordered):,} {noun}: {named(ordered, limit)}"
