"""The daemon: wires the components, owns the main loop, turns signals into flags.

Its command line is command.py's; the supervisor of the trainer child is supervisor.py's."""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING

import structlog
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from oneseekd import __version__, queue
from oneseekd.alone import Alone
from oneseekd.catalog.live import Catalog
from oneseekd.catalog.scan import model_roots
from oneseekd.catalog.watch import Watcher
from oneseekd.certify.ledger import Ledger
from oneseekd.config import Config, load_config
from oneseekd.daemon.lock import HomeLock
from oneseekd.daemon.notify import Notifier
from oneseekd.daemon.pulse import Pulse
from oneseekd.daemon.supervisor import Supervisor
from oneseekd.db import migrate
from oneseekd.db.engine import DatabaseChanged, DatabaseFile
from oneseekd.errors import OneseekError
from oneseekd.hub.downloads import Downloads
from oneseekd.intake.accept import Intake
from oneseekd.intake.dropfolder import DropFolder
from oneseekd.intake.rows import PendingRows
from oneseekd.logs import configure_logging
from oneseekd.wakeup import Wakeup

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
        self._parts_alone = Alone()  # the doors and the catalog fail (and back off) alone
        self._database_problem: str | None = None
        self._wake = Wakeup()  # set from signal handlers too: never a threading.Event
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
        # flags from the first instant: a stop or reload during start-up is honoured after it
        caught = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        kept = {sig: signal.getsignal(sig) for sig in caught}
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        signal.signal(signal.SIGHUP, self._on_hangup)
        try:
            return self._run_locked()
        finally:
            for sig, handler in kept.items():
                if handler is not None:  # None: not set from Python, nothing to put back
                    signal.signal(sig, handler)
            self._wake.close()
            lock.release()

    def _run_locked(self) -> int:
        cfg = self.config
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
        pulse = Pulse(engine, cfg, self.notifier)
        try:
            pulse.register()
            return self._serve(engine, pulse)
        finally:
            pulse.close()

    def _serve(self, engine: Engine, pulse: Pulse) -> int:
        cfg = self.config
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
        supervisor = Supervisor(engine, cfg, pulse.row_id, ledger=ledger)
        downloads = Downloads(engine, cfg, ledger=ledger, catalog=catalog)
        if pulse.probed:  # their idle looks as plain statements on the probe's connection
            supervisor.live_states = pulse.live_states
            downloads.running_here = pulse.downloads_running
            downloads.wait_for_change = True  # new rows are looked for once a change is told
        downloads.recover()  # a download this host's last daemon left resumes from its bytes
        drops.recover()
        rows.poll()
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
        self.notifier.ready(pulse.status_line(supervisor, downloads))
        try:
            self._loop(pulse, self._parts)
        finally:
            self.notifier.stopping()
            supervisor.shutdown(urgent=lambda: self.signals > 1)
            try:
                downloads.shutdown()
            except Exception as exc:  # the row waits for the next start either way
                log.error("download_stop_failed", error=f"{type(exc).__name__}: {exc}")
            scheduler.shutdown(wait=False)
            self._watcher.stop()
            try:
                pulse.heartbeat("stopped", stopped=True)
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

    def _loop(self, pulse: Pulse, parts: _Parts) -> None:
        failures = 0
        while not self.stop_requested:
            try:
                timeout = self._step(pulse, parts)
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

    def _watch_anyway(self, parts: _Parts) -> None:
        """A step failed: the trainer must still be watched (its exit reaped, its lease kept
        or given up in time), whatever else keeps failing."""
        try:
            parts.supervisor.watch()
        except Exception as exc:
            log.error("watch_failed", error=f"{type(exc).__name__}: {exc}")

    def _step(self, pulse: Pulse, parts: _Parts) -> float | None:
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
        pulse.ping_watchdog()
        self._doing = "catalog"
        if self._full_scan_due:
            self._full_scan_due = False
            if self._parts_alone.run("catalog", catalog.full_scan) is not None:
                self._mark("catalog_scan")
        self._parts_alone.run("catalog", catalog.process_due)
        # once a tick, for every part that looks only on a change: another program's commit,
        # or the daemon's own writes of the last tick (a request decided, a run finished)
        changed = pulse.changed()
        if changed or not pulse.probed:  # owed by each part until it has looked
            parts.rows.database_changed()
            parts.downloads.database_changed()
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
        # idle, the queue is looked at only when something changed (a request decided, a run
        # cancelled or finished) or the safety net is due
        if pulse.queue_look_due(parts.supervisor, nudged=bool(taken) or changed):
            parts.supervisor.tick(accepting=not self.stop_requested)
        self._doing = "downloads"
        if not self.stop_requested:  # a thread of its own: never in training's way
            self._parts_alone.run("downloads", parts.downloads.tick)
        self._doing = "idle check"
        if self.exit_when_idle and not self._parts_alone.failing and self._idle(pulse, parts):
            return None
        self._doing = "heartbeat"
        pulse.beat(parts.supervisor, parts.downloads)
        if taken:
            return 0.0  # a burst of requests: take the next batch without waiting
        return pulse.sleep(under_way=self._under_way(parts), due=catalog.next_due())

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
    def _idle(pulse: Pulse, parts: _Parts) -> bool:
        """Nothing left to do: the catalog is current, every request is taken in, the queue
        is empty and no trainer runs."""
        if parts.catalog.pending() or parts.drops.waiting() or parts.supervisor.busy:
            return False
        if parts.rows.pending_ids():
            return False
        if parts.downloads.busy or parts.downloads.pending_ids():
            return False
        counts = queue.queue_counts(pulse.engine)
        return not counts.get("queued") and not counts.get("running")
