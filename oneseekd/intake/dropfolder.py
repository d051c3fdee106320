"""The drop folder: requests/*.json, claimed by rename, ending in accepted/ or rejected/.

A writer puts NAME.json.tmp and renames it to NAME.json; `*.tmp` and dot-files are never read.
A file is claimed by renaming it into requests/.claimed/ under a unique token before it is
read, so it is taken exactly once; after a crash, claimed files are finished at the next start
(the token in the database says whether a verdict was already written).
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import json
import os
import re
import secrets
import stat
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


def _same(a: Path, b: Path) -> bool:
    """Whether two names are one file (links themselves compared, never their targets)."""
    try:
        sa, sb = os.lstat(a), os.lstat(b)
    except FileNotFoundError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _error_is_free(target: Path, request_pk: int) -> bool:
    """Whether target's NAME.error.json is absent or already explains this request."""
    try:
        body = json.loads(error_path(target).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return True
    except (OSError, ValueError):
        return False  # someone's, unreadable: leave it and take another name
    return isinstance(body, dict) and body.get("request") == request_pk


def place(src: Path, folder: Path, name: str, rejected: tuple[Verdict, str] | None = None) -> Path:
    """Move src into folder as name, or name.2, name.3 ... : never over an existing file
    (os.link fails on an existing target, so two writers cannot pick the same name).

    `rejected` (the verdict and the original name) writes NAME.error.json before the file is
    linked in, so no crash leaves a rejected file unexplained; a name whose error file
    explains another request is passed over. A target that already is src (a crash between
    link and unlink) is kept: one request never gets two verdict files. Links are moved as
    links, never followed."""
    stem, dot, suffix = name.rpartition(".")
    if not dot:
        stem, suffix = name, ""
    for n in itertools.count(1):
        candidate = name if n == 1 else f"{stem}.{n}{dot}{suffix}"
        target = folder / candidate
        if _same(src, target):
            if rejected is not None:
                write_error(target, *rejected)
            os.unlink(src)
            return target
        if os.path.lexists(target):
            continue
        if rejected is not None:
            if not _error_is_free(target, rejected[0].request_pk):
                continue
            write_error(target, *rejected)
        try:
            os.link(src, target, follow_symlinks=False)
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


LINK = (
    "the request file is a symbolic link; links in requests/ are never followed: drop the "
    "file itself (write NAME.json.tmp, then rename it to NAME.json)"
)


def _read(path: Path) -> bytes | str:
    """A claimed file's bytes, or why it was not read: a link is never followed and only a
    regular file is read (opening a FIFO would block the daemon)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return LINK
        return f"the request file cannot be read: {exc.strerror}"
    with os.fdopen(fd, "rb") as fh:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            return "the request file is not a regular file (a FIFO, socket or device); drop a file"
        try:
            return fh.read(MAX_REQUEST_BYTES + 1)
        except OSError as exc:
            return f"the request file cannot be read: {exc.strerror}"


def incoming(path: Path, original: str, token: str) -> Incoming:
    content = _read(path)
    if isinstance(content, str):
        return Incoming.refused(content, "file", original, token)
    return Incoming.of_bytes(content, "file", original, token)


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
        """Every *.json in requests/ that is not a folder: links and other non-regular files
        too, so each gets a verdict (they are claimed, never followed or read)."""
        try:
            with os.scandir(self.paths.requests) as entries:
                return sorted(
                    (
                        e
                        for e in entries
                        if e.name.endswith(".json")
                        and not e.name.startswith(".")
                        and not e.is_dir(follow_symlinks=False)
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
        """Finish files claimed by a daemon that died before moving them, then explain
        rejected files an older daemon moved without their NAME.error.json; returns how many
        claimed files were finished."""
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
        self._explain_rejected()
        return done

    def _explain_rejected(self) -> None:
        """Write the missing NAME.error.json of each file in rejected/ from its request's
        row (the one of that name not yet explained, preferring the same content)."""
        folder = self.paths.requests / "rejected"
        try:
            names = set(os.listdir(folder))
        except FileNotFoundError:
            return
        for name in sorted(names):
            if (
                name.startswith(".")
                or not name.endswith(".json")
                or name.endswith(".error.json")
                or error_path(folder / name).name in names
            ):
                continue
            target = folder / name
            row = self._row_of(target, names)
            if row is None:
                log.warning("rejected_file_unexplained", path=safe_text(str(target)))
                continue
            verdict = Verdict(row.status, row.id, problems=row.problems or [])
            write_error(target, verdict, row.source_name or safe_text(name))
            log.info("rejected_file_explained", path=safe_text(str(target)), request=row.id)

    def _row_of(self, target: Path, names: set[str]) -> TrainingRequest | None:
        """The refused request a file in rejected/ came from: a row of its original name
        (NAME.json for NAME.2.json) that no error file there explains yet."""
        numbered = re.fullmatch(r"(.*)\.[0-9]+\.json", target.name)
        originals = {target.name} | ({numbered.group(1) + ".json"} if numbered else set())
        explained: set[object] = set()
        for name in names:
            if name.endswith(".error.json") and name[: -len(".error.json")].startswith(
                tuple(o[: -len(".json")] for o in originals)
            ):
                try:
                    body = json.loads((target.parent / name).read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    continue
                explained.add(body.get("request") if isinstance(body, dict) else None)
        content = _read(target)
        sha = hashlib.sha256(content).hexdigest() if isinstance(content, bytes) else None
        with read_session(self.intake.engine) as session:
            rows = [
                r
                for r in session.scalars(
                    select(TrainingRequest)
                    .where(
                        TrainingRequest.source == "file",
                        TrainingRequest.status.in_(("rejected", "duplicate")),
                        TrainingRequest.source_name.in_([safe_text(o) for o in originals]),
                    )
                    .order_by(TrainingRequest.id)
                )
                if r.id not in explained
            ]
        same = [r for r in rows if r.content_sha256 == sha]
        pool = same or rows
        return pool[-1] if pool else None

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
        items = [incoming(path, original, token) for path, original, token in claimed]
        verdicts = self.intake.take_batch(items) if items else []
        for (path, original, _), verdict in zip(claimed, verdicts, strict=True):
            assert verdict is not None  # files are never decided by anyone else
            self._finish(path, original, verdict)

    def _take(self, path: Path, original: str, token: str) -> Verdict:
        verdict = self.intake.take_batch([incoming(path, original, token)])[0]
        assert verdict is not None  # files are never decided by anyone else
        return verdict

    def _finish(self, path: Path, original: str, verdict: Verdict) -> None:
        if verdict.accepted:
            place(path, self.paths.requests / "accepted", original)
            return
        place(path, self.paths.requests / "rejected", original, (verdict, safe_text(original)))
