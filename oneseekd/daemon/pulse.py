"""The loop's rhythm and the daemon's row: how long the loop sleeps, when it looks at the queue,
when it pings systemd's watchdog, and its heartbeat in the daemons table.

What an idle daemon costs is set by how often it wakes and what each wake-up reads and writes
(docs/reliability.md, "Idle cost"): every figure below is a trade between that and how soon
something is seen."""

from __future__ import annotations

import os
import time

from sqlalchemy import Engine, update

from oneseekd import __version__, queue
from oneseekd.config import Config
from oneseekd.daemon import identity
from oneseekd.daemon.notify import Notifier
from oneseekd.daemon.supervisor import Supervisor
from oneseekd.db.engine import (
    DAEMON_PAGE_CACHE_KIB,
    ChangeProbe,
    read_session,
    serialize,
    write_session,
    writer,
)
from oneseekd.db.models import Daemon as DaemonRow
from oneseekd.db.models import Run, utcnow
from oneseekd.hub.downloads import Downloads
from oneseekd.times import utc_text

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


class Pulse:
    """One per daemon, used from its loop's thread only.

    The heartbeat is written over the change probe's own connection: SQLite leaves a
    connection's own commits out of its `data_version`, so the daemon's heartbeat is never
    taken for another program's commit (each used to cost a look at the queue, the rows and
    the downloads every 5 s). Everything the daemon writes elsewhere (a request decided, a run
    finished) is still a change, and should be."""

    def __init__(self, engine: Engine, config: Config, notifier: Notifier) -> None:
        self.engine = engine
        self.config = config
        self.notifier = notifier
        self.row_id: int | None = None
        self.probe = ChangeProbe(engine, page_cache_kib=DAEMON_PAGE_CACHE_KIB)
        self._last_beat = self._last_ping = time.monotonic()
        self._last_look = float("-inf")

    @property
    def probed(self) -> bool:
        """Whether changes are seen (SQLite); elsewhere every part looks at every tick."""
        return self.probe.available

    def changed(self) -> bool:
        """Whether another connection committed since the last call: once a tick, for every
        part that looks only on a change. False without a probe (`probed`): there, the
        parts look at every tick or at their safety net."""
        return self.probe.changed()

    def register(self) -> int:
        """This daemon's row, unless a live daemon elsewhere has its host name (checked and
        written in one transaction that daemons starting together queue on)."""
        now = utcnow()
        host, home = self.config.catalog.host, str(self.config.home.root.resolve())
        machine = identity.machine_id()
        window = max(self.config.trainer.lease_seconds, 3 * HEARTBEAT_SECONDS)
        with write_session(self.engine) as session:
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
            self.row_id = row.id
        return row.id

    def ping_watchdog(self) -> None:
        """systemd's watchdog, pinged from the loop itself: a hung loop gets restarted."""
        ping = self.notifier.watchdog_interval
        if ping is not None and time.monotonic() - self._last_ping >= ping:
            self.notifier.watchdog()
            self._last_ping = time.monotonic()

    def queue_look_due(self, supervisor: Supervisor, *, nudged: bool) -> bool:
        """Whether the supervisor looks at the queue this tick: always while a trainer runs or
        when `nudged` (a request taken, a commit seen); idle, only at the safety net."""
        now = time.monotonic()
        net = (
            EMPTY_QUEUE_LOOK_SECONDS
            if self.probed and supervisor.queue_empty
            else QUEUE_LOOK_SECONDS
        )
        if supervisor.busy or nudged or now - self._last_look >= net:
            self._last_look = now
            return True
        return False

    def beat(self, supervisor: Supervisor, downloads: Downloads) -> None:
        """The heartbeat, when due: the status line to the daemons table and to systemd."""
        if time.monotonic() - self._last_beat < HEARTBEAT_SECONDS:
            return
        status = self.status_line(supervisor, downloads)
        self.heartbeat(status)
        self.notifier.status(status)
        self._last_beat = time.monotonic()

    def sleep(self, *, under_way: bool, due: float | None) -> float:
        """How long the loop sleeps: a short tick while something is under way, a longer one
        idle; never past the catalog's next due folder (`due`, a time.time()) nor past the
        next watchdog ping."""
        tick = TICK_SECONDS if under_way else IDLE_TICK_SECONDS
        ping = self.notifier.watchdog_interval
        if ping is not None:
            tick = min(tick, max(ping - (time.monotonic() - self._last_ping), 0.0))
        timeout = tick if due is None else min(tick, due - time.time())
        return max(timeout, 0.0)

    def status_line(self, supervisor: Supervisor, downloads: Downloads) -> str:
        """What the daemon is doing, for systemd's STATUS= and the daemons table."""
        line = self._training_line(supervisor)
        job = downloads.job
        return line if job is None else f"{line}; downloading {job.ref}"

    def _training_line(self, supervisor: Supervisor) -> str:
        child = supervisor.child
        if child is None:
            if supervisor.queue_empty:  # its last look found nothing queued: no query
                return "idle"
            queued = queue.queue_counts(self.engine).get("queued", 0)
            return f"idle, {queued} queued" if queued else "idle"
        with read_session(self.engine) as session:
            progress = session.get_one(Run, child.run_pk).progress or {}
        if progress.get("model"):
            return (
                f"training {child.run_id}: {progress['model']} epoch "
                f"{progress.get('epoch')}/{progress.get('epochs')}, step "
                f"{progress.get('step')}/{progress.get('steps')}"
            )
        return f"training {child.run_id}: starting"

    def heartbeat(self, activity: str, *, stopped: bool = False) -> None:
        """The daemon's row: alive now, doing `activity`. On SQLite over the probe's own
        connection (never a change the loop looks after, and a fraction of the memory
        touched); elsewhere one Core UPDATE."""
        now = utcnow()
        if self.probe.available:
            self.probe.execute(
                "UPDATE daemons SET heartbeat_at = ?, activity = ?"
                + (", stopped_at = ?" if stopped else "")
                + " WHERE id = ?",
                (utc_text(now), activity, *((utc_text(now),) if stopped else ()), self.row_id),
            )
            return
        values: dict[str, object] = {"heartbeat_at": now, "activity": activity}
        if stopped:
            values["stopped_at"] = now
        with writer(self.engine).begin() as conn:
            conn.execute(update(DaemonRow).where(DaemonRow.id == self.row_id).values(values))

    def downloads_running(self) -> bool:
        """Whether this host has a model download `running` (a dead `oneseekctl pull` leaves
        one): the idle loop's look every 30 s, over the probe's connection."""
        return bool(
            self.probe.execute(
                "SELECT 1 FROM model_downloads WHERE status = 'running' AND host = ? LIMIT 1",
                (self.config.catalog.host,),
            )
        )

    def live_states(self) -> set[str]:
        """Which of `queued` and `running` some run is in (any host's), from the queue's
        index, over the probe's connection: the supervisor's look, every few seconds idle
        and at every tick while a trainer runs. Only where `probed`."""
        rows = self.probe.execute(
            "SELECT DISTINCT state FROM runs WHERE state IN ('queued', 'running')"
        )
        return {str(state) for (state,) in rows}

    def close(self) -> None:
        self.probe.close()
