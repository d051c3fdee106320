"""The drop folder: requests/*.json, claimed by rename, ending in accepted/ or rejected/.

A writer puts NAME.json.tmp and renames it to NAME.json; `*.tmp` and dot-files are never read.
A file is claimed by renaming it into requests/.claimed/ under a unique token before it is
read, so it is taken exactly once; after a crash, claimed files are finished at the next start
(the token in the database says whether a verdict was already written). A request waiting for
the download of a model it names (`hf:ORG/NAME`, intake/hubnames.py) stays claimed, its row
`pending`, until the rows door decides it when the download ends; the next poll then moves it.
"""

from __future__ import annotations

import errno
import hashlib
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

from oneseekd.boundedjson import read_at_most
from oneseekd.db.engine import DatabaseChanged, DatabaseFile, read_session
from oneseekd.db.models import TrainingRequest
from oneseekd.home import HomePaths
from oneseekd.intake.accept import Intake
from oneseekd.intake.incoming import MAX_REQUEST_BYTES, Incoming, Verdict, safe_text
from oneseekd.intake.placing import error_path, place, short_name, write_error

__all__ = ["LINK", "DropFolder", "place", "short_name", "write_error"]

log = structlog.get_logger("oneseekd.intake")

CLAIMED = ".claimed"
SEPARATOR = "__"
BATCH = 64  # requests decided per transaction
UNCLAIMABLE = "the request file cannot be claimed (renamed into requests/.claimed/): {}; {}"
LINK = (
    "the request file is a symbolic link; links in requests/ are never followed: drop the "
    "file itself (write NAME.json.tmp, then rename it to NAME.json)"
)


class Unreadable(Exception):
    """Why a claimed file was not read; the request is refused with it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _read(path: Path) -> bytes:
    """A claimed file's bytes; Unreadable says why not: a link is never followed and only a
    regular file is read (opening a FIFO would block the daemon)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Unreadable(LINK) from None
        raise Unreadable(f"the request file cannot be read: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise Unreadable(
                "the request file is not a regular file (a FIFO, socket or device); drop a file"
            )
        try:
            return read_at_most(fh, MAX_REQUEST_BYTES)
        except OSError as exc:
            raise Unreadable(f"the request file cannot be read: {exc.strerror}") from None


def incoming(path: Path, original: str, token: str) -> Incoming:
    try:
        content = _read(path)
    except Unreadable as exc:
        return Incoming.refused(exc.reason, "file", original, token)
    return Incoming.of_bytes(content, "file", original, token)


