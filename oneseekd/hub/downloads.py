"""The `model_downloads` door: downloads carried out beside training, never in its way.

`oneseekctl pull` and other programs (the admin panel) INSERT a row naming a repository. The
daemon's loop calls `Downloads.tick()`: it claims the oldest pending row this host may take (no
host named, or this one), runs `pull_model` in a thread of its own, and when the thread ends
reads the new folder into the catalog at once (`ready` without the settle wait: every byte was
checked) and ends the row `succeeded` with a signed `model_downloaded` ledger event in the
same transaction, or `failed` with the reason. The thread writes the row's progress (bytes,
rate, ETA) about once a second and reads `cancel_requested` as it does.

A row left `running` by a daemon that died goes back to `pending` at the next start, and the
pull resumes from the bytes on disk (fetch.py). `oneseekctl pull` with no daemon on its home
carries its row out itself through the same class (`carry_out`), claiming it first, so a daemon
started meanwhile never runs it twice.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import CursorResult, Engine, or_, select, update
from sqlalchemy.orm import Session

from oneseekd.catalog.live import Catalog
from oneseekd.catalog.scan import RESERVED
from oneseekd.certify.ledger import Ledger
from oneseekd.config import Config
from oneseekd.daemon import procs
from oneseekd.db.engine import read_session, write_session
from oneseekd.db.models import ModelDownload, utcnow
from oneseekd.errors import OneseekError
from oneseekd.hub.fetch import Cancelled, Transfer
from oneseekd.hub.pin import Pinned
from oneseekd.hub.pull import Pulled, Where, pull_model
from oneseekd.hub.repo import HubError, RepoRef, parse

log = structlog.get_logger("oneseekd.hub")

PROGRESS_SECONDS = 1.0  # how often a download writes its row
BEAT_SECONDS = 5.0  # the row's heartbeat while nothing arrives (pinning, retries, backoff)
LOOK_SECONDS = 0.5  # at most how often the loop looks for a new row, once the database changed
# how often rows left running by a dead `oneseekctl pull` are looked for: each look is a read
# that costs an idle daemon on a busy machine 15-35 ms of CPU, cold (docs/reliability.md)
STALE_CHECK_SECONDS = 30.0
ATTEMPTS = 5
BACKOFF_SECONDS = 2.0
STOP_WAIT_SECONDS = 5.0  # at daemon stop: how long the thread gets to notice and return
_FOLDER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


def check_folder(folder: str) -> str:
    """A folder name a pull may install into: one plain name under base_models/."""
    name = folder.strip()
    if not _FOLDER.fullmatch(name) or ".." in name or name.lower() in RESERVED:
        raise HubError(
            f"{folder!r} cannot be a model folder's name",
            [
                "name it with letters, digits, '.', '_' and '-' only (no '/', not starting "
                "with '.', not one of oneseekd's own folders)"
            ],
        )
    return name


def where_for(config: Config) -> Where:
    home = config.home
    return Where(
        base_models=home.base_models,
        incoming=home.incoming,
        token_file=home.hf_token,
        endpoint=config.hub.endpoint,
        offline=config.hub.offline,
    )


@dataclass
class _Job:
    """One download under way: the row, what it asks for, and the thread's outcome."""

    row_id: int
    ref: RepoRef
    folder: str
    allow_pickle: bool
    commit: str | None = None  # pinned by an earlier start of this row
    started: float = field(default_factory=time.monotonic)
    cancel: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    pulled: Pulled | None = None
    error: BaseException | None = None
    transfer: Transfer | None = None


