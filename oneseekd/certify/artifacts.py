"""Artifacts: every file a run leaves, with its size and sha256, recorded in the ledger.

Hashing a multi-GB weights file takes seconds; compute its `FileDigest` before opening the
write session and pass it in, so the database's write lock is not held while the disk reads.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from oneseekd.db.models import Artifact
from oneseekd.errors import OneseekError
from oneseekd.home import HomePaths

if TYPE_CHECKING:
    from oneseekd.certify.ledger import Ledger

ARTIFACT_EVENT = "artifact_recorded"
CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class FileDigest:
    """A file as the ledger records it: its size and the sha256 of its bytes."""

    bytes: int
    sha256: str


def file_digest(path: Path) -> FileDigest:
    """Size and sha256 of what was actually read (streamed in 1 MiB chunks)."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return FileDigest(size, digest.hexdigest())


def sha256_file(path: Path) -> str:
    return file_digest(path).sha256


def home_relative(paths: HomePaths, path: Path) -> str:
    """The path as artifacts store it: relative to the home, with forward slashes."""
    root = paths.root.resolve()
    full = (path if path.is_absolute() else root / path).resolve()
    if not full.is_relative_to(root):
        raise OneseekError(
            f"artifact {path} is outside the home {root}",
            ["artifacts are files the daemon writes under its home folder"],
        )
    return full.relative_to(root).as_posix()


def record_artifact(
    session: Session,
    ledger: Ledger,
    paths: HomePaths,
    path: Path,
    kind: str,
    run_pk: int | None,
    model_key: str | None,
    *,
    digest: FileDigest | None = None,
    now: datetime | None = None,
) -> Artifact:
    """Store the file's row and append its `artifact_recorded` event in the same transaction.

    With `digest` given, `path` need not exist yet: a file in a staging folder is hashed there
    and recorded at the place it will have once the folder is renamed into place. A path
    recorded again (a resumed run rewriting its file) gets its row updated and a new event;
    the newest event is the one `verify` holds the file to."""
    relative = home_relative(paths, path)
    digest = digest or file_digest(paths.root.resolve() / relative)
    when = now or ledger.clock()
    row = session.scalars(select(Artifact).where(Artifact.path == relative)).first()
    if row is None:
        row = Artifact(path=relative)
        session.add(row)
    row.run_id = run_pk
    row.model_key = model_key
    row.kind = kind
    row.bytes = digest.bytes
    row.sha256 = digest.sha256
    row.created_at = when
    session.flush()
    ledger.append(
        session,
        ARTIFACT_EVENT,
        {
            "path": relative,
            "kind": kind,
            "bytes": digest.bytes,
            "sha256": digest.sha256,
            "model_key": model_key,
        },
        run_pk,
        now=when,
    )
    return row


@dataclass(frozen=True)
class RecordedArtifact:
    """What the newest `artifact_recorded` event of a path signed for."""

    seq: int
    sha256: str
    bytes: int


def check_artifacts(
    rows: list[Artifact], recorded: dict[str, RecordedArtifact], paths: HomePaths
) -> Iterator[str]:
    """Each artifacts row against its signed event, then the file against the signed record,
    then every signed record whose row is gone."""
    recorded = dict(recorded)
    root = paths.root.resolve()
    for row in rows:
        entry = recorded.pop(row.path, None)
        sha, size = row.sha256, row.bytes
        if entry is None:
            yield f"artifact {row.path} has no {ARTIFACT_EVENT} event in the ledger"
        elif (entry.sha256, entry.bytes) != (row.sha256, row.bytes):
            what = (
                f"sha256 {row.sha256}, ledger event #{entry.seq} {entry.sha256}"
                if entry.sha256 != row.sha256
                else f"{row.bytes} bytes, ledger event #{entry.seq} {entry.bytes} bytes"
            )
            yield f"artifact {row.path} does not match the ledger: the artifacts table says {what}"
            sha, size = entry.sha256, entry.bytes  # the signed record is the one to trust
        yield from check_file(root, row.path, sha, size)
    for path, entry in recorded.items():
        yield (
            f"artifact {path} is recorded by ledger event #{entry.seq} but has no row in "
            "the artifacts table"
        )


def check_file(root: Path, relative: str, sha: str, size: int) -> Iterator[str]:
    """The file at `relative` under root against the size and sha256 recorded for it."""
    full = (root / relative).resolve()
    if not full.is_relative_to(root):
        yield f"artifact {relative} is outside the home {root}"
    elif not full.is_file():
        yield f"artifact {relative} is missing"
    else:
        digest = file_digest(full)
        if digest.sha256 != sha:
            yield f"artifact {relative} changed: sha256 {sha} recorded, {digest.sha256} on disk"
        elif digest.bytes != size:
            yield f"artifact {relative} changed: {size} bytes recorded, {digest.bytes} on disk"