def _identity(name: str, st: os.stat_result) -> tuple[str, int, int, int]:
    """A file as it is now: a changed file (written again, replaced) is a new one."""
    return name, st.st_ino, st.st_size, st.st_mtime_ns


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
        # when each file (name, inode, size, mtime) was first seen: a file whose mtime lies in
        # the future settles after `settle` seconds of wall clock from then
        self._first_seen: dict[tuple[str, int, int, int], float] = {}
        # files that could not be claimed, with why: never retried until they change
        self._refused: dict[tuple[str, int, int, int], str] = {}
        self._unreadable: str | None = None  # why requests/ cannot be listed, logged once
        self._stuck: set[str] = set()  # claimed files that could not be finished
        self.database: DatabaseFile | None = None  # the daemon's; None: not checked

    def waiting(self) -> int:
        """Request files not yet taken in (claimed ones included); files that cannot be
        claimed, and claimed ones that cannot be finished, are not waiting: they were logged
        with their reason and are retried only once they change."""
        unclaimable = set(self._refused)
        waiting = 0
        for entry in self._candidates():
            try:
                if _identity(entry.name, entry.stat(follow_symlinks=False)) in unclaimable:
                    continue
            except OSError:
                continue
            waiting += 1
        return waiting + len(self._claimed_files())

    def _candidates(self) -> list[os.DirEntry[str]]:
        """Every *.json in requests/ that is not a folder: links and other non-regular files
        too, so each gets a verdict (they are claimed, never followed or read). A requests/
        that cannot be listed is logged once per change of state and holds nothing: the
        other doors keep serving."""
        try:
            with os.scandir(self.paths.requests) as entries:
                found = sorted(
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
        except OSError as exc:
            self._cannot_list(exc)
            return []
        if self._unreadable is not None:
            log.info("requests_folder_readable", path=str(self.paths.requests))
            self._unreadable = None
        return found

    def _cannot_list(self, exc: OSError) -> None:
        reason = exc.strerror or str(exc)
        if reason != self._unreadable:
            log.error(
                "requests_folder_unreadable",
                path=str(self.paths.requests),
                error=reason,
                fix="give the daemon's user read, write and search permission on the folder "
                f"(chmod u+rwx {self.paths.requests}); submit and database rows keep working",
            )
            self._unreadable = reason

    def _claimed_files(self) -> list[Path]:
        try:
            return sorted(
                p
                for p in self.claimed.iterdir()
                if SEPARATOR in p.name and p.name not in self._stuck
            )
        except FileNotFoundError:
            return []
        except OSError as exc:
            self._cannot_list(exc)
            return []

    def recover(self) -> int:
        """Finish files claimed by a daemon that died before moving them, then explain
        rejected files an older daemon moved without their NAME.error.json; returns how many
        claimed files were finished."""
        done = self._finish_claimed()
        try:
            self._explain_rejected()
        except (OSError, ValueError) as exc:
            log.error("rejected_files_unexplained", error=f"{type(exc).__name__}: {exc}")
        return done

    def _finish_claimed(self) -> int:
        """Decide (again) and move every file in requests/.claimed/: one whose decision
        committed is moved to match it, one whose decision did not (the database failed
        under it, or the daemon died) is decided now. A database error leaves the rest
        where they are, for the next poll."""
        done = 0
        for path in self._claimed_files():
            try:
                if not self._recover_one(path):
                    continue  # waits for its download
            except (OSError, ValueError) as exc:  # one bad file never stops a start
                self._stuck.add(path.name)
                log.error(
                    "claimed_file_unfinished",
                    path=safe_text(str(path)),
                    error=f"{type(exc).__name__}: {exc}",
                    fix="move the file out of requests/.claimed/ by hand, then restart",
                )
                continue
            done += 1
        return done

    def _recover_one(self, path: Path) -> bool:
        """Whether the file was finished: not while its request waits for a download."""
        token, _, original = path.name.partition(SEPARATOR)
        with read_session(self.intake.engine) as session:
            row = session.scalars(
                select(TrainingRequest).where(TrainingRequest.claim == token)
            ).first()
            if row is not None and row.status == "pending" and row.download_id is not None:
                return False
            decided = (
                None
                if row is None or row.status == "pending"
                else Verdict(row.status, row.id, problems=row.problems or [])
            )
            if row is not None and row.source_name:
                original = row.source_name  # the full name, when a long one was shortened
        verdict = decided or self._take(path, original, token)
        self._finish(path, original, verdict)
        return verdict.status != "waiting"

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
        try:
            sha: str | None = hashlib.sha256(_read(target)).hexdigest()
        except Unreadable:
            sha = None
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

    @property
    def settling(self) -> bool:
        """Whether files were seen that have not settled yet (the loop comes back for them
        at its fast tick)."""
        return bool(self._first_seen)

    def poll(self, limit: int = BATCH) -> int:
        """Take in up to `limit` request files that have been still for the settle time, in
        one intake transaction; returns how many.

        Files a failed poll left claimed (the database failed between the claim and the
        decision) are decided first: only this daemon claims into its home's .claimed/, so
        any file there that is not being decided right now was left by a poll that failed.
        Every file ends in accepted/ or rejected/ through an outage of any length."""
        retaken = self._finish_claimed() if self._claimed_files() else 0
        if retaken:
            log.info("claimed_files_retaken", count=retaken)
        now = self.clock()
        claimed: list[tuple[Path, str, str]] = []
        seen: dict[tuple[str, int, int, int], float] = {}
        present: set[tuple[str, int, int, int]] = set()
        refusals: list[Incoming] = []
        for entry in self._candidates():
            if len(claimed) >= limit:
                break
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            identity = _identity(entry.name, st)
            present.add(identity)
            if identity in self._refused:
                continue  # logged with its reason; retried once the file changes
            seen[identity] = first = self._first_seen.get(identity, now)
            # a file dated in the future settles by the wall clock from when it was first seen
            if now - min(max(st.st_mtime, st.st_ctime), first) < self.settle:
                continue  # still being written
            taken = self._claim(entry, identity)
            if isinstance(taken, str):
                refusals.append(Incoming.refused(taken, "file", entry.name))
            elif taken is not None:
                claimed.append(taken)
        self._first_seen = seen
        self._refused = {k: v for k, v in self._refused.items() if k in present}
        if refusals:  # a row says why, for `oneseekctl runs`; the file stays where it is
            self.intake.take_batch(refusals)
        self._take_all(claimed)
        return retaken + len(claimed) + len(refusals)

    def _claim(
        self, entry: os.DirEntry[str], identity: tuple[str, int, int, int]
    ) -> tuple[Path, str, str] | str | None:
        """Rename a file into .claimed/ under a unique token (a long name shortened); a file
        that cannot be renamed is refused: the reason is returned and logged once, and the
        file is not tried again until it changes."""
        token = secrets.token_hex(8)
        path = self.claimed / f"{token}{SEPARATOR}{short_name(entry.name)}"
        try:
            self.claimed.mkdir(parents=True, exist_ok=True)
            os.rename(entry.path, path)
        except FileNotFoundError:
            return None  # someone else claimed it
        except OSError as exc:
            return self._refuse(entry, identity, exc)
        return path, entry.name, token

    def _refuse(
        self, entry: os.DirEntry[str], identity: tuple[str, int, int, int], exc: OSError
    ) -> str:
        fix = (
            "give the daemon's user write permission on requests/ and its .claimed/"
            if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS)
            else "move the file out of requests/ and drop it again"
        )
        reason = UNCLAIMABLE.format(exc.strerror or exc, fix)
        self._refused[identity] = reason
        log.error("request_file_unclaimable", path=safe_text(entry.path), error=reason)
        return reason

    def _take_all(self, claimed: list[tuple[Path, str, str]]) -> None:
        if not claimed:  # nothing decided: no database file to check (every idle tick)
            return
        items = [incoming(path, original, token) for path, original, token in claimed]
        verdicts = self.intake.take_batch(items)
        self._check_database()
        for (path, original, _), verdict in zip(claimed, verdicts, strict=True):
            assert verdict is not None  # files are never decided by anyone else
            self._finish(path, original, verdict)

    def _check_database(self) -> None:
        """A verdict committed into a database file that is no longer the one at the path
        (deleted, replaced) is lost: its files stay claimed, and the next start, on the
        file now there, takes them in again."""
        problem = self.database.problem() if self.database is not None else None
        if problem is not None:
            raise DatabaseChanged(problem, ["the claimed files stay in requests/.claimed/"])

    def _take(self, path: Path, original: str, token: str) -> Verdict:
        verdict = self.intake.take_batch([incoming(path, original, token)])[0]
        self._check_database()
        assert verdict is not None  # files are never decided by anyone else
        return verdict

    def _finish(self, path: Path, original: str, verdict: Verdict) -> None:
        if verdict.status == "waiting":
            return  # stays claimed until its download ends and its row is decided
        if verdict.accepted:
            place(path, self.paths.requests / "accepted", original)
            return
        place(path, self.paths.requests / "rejected", original, (verdict, safe_text(original)))
