"""Writing outputs so that no reader ever sees one half-made: a temporary name, fsync, rename.

An output is written whole under its staging name (`.<name>.tmp` beside its final name, which
no reader takes for a result), recorded as an artifact at its final name, and renamed into
place only once that transaction has committed (certify/publish.py)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from oneseekd.db.models import Artifact
from oneseekd.errors import OneseekError
from oneseekd.home import HomePaths


def render_json(data: Any, *, strict: bool = False) -> bytes:
    """The bytes oneseekd writes for a JSON file: the same data gives the same bytes, so a
    file rewritten later (isCurrent flipped) has the digest recorded for it beforehand.
    `strict` refuses NaN and infinities (a certified file must stay JSON)."""
    text = json.dumps(data, indent=2, ensure_ascii=False, allow_nan=not strict)
    return (text + "\n").encode("utf-8")


def fsync_file(path: Path) -> None:
    with path.open("rb") as fh:
        os.fsync(fh.fileno())


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes(path: Path, data: bytes) -> None:
    """Replace path with data atomically: a temporary dot-name, fsync, rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    fsync_file(tmp)
    os.replace(tmp, path)


def write_json(path: Path, data: Any, *, strict: bool = False) -> None:
    write_bytes(path, render_json(data, strict=strict))


def staging_path(final: Path) -> Path:
    """Where an output is written before its transaction commits: a dot-name beside it."""
    return final.with_name(f".{final.name}.tmp")


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def replace_link(link: Path, target: str) -> None:
    """link -> target (relative, as written), swapped in atomically; a real folder in its place
    is removed first (rename cannot replace a non-empty folder)."""
    if link.is_symlink() and os.readlink(link) == target:
        return
    tmp = staging_path(link)
    remove(tmp)
    tmp.symlink_to(target)
    if link.is_dir() and not link.is_symlink():
        shutil.rmtree(link)
    os.replace(tmp, link)
    fsync_dir(link.parent)


def relative(paths: HomePaths, path: Path) -> str:
    return path.relative_to(paths.root).as_posix()


def files(folder: Path) -> Iterator[Path]:
    """The regular files under folder (links, such as a certified folder's adapter links, are
    not followed: what they name is recorded where it lives)."""
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not any(p.is_symlink() for p in _chain(folder, path)):
            yield path


def _chain(top: Path, path: Path) -> Iterator[Path]:
    while path != top:
        yield path
        path = path.parent


def staged_files(final: Path) -> list[tuple[Path, Path]]:
    """(final path, staged path) of every file of a staged output folder, fsynced."""
    staged = staging_path(final)
    pairs = []
    for path in files(staged):
        fsync_file(path)
        pairs.append((final / path.relative_to(staged), path))
    return pairs


def free(session: Session, paths: HomePaths, target: Path, run_pk: int) -> None:
    """Make room for a versioned output: refuse if another run recorded it (published or still
    staged); remove what an interrupted attempt left under the name and its staging name."""
    rel = relative(paths, target)
    recorded = session.scalars(
        select(Artifact.id).where(
            (Artifact.path == rel) | Artifact.path.startswith(rel + "/"),
            Artifact.run_id.is_(None) | (Artifact.run_id != run_pk),
        )
    ).first()
    if recorded is not None:
        raise OneseekError(
            f"{rel} already exists and belongs to an earlier run; "
            "nothing of an existing version is overwritten",
            ["submit the request again without version to take the next one"],
        )
    remove(target)
    remove(staging_path(target))
