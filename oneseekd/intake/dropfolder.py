"""The drop folder: requests/*.json, claimed by rename, ending in accepted/ or rejected/.

A writer puts NAME.json.tmp and renames it to NAME.json; `*.tmp` and dot-files are never read.
A file is claimed by renaming it into requests/.claimed/ under a unique token before it is
read, so it is taken exactly once; after a crash, claimed files are finished at the next start
(the token in the database says whether a verdict was already written).
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path

import structlog
from sqlalchemy import select

from oneseekd.config import HomePaths
from oneseekd.db.engine import read_session
from oneseekd.db.models import TrainingRequest
from oneseekd.intake.accept import MAX_REQUEST_BYTES, Incoming, Intake, Verdict, safe_text

log = structlog.get_logger("oneseekd.intake")

CLAIMED = ".claimed"
SEPARATOR = "__"
BATCH = 64  # requests decided per transaction


def place(src: Path, folder: Path, name: str, with_error: bool) -> Path:
    """Move src into folder as name, or name.2, name.3 ... : never over an existing file
    (os.link fails on an existing target, so two writers cannot pick the same name)."""
    stem, dot, suffix = name.rpartition(".")
    if not dot:
        stem, suffix = name, ""
    for n in itertools.count(1):
        candidate = name if n == 1 else f"{stem}.{n}{dot}{suffix}"
        target = folder / candidate
        if with_error and error_path(target).exists():
            continue
        try:
            os.link(src, target)
        except FileExistsError:
            continue
        os.unlink(src)
        return target
    raise AssertionError("unreachable")


def error_path(target: Path) -> Path:
    stem = target.name[: -len(".json")] if target.name.endswith(".json") else target.name
    return target.with_name(f"{stem}.error.json")


def write_error(target: Path, verdict: Verdict, original: str) -> None:
    body = {
        "file": original,
        "status": verdict.status,
        "request": verdict.request_pk,
        "problems": verdict.problems,
        "duplicate_of_run": verdict.duplicate_of,
        "fix": (
            "this request repeats one already queued; nothing to do"
            if verdict.status == "duplicate"
            else "correct every problem listed, then drop the file into requests/ again "
            "(write NAME.json.tmp, then rename it to NAME.json)"
        ),
    }
    path = error_path(target)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump(body, fh, indent=2, ensure_ascii=False)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.rename(tmp, path)


def _read(path: Path) -> bytes:
    try:
        with path.open("rb") as fh:
            return fh.read(MAX_REQUEST_BYTES + 1)
    except OSError as exc:
        return f"unreadable: {exc.strerror}".encode()


class DropFolder:
    def __init__(
        self,
        intake: Intake,
        paths: HomePaths,
        settle: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.intake = intake
        self.paths = paths
        self.settle = settle
        self.clock = clock
        self.claimed = paths.requests / CLAIMED

    def waiting(self) -> int:
        """Request files not yet taken in (claimed ones included)."""
        return len(self._candidates()) + len(self._claimed_files())

    def _candidates(self) -> list[os.DirEntry[str]]:
        try:
            with os.scandir(self.paths.requests) as entries:
                return sorted(
                    (
                        e
                        for e in entries
                        if e.name.endswith(".json")
                        and not e.name.startswith(".")
                        and e.is_file(follow_symlinks=False)
                    ),
                    key=lambda e: e.name,
                )
        except FileNotFoundError:
            return []

    def _claimed_files(self) -> list[Path]:
        try:
            return sorted(p for p in self.claimed.iterdir() if SEPARATOR in p.name)
        except FileNotFoundError:
            return []

    def recover(self) -> int:
        """Finish files claimed by a daemon that died before moving them."""
        done = 0
        for path in self._claimed_files():
            token, _, original = path.name.partition(SEPARATOR)
            with read_session(self.intake.engine) as session:
                row = session.scalars(
                    select(TrainingRequest).where(TrainingRequest.claim == token)
                ).first()
                decided = (
                    None
                    if row is None or row.status == "pending"
                    else Verdict(row.status, row.id, problems=row.problems or [])
                )
            verdict = decided or self._take(path, original, token)
            self._finish(path, original, verdict)
            done += 1
        return done

    def poll(self, limit: int = BATCH) -> int:
        """Take in up to `limit` request files that have been still for the settle time, in
        one intake transaction; returns how many."""
        now = self.clock()
        claimed: list[tuple[Path, str, str]] = []
        for entry in self._candidates():
            if len(claimed) >= limit:
                break
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if now - max(st.st_mtime, st.st_ctime) < self.settle:
                continue  # still being written
            token = secrets.token_hex(8)
            path = self.claimed / f"{token}{SEPARATOR}{entry.name}"
            self.claimed.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(entry.path, path)
            except FileNotFoundError:
                continue  # someone else claimed it
            claimed.append((path, entry.name, token))
        self._take_all(claimed)
        return len(claimed)

    def _take_all(self, claimed: list[tuple[Path, str, str]]) -> None:
        items = [
            Incoming.of_bytes(_read(path), "file", original, token)
            for path, original, token in claimed
        ]
        verdicts = self.intake.take_batch(items) if items else []
        for (path, original, _), verdict in zip(claimed, verdicts, strict=True):
            assert verdict is not None  # files are never decided by anyone else
            self._finish(path, original, verdict)

    def _take(self, path: Path, original: str, token: str) -> Verdict:
        return self.intake.take_bytes(_read(path), source="file", source_name=original, claim=token)

    def _finish(self, path: Path, original: str, verdict: Verdict) -> None:
        if verdict.accepted:
            place(path, self.paths.requests / "accepted", original, with_error=False)
            return
        folder = self.paths.requests / "rejected"
        target = place(path, folder, original, with_error=True)
        write_error(target, verdict, safe_text(original))
