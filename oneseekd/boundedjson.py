"""JSON the daemon reads from files others write, with a size and a depth bound.

A config.json of 4 MB can hold 2 million nested brackets: the standard parser then raises
RecursionError, which is not the ValueError callers expect, and ended the daemon's start. Here
a document over the size bound is not parsed at all, the parser's own recursion guard becomes a
ValueError with the reason, and what it returns is walked (iteratively) to refuse anything
nested deeper than the bound.
"""

from __future__ import annotations

import json
from typing import Any, BinaryIO

READ_CHUNK = 64 * 1024
MAX_DEPTH = 64  # no config, index, header or proof the daemon reads nests deeper than a few


class JSONBoundError(ValueError):
    """The document is larger or deeper than the bound; the message says which."""


def too_deep(value: Any, max_depth: int) -> bool:
    """Whether arrays and objects in value nest deeper than max_depth."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if level + 1 > max_depth:
            return True
        stack.extend((child, level + 1) for child in children if isinstance(child, dict | list))
    return False


def loads(raw: bytes, *, max_bytes: int, max_depth: int = MAX_DEPTH, what: str = "the file") -> Any:
    """json.loads with bounds: JSONBoundError (a ValueError) when raw is too large or too
    deep, json.JSONDecodeError / UnicodeDecodeError (ValueErrors too) when it is not JSON."""
    if len(raw) > max_bytes:
        raise JSONBoundError(f"{what} is {len(raw)} bytes; at most {max_bytes} bytes are read")
    too_deep_message = (
        f"{what} nests more than {max_depth} levels deep; at most {max_depth} are read"
    )
    try:
        value = json.loads(raw)
    except RecursionError as exc:
        raise JSONBoundError(too_deep_message) from exc
    if too_deep(value, max_depth):
        raise JSONBoundError(too_deep_message)
    return value


def read_at_most(fh: BinaryIO, limit: int) -> bytes:
    """Up to limit + 1 bytes of an open file (one more than the limit shows that it is
    larger), read a chunk at a time: `fh.read(limit + 1)` allocates limit + 1 bytes before it
    reads one, 4 MB for each 1 KB config.json the catalog reads. glibc then serves those
    blocks from the heap, and a scan of 1,000 folders left the idle daemon 2 MB larger."""
    parts: list[bytes] = []
    total = 0
    while total <= limit:
        part = fh.read(min(READ_CHUNK, limit + 1 - total))
        if not part:
            break
        parts.append(part)
        total += len(part)
    return b"".join(parts)


def read(path: Any, *, max_bytes: int, max_depth: int = MAX_DEPTH, what: str | None = None) -> Any:
    """A file's JSON with the bounds above; reads at most max_bytes + 1 bytes (OSError as is)."""
    with open(path, "rb") as fh:
        raw = read_at_most(fh, max_bytes)
    return loads(raw, max_bytes=max_bytes, max_depth=max_depth, what=what or str(path))
