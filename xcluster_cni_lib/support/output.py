"""The one output renderer of the ``xcluster-cni`` commands: ``-o table`` and ``-o json``.

A command builds its result once as plain values and hands them here: ``render_json``
for scripts (indented, one document, what the commands printed before ``-o`` existed)
and ``render_table`` for people (left-aligned columns, two spaces apart, an upper-case
header). ``choose_format`` is the rule for a command run without ``-o``: a table on a
terminal, else the command's machine default (documented in ``docs/cli.md``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

FORMATS = ("table", "json")


def choose_format(requested: str | None, *, tty: bool, default: str = "json") -> str:
    """The format to print: ``requested`` when given, else ``table`` on a terminal and
    ``default`` otherwise (``json`` for the commands scripts read)."""
    if requested is not None:
        if requested not in FORMATS:
            raise ValueError(
                f"unknown output format {requested!r}: use one of {', '.join(FORMATS)}"
            )
        return requested
    return "table" if tty else default


def render_json(value: object) -> str:
    """One indented JSON document (no trailing newline)."""
    return json.dumps(value, indent=2)


def cell(value: object) -> str:
    """A table cell: ``-`` for None or an empty list, lists joined with commas."""
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) or "-"
    return str(value)


def render_table(
    header: Sequence[str], rows: Iterable[Sequence[object]], *, upper: bool = True
) -> list[str]:
    """Left-aligned columns two spaces apart, the header first (in upper case unless
    ``upper`` is false); no trailing spaces. A table without rows is its header alone."""
    body = [[cell(c) for c in row] for row in rows]
    head = [h.upper() if upper else h for h in header]
    widths = [max(len(c) for c in col) for col in zip(head, *body, strict=False)]
    return [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)).rstrip()
        for row in [head, *body]
    ]
