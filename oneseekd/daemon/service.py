"""The daemon: wires the components, owns the main loop, turns signals into flags.

Its command line is command.py's; the supervisor of the trainer child is supervisor.py's."""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING

import structlog
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import Engine, update
from sqlalchemy.exc import SQLAlchemyError

from oneseekd import __version__, queue
from oneseekd.alone import Alone
from oneseekd.catalog.live import Catalog
from oneseekd.catalog.scan import model_roots
from oneseekd.catalog.watch import Watcher
from oneseekd.certify.ledger import Ledger
from oneseekd.config import Config, load_config
from oneseekd.daemon import identity
from oneseekd.daemon.lock import HomeLock
from oneseekd.daemon.notify import Notifier
from oneseekd.daemon.supervisor import Supervisor
from oneseekd.db import migrate
from oneseekd.db.engine import (
    ChangeProbe,
    DatabaseChanged,
    DatabaseFile,
    read_session,
    serialize,
    write_session,
)
from oneseekd.db.models import Daemon as DaemonRow
from oneseekd.db.models import Run, utcnow
from oneseekd.errors import OneseekError
from oneseekd.hub.downloads import Downloads
from oneseekd.intake.accept import Intake
from oneseekd.intake.dropfolder import DropFolder
from oneseekd.intake.rows import PendingRows
from oneseekd.logs import configure_logging

if TYPE_CHECKING:
    from oneseekd.metrics.server import Metrics

log = structlog.get_logger("oneseekd")


@dataclass(frozen=True)
class _Parts:
    catalog: Catalog
    intake: Intake  # behind both doors: the drop folder and the rows
    drops: DropFolder
    rows: PendingRows
    supervisor: Supervisor
    downloads: Downloads  # model_downloads rows, each in a thread beside training


HEARTBEAT_SECONDS = 5.0
TICK_SECONDS = 0.1  # the longest the loop sleeps while something is under way
# ... and while nothing is: a dropped file (requests/ is watched), a signal and a catalog change
# wake the loop at once; a row INSERTed by another program is seen within this. Each tick costs
# an idle daemon 0.3-2 ms of CPU on a busy machine, cold (docs/reliability.md)
IDLE_TICK_SECONDS = 0.5
# With no trainer running, the supervisor looks at the queue when the database changed, and at
# least this often (a safety net on SQLite; the only trigger on databases without a probe).
QUEUE_LOOK_SECONDS = 1.0
# ... and this often once its last look found no run queued or running on a database with a
# probe: then nothing waits on a clock (a lease to expire, a run to take over), and a run that
# is queued is a commit the probe sees at the next tick
EMPTY_QUEUE_LOOK_SECONDS = 5.0
# A step of the loop that raised is retried after this, doubling up to LOOP_BACKOFF_MAX.
LOOP_BACKOFF_SECONDS = 0.5
LOOP_BACKOFF_MAX = 30.0


