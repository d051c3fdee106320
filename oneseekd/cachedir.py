"""The tokenization cache's folder as anyone may read it without torch or numpy (oneseekctl
status shows its size): home/cache/tokenized/<key>/, each entry's files and its meta.json,
whose modification time is when the entry was last used (trainer/tokcache.py)."""

from __future__ import annotations

from pathlib import Path

FOLDER = "tokenized"
META = "meta.json"


def entries(cache: Path) -> list[tuple[Path, int, float]]:
    """Every complete entry under the home's `cache/`: its folder, its bytes and when it was
    last used; writers' temporary folders (".name.pid.tmp") are not entries."""
    root = cache / FOLDER
    found: list[tuple[Path, int, float]] = []
    if not root.is_dir():
        return found
    for folder in root.iterdir():
        if folder.name.startswith(".") or not folder.is_dir():
            continue
        try:
            size = sum(f.stat().st_size for f in folder.iterdir())
            used = (folder / META).stat().st_mtime
        except OSError:
            continue
        found.append((folder, size, used))
    return found


def size(cache: Path) -> tuple[int, int]:
    """The number of entries and their bytes."""
    found = entries(cache)
    return len(found), sum(n for _, n, _ in found)
