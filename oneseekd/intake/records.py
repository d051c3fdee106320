"""A dataset's records, read one way by intake and by the trainer (no torch).

Intake reads the whole file with `scan(path, keep=False)` before a request is queued, and the
trainer reads it again with `keep=True`: the same reader and the same validator, so the two can
never disagree about what a record is, where it is, or whether it is good.

- JSONL is read as bytes and split on `\\n` only. `str.splitlines()` also splits on U+2028,
  U+2029, U+0085, U+001C-U+001E (and \\v, \\f), which may stand raw inside a JSON string.
  Control characters inside strings are taken as they are (`json.loads(strict=False)`).
- It streams: one line at a time, at most MAX_LINE_BYTES each, so a dataset of any size is
  checked whole in little memory. Invalid UTF-8 is named by its line and byte offset.
- A JSON array is parsed whole, so one over MAX_ARRAY_BYTES is refused: write it as JSONL.
- Every record is judged by `record_problem`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

MAX_LINE_BYTES = 64 * 1024 * 1024
MAX_ARRAY_BYTES = 256 * 1024 * 1024
SHOWN_PROBLEMS = 20
JSON_WHITESPACE = " \t\r\n"
CHUNK = 64 * 1024

# What a chat turn may be. `tool` is refused whatever the model: intake cannot see the chat
# template a run will use, and a template without tool support drops or garbles those turns.
ROLES = ("system", "user", "assistant")
SHAPES = (
    'has none of the supported shapes: {"text": ...}, {"instruction": ..., '
    '"output": ...} or {"messages": [{"role": ..., "content": ...}]}'
)


def record_problem(record: Any) -> str | None:
    """Why one dataset record is not of a supported shape, or None."""
    if not isinstance(record, dict):
        return f"is a JSON {type(record).__name__}, not an object"
    # an empty text or response encodes to an eos alone: nothing to predict, a NaN loss
    if isinstance(record.get("text"), str):
        return None if record["text"].strip() else "has an empty text: nothing to train on"
    if isinstance(record.get("instruction"), str) and isinstance(record.get("output"), str):
        if not record["output"].strip():
            return "has an empty output: nothing to train on"
        return None
    messages = record.get("messages")
    if (
        isinstance(messages, list)
        and messages
        and all(
            isinstance(m, dict)
            and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str)
            for m in messages
        )
    ):
        return chat_problem(messages)
    return SHAPES


def chat_problem(messages: list[dict[str, Any]]) -> str | None:
    """Why a chat cannot be trained on: a role outside ROLES, an empty assistant turn (an
    empty response, like an empty output), or the assistant speaking before anyone asked."""
    for number, message in enumerate(messages, start=1):
        role = message["role"]
        if role == "tool":
            return (
                f"has a tool turn (message {number}); oneseekd trains on system, user and "
                "assistant turns only: leave tool turns out"
            )
        if role not in ROLES:
            return (
                f"has an unknown role {role!r} (message {number}); the roles are system, user "
                "and assistant"
            )
        if role == "assistant" and not message["content"].strip():
            return f"has an empty assistant turn (message {number}): nothing to train on"
    first = next((m for m in messages if m["role"] != "system"), None)
    if first is not None and first["role"] == "assistant":
        return (
            "opens with the assistant (it speaks before any user turn); a chat starts with "
            "a user turn, after any system turn"
        )
    return None


def content_key(record: dict[str, Any]) -> str:
    """The canonical JSON of what a record renders from (the fields the trainer renders): two
    records with the same key train the model on the same text."""
    if isinstance(record.get("text"), str):
        used: Any = {"text": record["text"]}
    elif "messages" in record:
        used = {"messages": [[m["role"], m["content"]] for m in record["messages"]]}
    else:
        used = {k: record.get(k) or "" for k in ("instruction", "input", "output")}
    return json.dumps(used, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


@dataclass
class Scan:
    """What reading a dataset found: its good records (when kept), how many, whether any two
    differ (a content split can hold one out only then), and every problem."""

    items: list[dict[str, Any]] = field(default_factory=list)
    where: list[str] = field(default_factory=list)
    rows: int = 0
    varied: bool = False
    problems: list[tuple[str | None, str]] = field(default_factory=list)  # the first few
    problem_count: int = 0
    _first: str | None = None

    def add(self, place: str, record: dict[str, Any], keep: bool) -> None:
        self.rows += 1
        if not self.varied:
            key = content_key(record)
            if self._first is None:
                self._first = key
            elif key != self._first:
                self.varied = True
        if keep:
            self.items.append(record)
            self.where.append(place)

    def refuse(self, place: str | None, problem: str) -> None:
        self.problem_count += 1
        if len(self.problems) < SHOWN_PROBLEMS:
            self.problems.append((place, problem))

    def shown(self, after_place: str = ": ") -> list[str]:
        """The problems kept (`line 3: has ...`), and how many more there were."""
        more = self.problem_count - len(self.problems)
        listed = [f"{place}{after_place}{p}" if place else p for place, p in self.problems]
        return listed + ([f"... and {more} more"] if more else [])


def scan(path: Path, keep: bool) -> Scan:
    """Every record of a JSONL file or JSON array, each checked; OSError if it cannot be read."""
    found = Scan()
    with path.open("rb") as fh:
        lead = _skip_whitespace(fh)
        if lead == b"[":
            _array(path, fh, found, keep)
        else:
            for place, record, problem in _lines(fh):
                if problem is not None:
                    found.refuse(place, problem)
                elif record is not None:
                    found.add(place, record, keep)
    return found


def _skip_whitespace(fh: IO[bytes]) -> bytes:
    """The first byte that is not JSON whitespace (b"" at the end); the file is left at 0."""
    while chunk := fh.read(CHUNK):
        stripped = chunk.lstrip(JSON_WHITESPACE.encode())
        if stripped:
            fh.seek(0)
            return stripped[:1]
    fh.seek(0)
    return b""


def _lines(fh: IO[bytes]) -> Iterator[tuple[str, dict[str, Any] | None, str | None]]:
    """(place, record, problem) for each non-blank line, split on b"\\n" alone."""
    offset = 0
    number = 0
    while raw := fh.readline(MAX_LINE_BYTES + 1):
        number += 1
        start = offset
        offset += len(raw)
        place = f"line {number}"
        if len(raw) > MAX_LINE_BYTES:
            while raw and not raw.endswith(b"\n"):  # skip the rest of this line
                raw = fh.readline(CHUNK)
                offset += len(raw)
            yield place, None, f"is longer than {MAX_LINE_BYTES} bytes; split it into records"
            continue
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield place, None, f"is not UTF-8 text (invalid byte at offset {start + exc.start})"
            continue
        if not line.strip(JSON_WHITESPACE):
            continue
        try:
            record = json.loads(line, strict=False)
        except json.JSONDecodeError as exc:
            yield place, None, f"is not JSON: {exc.msg}"
            continue
        problem = record_problem(record)
        yield place, (None if problem else record), problem


def _array(path: Path, fh: IO[bytes], found: Scan, keep: bool) -> None:
    size = path.stat().st_size
    if size > MAX_ARRAY_BYTES:
        found.refuse(
            None,
            f"is a JSON array of {size} bytes; one over {MAX_ARRAY_BYTES} bytes is not read "
            "whole: write it as JSONL (one record a line)",
        )
        return
    raw = fh.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        found.refuse(f"line {line}", f"is not UTF-8 text (invalid byte at offset {exc.start})")
        return
    try:
        items = json.loads(text, strict=False)
    except json.JSONDecodeError as exc:
        found.refuse(None, f"is not a valid JSON array: {exc.msg} at line {exc.lineno}")
        return
    for index, item in enumerate(items):
        place = f"record {index}"
        problem = record_problem(item)
        if problem is not None:
            found.refuse(place, problem)
        else:
            found.add(place, item, keep)
