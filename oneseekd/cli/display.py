"""Text other programs wrote, made safe for an operator's terminal.

Display names, keys, paths, file names, errors: the admin panel, a model's config.json or a
request file's name can carry escape sequences (clear the screen, set the title, hide text)
or line breaks that would forge output. Human output prints them escaped; `--json` prints
them verbatim (JSON escapes control characters itself).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from oneseekd.cli.context import table
from oneseekd.times import utc_text


def shown(value: object) -> str:
    """str(value), with every character that is not printable (control characters, line
    breaks, bidirectional overrides, unassigned code points) written as its Python escape."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text
    )


def shown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A table whose every cell is shown()."""
    return table(headers, [[shown(cell) for cell in row] for row in rows])


def shown_lines(text: str, indent: str = "") -> str:
    """Multi-line text (a trainer's error) kept on its lines, each line shown(). Only "\n"
    breaks a line: a carriage return, which would let a line overwrite another, is shown."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return "\n".join(indent + shown(line) for line in lines)


def iso(value: datetime | None) -> str | None:
    """A time for JSON output, in the one format; None for one unset or unreadable."""
    return utc_text(value) if value is not None else None


def columns(row: Mapping[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """The row's columns `names`, in this order, as --json prints them: times in the one
    format."""
    return {n: iso(v) if isinstance(v := row[n], datetime) else v for n in names}