class Daemon:
    def __init__(self, config: Config, *, exit_when_idle: bool = False) -> None:
        self.config = config
        self.exit_when_idle = exit_when_idle
        self.stop_requested = False
        self.signals = 0
        self._full_scan_due = False
        self._reload_due = False
        self._row_id: int | None = None
        self._parts_alone = Alone()  # the doors and the catalog fail (and back off) alone
        self._database_problem: str | None = None
        self._wake = threading.Event()
        self.notifier = Notifier()
        self._metrics: Metrics | None = None  # [metrics] listen: the Prometheus endpoint
        self._drops_watched = False  # requests/ wakes the loop: it may tick slowly when idle

    # Signal handlers only set flags; the loop does the work.
    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.stop_requested = True
        self.signals += 1  # a second one: stop now, without waiting for a checkpoint
        self._signal = signal.Signals(signum).name
        self._wake.set()

    def _on_hangup(self, _signum: int, _frame: FrameType | None) -> None:
        self._reload_due = True
        self._wake.set()

    def _request_full_scan(self) -> None:
        self._full_scan_due = True
        self._wake.set()

    def run(self) -> int:
        lock = HomeLock(self.config.home.lock_file)
        lock.acquire()
        try:
            return self._run_locked()
        finally:
            lock.release()

    def _run_locked(self) -> int:
        cfg = self.config
        # flags from the first instant: a stop or reload during start-up is honoured after it
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        signal.signal(signal.SIGHUP, self._on_hangup)
        log.info(
            "daemon_starting",
            home=str(cfg.home.root),
            version=__version__,
            exit_when_idle=self.exit_when_idle,
        )
        self._start_metrics()  # first: a port it cannot bind stops the start here (exit 78)
        try:
            return self._run_serving()
        finally:
            if self._metrics is not None:
                self._metrics.stop()

    def _start_metrics(self) -> None:
        """The Prometheus endpoint, when `[metrics] listen` is set: prometheus_client is
        imported only then. From here on its counters see every event the daemon logs."""
        cfg = self.config
        if cfg.metrics.listen is None:
            return
        from oneseekd.metrics.server import Metrics

        metrics = Metrics(cfg)
        host, port = metrics.serve()
        self._metrics = metrics
        configure_logging(cfg.log_level, observer=metrics.events.observe)
        log.info("metrics_listening", address=f"{host}:{port}", port=port, path="/metrics")

    def _mark(self, what: str) -> None:
        """The loop's times for the metrics (an alert on a stalled loop watches them)."""
        if self._metrics is not None:
            setattr(self._metrics.marks, what, time.time())

    def _run_serving(self) -> int:
        cfg = self.config
        cfg.home.ensure()
        engine = migrate.open_database(cfg.db_url, cfg.trainer.lease_seconds)
        self._database = DatabaseFile(engine)
        self._register(engine)
        catalog = Catalog(
            engine, model_roots(cfg), cfg.catalog.settle_seconds, host=cfg.catalog.host
        )
        catalog.wakeup = self._wake
        # only the count is kept: the scan's changes (one per model on a new home) are logged
        log.info("catalog_loaded", models=catalog.full_scan().total)
        self._mark("catalog_scan")
        ledger = Ledger.for_home(engine, cfg.home)  # a bad key stops the daemon here
        intake = Intake(
            engine,
            cfg.home,
            ledger=ledger,
            host=cfg.catalog.host,
            roots=model_roots(cfg),
            cpu_processes=cfg.trainer.cpu_processes,
        )
        drops = DropFolder(intake, cfg.home, cfg.intake.settle_seconds)
        drops.database = self._database  # a file is moved only once its row is in this file
        rows = PendingRows(intake, engine)
        supervisor = Supervisor(engine, cfg, self._row_id, ledger=ledger)
        downloads = Downloads(engine, cfg, ledger=ledger, catalog=catalog)
        downloads.recover()  # a download this host's last daemon left resumes from its bytes
        drops.recover()
        rows.poll(force=True)
        try:
            supervisor.recover()
        except Exception as exc:  # retried by the loop (the supervisor resumes its own run)
            log.error("recover_failed", error=f"{type(exc).__name__}: {exc}", exc_info=True)
        self._parts = _Parts(catalog, intake, drops, rows, supervisor, downloads)
        if self._metrics is not None:
            self._metrics.watch(engine)
        watcher = Watcher(catalog)
        watcher.start()
        self._drops_watched = watcher.wake_on(cfg.home.requests, self._wake)
        # the periodic full scan: APScheduler's thread sleeps until it is due, then flags it
        # for the loop (the scan itself runs on the loop, never beside it)
        scheduler = BackgroundScheduler(daemon=True)
        scheduler.add_job(
            self._request_full_scan,
            "interval",
            seconds=cfg.catalog.rescan_interval_seconds,
            id="full_scan",
        )
        scheduler.start()
        self._scheduler = scheduler
        self._watcher = watcher
        log.info("daemon_ready", watched=[str(p) for p in watcher.watched])
        self.notifier.ready(self._status_line(engine, self._parts))
        try:
            self._loop(engine, self._parts)
        finally:
            self.notifier.stopping()
            supervisor.shutdown(urgent=lambda: self.signals > 1)
            try:
                downloads.shutdown()
            except Exception as exc:  # the row waits for the next start either way
                log.error("download_stop_failed", error=f"{type(exc).__name__}: {exc}")
            rows.close()
            scheduler.shutdown(wait=False)
            self._watcher.stop()
            try:
                self._heartbeat(engine, "stopped", stopped=True)
            except SQLAlchemyError as exc:  # the database went away: nothing more to record
                log.error("heartbeat_failed", error=str(exc))
            if self._metrics is not None:  # no read of an engine being disposed
                self._metrics.unwatch()
            engine.dispose()
        if self._database_problem is not None:
            log.error(
                "daemon_stopped",
                reason="database file changed",
                error=self._database_problem,
                exit_status=DatabaseChanged.exit_code,
                detail="restart (systemd does) to open the database file now at the path",
            )
            return DatabaseChanged.exit_code
        log.info("daemon_stopped", reason=getattr(self, "_signal", "idle"))
        return 0

    def _loop(self, engine: Engine, parts: _Parts) -> None:
        probe = ChangeProbe(engine)
        # new download rows are looked for on a change, where there is a probe to tell
        parts.downloads.wait_for_change = probe.available
        try:
            self._loop_until_stopped(engine, parts, probe)
        finally:
            probe.close()

    def _loop_until_stopped(self, engine: Engine, parts: _Parts, probe: ChangeProbe) -> None:
        self._last_beat = self._last_ping = time.monotonic()
        self._last_look = float("-inf")
        failures = 0
        while not self.stop_requested:
            try:
                timeout = self._step(engine, parts, probe)
            except Exception as exc:  # one bad row or a full disk must not end the daemon
                self._watch_anyway(parts)
                failures += 1
                timeout = min(LOOP_BACKOFF_SECONDS * 2 ** (failures - 1), LOOP_BACKOFF_MAX)
                log.error(
                    "loop_step_failed",
                    step=self._doing,
                    error=f"{type(exc).__name__}: {exc}",
                    failures_in_a_row=failures,
                    retry_in_seconds=timeout,
                    exc_info=failures == 1 or failures % 20 == 0,
                )
            else:
                if failures:
                    log.info("loop_recovered", after_failures=failures)
                failures = 0
            if self.exit_when_idle and timeout is None:
                return
            if timeout:
                self._wake.wait(timeout)
                self._wake.clear()

    def _watch_anyway(self, parts: _Parts) -> None:
        """A step failed: the trainer must still be watched (its exit reaped, its lease kept
        or given up in time), whatever else keeps failing."""
        try:
            parts.supervisor.watch()
        except Exception as exc:
            log.error("watch_failed", error=f"{type(exc).__name__}: {exc}")

    def _step(self, engine: Engine, parts: _Parts, probe: ChangeProbe) -> float | None:
        """One turn of the loop; returns how long to sleep, or None when idle and asked to
        exit when idle."""
        catalog = parts.catalog
        self._doing = "database check"
        problem = self._database.problem()
        if problem is not None:
            # nothing more is taken into a file nobody else sees; the next start opens the
            # file at the path (a run in progress checkpoints and resumes, if it is there)
            self._database_problem = problem
            self.stop_requested = True
            log.error(
                "database_file_changed",
                error=problem,
                detail="no more requests are taken; the daemon stops and exits "
                f"{DatabaseChanged.exit_code} to be restarted on the file now at the path",
            )
            return 0.0
        self._doing = "reload"
        if self._reload_due:
            self._reload_due = False
            self._reload(parts)
        ping = self.notifier.watchdog_interval
        if ping is not None and time.monotonic() - self._last_ping >= ping:
            self.notifier.watchdog()  # from the loop itself: a hung loop gets restarted
            self._last_ping = time.monotonic()
        self._doing = "catalog"
        if self._full_scan_due:
            self._full_scan_due = False
            if self._parts_alone.run("catalog", catalog.full_scan) is not None:
                self._mark("catalog_scan")
        self._parts_alone.run("catalog", catalog.process_due)
        taken = 0
        self._doing = "intake"
        if not catalog.pending():
            # requests wait while a model folder settles: a request never races a copy. Each
            # door fails alone: an unreadable requests/ never stops the rows another
            # program INSERTs, nor the queue behind them
            files = self._parts_alone.run("files", parts.drops.poll)
            rows = self._parts_alone.run("rows", parts.rows.poll)
            taken = (files or 0) + (rows or 0)
            if files is not None and rows is not None:  # None: failed, or backing off
                self._mark("intake")
        self._doing = "supervisor"
        now = time.monotonic()
        changed = probe.changed()  # once a tick, for every part that looks only on a change
        # idle, look at the queue only when something changed (a request decided, a run
        # cancelled or finished) or the safety net is due
        net = (
            EMPTY_QUEUE_LOOK_SECONDS
            if probe.available and parts.supervisor.queue_empty
            else QUEUE_LOOK_SECONDS
        )
        if parts.supervisor.busy or taken or changed or now - self._last_look >= net:
            parts.supervisor.tick(accepting=not self.stop_requested)
            self._last_look = now
        self._doing = "downloads"
        if changed:
            parts.downloads.database_changed()
        if not self.stop_requested:  # a thread of its own: never in training's way
            self._parts_alone.run("downloads", parts.downloads.tick)
        self._doing = "idle check"
        if self.exit_when_idle and not self._parts_alone.failing and self._idle(engine, parts):
            return None
        self._doing = "heartbeat"
        if time.monotonic() - self._last_beat >= HEARTBEAT_SECONDS:
            status = self._status_line(engine, parts)
            self._heartbeat(engine, status)
            self.notifier.status(status)
            self._last_beat = time.monotonic()
        if taken:
            return 0.0  # a burst of requests: take the next batch without waiting
        tick = TICK_SECONDS if self._under_way(parts) else IDLE_TICK_SECONDS
        if ping is not None:  # systemd's watchdog is pinged from the loop: never late for it
            tick = min(tick, max(ping - (time.monotonic() - self._last_ping), 0.0))
        due = catalog.next_due()
        timeout = tick if due is None else min(tick, due - time.time())
        return max(timeout, 0.0)

    def _under_way(self, parts: _Parts) -> bool:
        """Whether the loop keeps its fast tick: a trainer or a download to watch, files
        settling in requests/, a stop to carry out, or no watch on requests/ to wake it."""
        return (
            not self._drops_watched
            or self.stop_requested
            or parts.supervisor.busy
            or parts.downloads.busy
            or parts.drops.settling
        )

    @staticmethod
    def _status_line(engine: Engine, parts: _Parts) -> str:
        """What the daemon is doing, for systemd's STATUS= and the daemons table."""
        line = Daemon._training_line(engine, parts)
        job = parts.downloads.job
        return line if job is None else f"{line}; downloading {job.ref}"

    @staticmethod
    def _training_line(engine: Engine, parts: _Parts) -> str:
        child = parts.supervisor.child
        if child is None:
            queued = queue.queue_counts(engine).get("queued", 0)
            return f"idle, {queued} queued" if queued else "idle"
        with read_session(engine) as session:
            progress = session.get_one(Run, child.run_pk).progress or {}
        if progress.get("model"):
            return (
                f"training {child.run_id}: {progress['model']} epoch "
                f"{progress.get('epoch')}/{progress.get('epochs')}, step "
                f"{progress.get('step')}/{progress.get('steps')}"
            )
        return f"training {child.run_id}: starting"

    def _reload(self, parts: _Parts) -> None:
        """SIGHUP: read oneseekd.toml again; an invalid file leaves the running one in force."""
        self.notifier.reloading()
        try:
            new = load_config(self.config.home.root, self.config.db_url)
        except OneseekError as exc:
            log.error(
                "config_reload_failed",
                error=exc.message,
                problems=exc.problems,
                detail="keeping the configuration in force",
            )
            self.notifier.ready("configuration reload refused; see the log")
            return
        old, self.config = self.config, new
        metrics = self._metrics
        configure_logging(new.log_level, observer=metrics.events.observe if metrics else None)
        if new.metrics != old.metrics:
            log.warning(
                "metrics_restart_needed",
                detail="[metrics] changed: the endpoint keeps its settings until the daemon "
                "restarts",
            )
        catalog = parts.catalog
        catalog.settle = new.catalog.settle_seconds
        parts.drops.settle = new.intake.settle_seconds
        parts.supervisor.config = new
        parts.downloads.config = new
        if new.catalog.rescan_interval_seconds != old.catalog.rescan_interval_seconds:
            self._scheduler.reschedule_job(
                "full_scan", trigger="interval", seconds=new.catalog.rescan_interval_seconds
            )
        if new.catalog.extra_roots != old.catalog.extra_roots:
            roots = model_roots(new)
            catalog.roots = roots
            parts.intake.roots = roots
            self._watcher.stop()
            self._watcher = Watcher(catalog)
            self._watcher.start()
            self._drops_watched = self._watcher.wake_on(self.config.home.requests, self._wake)
            self._request_full_scan()
        log.info(
            "config_reloaded",
            log_level=new.log_level,
            settle_seconds=new.catalog.settle_seconds,
            rescan_interval_seconds=new.catalog.rescan_interval_seconds,
            extra_roots=[str(r) for r in new.catalog.extra_roots],
        )
        self.notifier.ready("configuration reloaded")

    @staticmethod
    def _idle(engine: Engine, parts: _Parts) -> bool:
        """Nothing left to do: the catalog is current, every request is taken in, the queue
        is empty and no trainer runs."""
        if parts.catalog.pending() or parts.drops.waiting() or parts.supervisor.busy:
            return False
        if parts.rows.pending_ids():
            return False
        if parts.downloads.busy or parts.downloads.pending_ids():
            return False
        counts = queue.queue_counts(engine)
        return not counts.get("queued") and not counts.get("running")

    def _register(self, engine: Engine) -> None:
        """This daemon's row, unless a live daemon elsewhere has its host name (checked and
        written in one transaction that daemons starting together queue on)."""
        now = utcnow()
        host, home = self.config.catalog.host, str(self.config.home.root.resolve())
        machine = identity.machine_id()
        window = max(self.config.trainer.lease_seconds, 3 * HEARTBEAT_SECONDS)
        with write_session(engine) as session:
            serialize(session, "oneseekd.daemons")
            other = identity.live_namesake(session, host, home, machine, now, window)
            if other is not None:
                raise identity.refuse(host, other, machine)
            row = DaemonRow(
                host=host,
                pid=os.getpid(),
                version=__version__,
                started_at=now,
                heartbeat_at=now,
                activity="starting",
                home=home,
                machine=machine,
            )
            session.add(row)
            session.flush()
            self._row_id = row.id

    def _heartbeat(self, engine: Engine, activity: str, *, stopped: bool = False) -> None:
        now = utcnow()
        values: dict[str, object] = {"heartbeat_at": now, "activity": activity}
        if stopped:
            values["stopped_at"] = now
        with write_session(engine) as session:
            session.execute(update(DaemonRow).where(DaemonRow.id == self._row_id).values(values))