class Downloads:
    def __init__(
        self,
        engine: Engine,
        config: Config,
        *,
        ledger: Ledger,
        catalog: Catalog,
        pid: int | None = None,
    ) -> None:
        self.engine = engine
        self.config = config
        self.ledger = ledger
        self.catalog = catalog
        self.pid = pid if pid is not None else os.getpid()
        self.job: _Job | None = None
        # the daemon's log; `oneseekctl pull` says the outcome itself and passes a silent one
        self.log: Any = log
        self._last_stale_check = float("-inf")
        self._last_look = float("-inf")
        # the daemon's loop sets this where it has a change probe, and then calls
        # database_changed() on each change: pending rows are looked for only after one
        self.wait_for_change = False
        self._look_due = True  # a look for pending rows is owed (the first one, or a change)
        # whether this host has a `running` row: the daemon gives a cheaper reader where it
        # has one (daemon/pulse.py); a row found is then read through the ORM as before
        self.running_here: Callable[[], bool] | None = None

    @property
    def host(self) -> str:
        return self.config.catalog.host

    @property
    def busy(self) -> bool:
        return self.job is not None

    # --- rows --------------------------------------------------------------------------------
    def _mine(self) -> Any:
        return or_(ModelDownload.host.is_(None), ModelDownload.host == self.host)

    def recover(self) -> int:
        """Rows this host left `running` whose process is gone go back to `pending`, to
        resume from the bytes on disk; a live `oneseekctl pull` keeps its own. A read first:
        the idle loop calls this every few seconds and takes no write lock for nothing."""
        if self.running_here is not None and not self.running_here():
            return 0
        with read_session(self.engine) as session:
            if not self._left(session):
                return 0
        with write_session(self.engine) as session:
            back = self._left(session)
            for row in back:
                row.status = "pending"
                row.pid = None
                self.log.warning(
                    "download_requeued",
                    download=row.id,
                    repository=row.repository,
                    bytes_done=row.bytes_done,
                    detail="its process ended mid-download; it resumes from the bytes on disk",
                )
        return len(back)

    def _left(self, session: Session) -> list[ModelDownload]:
        """This host's `running` rows whose process is gone (or is this one, restarted)."""
        rows = session.scalars(
            select(ModelDownload).where(
                ModelDownload.status == "running", ModelDownload.host == self.host
            )
        ).all()
        return [
            r
            for r in rows
            if (r.pid == self.pid or not procs.alive(r.pid) or not self._fresh(r.heartbeat_at))
            and (self.job is None or r.id != self.job.row_id)
        ]

    def _fresh(self, at: datetime | None) -> bool:
        """Whether a row's heartbeat is recent: its process beats every BEAT_SECONDS while it
        downloads, so a stale one is a dead process (a pid taken again after a reboot too)."""
        if at is None:
            return True
        return (utcnow() - at).total_seconds() < max(self.config.trainer.lease_seconds, 10.0)

    def pending_ids(self) -> list[int]:
        with read_session(self.engine) as session:
            return list(
                session.scalars(
                    select(ModelDownload.id)
                    .where(ModelDownload.status == "pending", self._mine())
                    .order_by(ModelDownload.id)
                )
            )

    def claim(self, row_id: int | None = None) -> _Job | None:
        """Take the oldest pending row (or `row_id`) for this host; None when there is none
        or another process took it first. A row that asks for something impossible fails
        here with the reason."""
        now = utcnow()
        with write_session(self.engine) as session:
            query = select(ModelDownload).where(ModelDownload.status == "pending", self._mine())
            if row_id is not None:
                query = query.where(ModelDownload.id == row_id)
            for row in session.scalars(query.order_by(ModelDownload.id).limit(20)):
                if row.cancel_requested:
                    self._end(row, "cancelled", now, error="cancelled before it started")
                    continue
                taken: CursorResult[Any] = session.execute(  # type: ignore[assignment]
                    update(ModelDownload)
                    .where(ModelDownload.id == row.id, ModelDownload.status == "pending")
                    .values(
                        status="running",
                        host=self.host,
                        pid=self.pid,
                        started_at=now,
                        heartbeat_at=now,
                        error=None,
                        problems=None,
                    )
                )
                if not taken.rowcount:
                    continue
                try:
                    ref = parse(f"{row.repository or ''}@{row.revision or 'main'}")
                    folder = check_folder(row.folder or ref.folder)
                except OneseekError as exc:
                    self._end(row, "failed", now, error=exc.message, problems=exc.problems)
                    continue
                self.log.info(
                    "download_started",
                    download=row.id,
                    repository=ref.repo,
                    revision=ref.revision,
                    folder=folder,
                    source=row.source,
                )
                return _Job(row.id, ref, folder, bool(row.allow_pickle), row.commit)
        return None

    def _end(
        self,
        row: ModelDownload,
        status: str,
        now: Any,
        *,
        error: str | None = None,
        problems: list[str] | None = None,
    ) -> None:
        row.status = status
        row.finished_at = now
        row.error = error
        row.problems = problems or None
        said = {"download": row.id, "repository": row.repository, "error": error}
        if status == "failed":
            self.log.error("download_failed", **said, problems=problems or [])
        elif status == "cancelled":
            self.log.info("download_cancelled", **said)

    # --- the daemon's loop -------------------------------------------------------------------
    def database_changed(self) -> None:
        """Someone committed (the loop's `PRAGMA data_version` probe saw it): a new row may be
        there. Owed until a look is taken, even while this part backs off from a failure."""
        self._look_due = True

    def tick(self) -> None:
        """One look from the loop: end a finished download, else start the next.

        With `wait_for_change`, pending rows are looked for only once the database changed
        (a new row is a commit): an idle daemon does not read the table twice a second for
        nothing."""
        job = self.job
        if job is not None:
            if job.thread is not None and job.thread.is_alive():
                return
            self.job = None
            self.finish(job)
            self._look_due = True  # the next pending row, if any, starts now
        now = time.monotonic()
        if now - self._last_stale_check >= STALE_CHECK_SECONDS:
            self._last_stale_check = now
            if self.recover():  # a `oneseekctl pull` that died leaves its row to the daemon
                self._look_due = True
        if self.wait_for_change and not self._look_due:
            return
        if now - self._last_look < LOOK_SECONDS:
            return
        self._last_look = now
        if not self.pending_ids():  # a read: the loop's idle turns take no write lock here
            self._look_due = False
            return
        started = self.claim()
        if started is not None:
            self.job = started
            started.thread = threading.Thread(
                target=self._work, args=(started,), name=f"download-{started.row_id}", daemon=True
            )
            started.thread.start()

    def carry_out(self, job: _Job) -> ModelDownload:
        """Run one claimed download here, to its end (`oneseekctl pull` without a daemon)."""
        self._work(job)
        return self.finish(job)

    def shutdown(self) -> None:
        """Daemon stop: the download under way stops and its row waits for the next start."""
        job, self.job = self.job, None
        if job is None:
            return
        job.stop.set()
        if job.thread is not None:
            job.thread.join(STOP_WAIT_SECONDS)
        if job.thread is not None and job.thread.is_alive():
            return  # stuck in the network: the next start puts the row back to pending
        self.finish(job)

    # --- the thread --------------------------------------------------------------------------
    def _work(self, job: _Job) -> None:
        last = [0.0]

        def cancelled() -> bool:
            return job.cancel.is_set() or job.stop.is_set()

        def progress(t: Transfer) -> None:
            job.transfer = t
            now = time.monotonic()
            if now - last[0] < PROGRESS_SECONDS and t.done_bytes < t.total_bytes:
                return
            last[0] = now
            self._write_progress(job, t)

        def pinned(p: Pinned) -> None:
            with write_session(self.engine) as session:
                session.execute(
                    update(ModelDownload)
                    .where(ModelDownload.id == job.row_id)
                    .values(commit=p.commit, bytes_total=p.total_bytes, heartbeat_at=utcnow())
                )

        beating = threading.Event()
        beat = threading.Thread(target=self._beat, args=(job, beating), daemon=True)
        beat.start()
        try:
            job.pulled = pull_model(
                job.ref,
                where_for(self.config),
                folder=job.folder,
                allow_pickle=job.allow_pickle,
                progress=progress,
                cancelled=cancelled,
                attempts=ATTEMPTS,
                backoff_s=BACKOFF_SECONDS,
                on_pinned=pinned,
                pinned_commit=job.commit,
            )
        except BaseException as exc:  # the loop's thread ends the row with it
            job.error = exc
        finally:
            beating.set()
            beat.join()

    def _beat(self, job: _Job, done: threading.Event) -> None:
        """The row's heartbeat, and a cancel read, while the pull is busy elsewhere than in
        its progress (pinning, a retry's backoff), so the row never looks abandoned."""
        while not done.wait(BEAT_SECONDS):
            try:
                with write_session(self.engine) as session:
                    session.execute(
                        update(ModelDownload)
                        .where(ModelDownload.id == job.row_id)
                        .values(heartbeat_at=utcnow())
                    )
                    wanted = session.scalar(
                        select(ModelDownload.cancel_requested).where(ModelDownload.id == job.row_id)
                    )
            except Exception as exc:  # the next beat tries again; the pull goes on
                self.log.warning("download_heartbeat_failed", download=job.row_id, error=str(exc))
                continue
            if wanted:
                job.cancel.set()

    def _write_progress(self, job: _Job, t: Transfer) -> None:
        eta = t.eta_s
        with write_session(self.engine) as session:
            session.execute(
                update(ModelDownload)
                .where(ModelDownload.id == job.row_id)
                .values(
                    bytes_total=t.total_bytes,
                    bytes_done=t.done_bytes,
                    progress={
                        "rate": round(t.rate, 1),
                        "eta_s": None if eta is None else round(eta, 1),
                        "file": t.file,
                        "fetched_bytes": t.fetched_bytes,
                    },
                    heartbeat_at=utcnow(),
                )
            )
            wanted = session.scalar(
                select(ModelDownload.cancel_requested).where(ModelDownload.id == job.row_id)
            )
        if wanted:
            job.cancel.set()

    # --- the end -----------------------------------------------------------------------------
    def finish(self, job: _Job) -> ModelDownload:
        """Write a download's outcome to its row (and the catalog and ledger on success)."""
        now = utcnow()
        found = None
        pulled = job.pulled
        if pulled is not None:
            found = self.catalog.take_in(pulled.target)
        with write_session(self.engine) as session:
            row = session.get_one(ModelDownload, job.row_id)
            if job.stop.is_set() and not job.cancel.is_set() and pulled is None:
                row.status = "pending"  # the daemon stopped: the next start resumes it
                row.pid = None
                self.log.info("download_paused", download=row.id, repository=row.repository)
            elif pulled is not None:
                self._succeed(session, row, job, pulled, found, now)
            elif isinstance(job.error, Cancelled) or job.cancel.is_set():
                self._end(row, "cancelled", now, error="cancelled: what arrived is kept")
            elif isinstance(job.error, OneseekError):
                self._end(row, "failed", now, error=job.error.message, problems=job.error.problems)
            else:
                error = job.error
                self._end(row, "failed", now, error=f"{type(error).__name__}: {error}")
                self.log.error("download_crashed", download=row.id, exc_info=error)
            session.flush()
            session.expunge(row)
        return row

    def _succeed(
        self, session: Any, row: ModelDownload, job: _Job, pulled: Pulled, found: Any, now: Any
    ) -> None:
        row.status = "succeeded"
        row.finished_at = now
        row.commit = pulled.commit
        row.model_key = found.key if found is not None else None
        size = sum(f.size for f in pulled.pinned.files) if pulled.pinned is not None else None
        if size is not None:
            row.bytes_total = row.bytes_done = size
        else:
            row.bytes_done = row.bytes_total
        fetched = job.transfer.fetched_bytes if job.transfer is not None else 0
        row.progress = {"rate": None, "eta_s": 0, "file": "", "fetched_bytes": fetched}
        row.error = row.problems = None
        self.ledger.append(
            session,
            "model_downloaded",
            {
                "repository": job.ref.repo,
                "revision": job.ref.revision,
                "commit": pulled.commit,
                "folder": pulled.target.name,
                "model_key": row.model_key,
                "files": dict(sorted(pulled.sha256s.items())),
                "host": self.host,
            },
            now=now,
        )
        self.log.info(
            "download_succeeded",
            download=row.id,
            repository=job.ref.repo,
            commit=pulled.commit,
            model=row.model_key,
            state=found.state if found is not None else None,
            fetched_bytes=fetched,
            already_there=not pulled.fetched,
            seconds=round(time.monotonic() - job.started, 1),
        )


def folder_path(config: Config, folder: str) -> Path:
    return config.home.base_models / folder
