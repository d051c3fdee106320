"""An idle daemon costs little: no alembic or rich resident, no write transaction per tick.

bench/idle.py measures the figures; these tests guard the mechanisms behind them."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import structlog
from daemon import query
from homes import home_with_a_queued_run, open_home, training_home
from sqlalchemy import Engine, event, text
from sqlalchemy.exc import OperationalError

from oneseekd.catalog.live import Catalog
from oneseekd.catalog.scan import model_roots
from oneseekd.certify.ledger import Ledger
from oneseekd.config import Config, load_config
from oneseekd.daemon import pulse
from oneseekd.daemon.service import Daemon
from oneseekd.daemon.supervisor import Supervisor
from oneseekd.db.engine import ChangeProbe, make_engine, write_session
from oneseekd.db.migrate import head_revision, scripted_head
from oneseekd.hub.downloads import Downloads


def test_the_scripted_head_is_alembic_s_head() -> None:
    assert scripted_head() == head_revision()


def _modules_after_a_daemon_run(home: Path, out: Path) -> list[str]:
    """Run the real entry point to idle, and name which of alembic and rich it had imported."""
    code = (
        "import atexit, json, sys\n"
        f"out = {str(out)!r}\n"
        "def report():\n"
        "    open(out, 'w').write(json.dumps(sorted(m for m in ('alembic', 'rich')"
        " if sys.modules.get(m) is not None)))\n"
        "atexit.register(report)\n"
        f"sys.argv = ['oneseekd', '--home', {str(home)!r}, '--exit-when-idle']\n"
        "from oneseekd.entry import main\n"
        "main()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return list(json.loads(out.read_text()))


def test_a_daemon_on_a_current_database_never_imports_alembic_or_rich(
    tmp_path: Path,
) -> None:
    home = training_home(tmp_path / "home")
    out = tmp_path / "modules"
    # the first start migrates the new database, in a child interpreter
    assert _modules_after_a_daemon_run(home, out) == []
    assert query(home, "SELECT version_num FROM alembic_version") == [(head_revision(),)]
    # every later start finds it current without alembic; rich is never loaded
    assert _modules_after_a_daemon_run(home, out) == []


def test_a_migration_refused_in_the_child_stops_the_daemon_with_the_reason(
    tmp_path: Path,
) -> None:
    home = training_home(tmp_path / "home")
    _config, engine = open_home(home)
    with write_session(engine) as session:
        session.execute(text("UPDATE alembic_version SET version_num = '9999_from_the_future'"))
    engine.dispose()
    done = subprocess.run(
        [sys.executable, "-m", "oneseekd", "--home", str(home), "--exit-when-idle"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 3, done.stderr[-2000:]
    assert "is at revision 9999_from_the_future, newer than this oneseekd knows" in done.stderr
    assert "upgrade oneseekd to the release that wrote this database" in done.stderr


def test_a_database_behind_the_scripts_is_still_seen_as_behind(tmp_path: Path) -> None:
    home = training_home(tmp_path / "home")
    _config, engine = open_home(home)
    with write_session(engine) as session:
        session.execute(text("UPDATE alembic_version SET version_num = '0002_requests_runs'"))
    from oneseekd.db.migrate import check_revision

    assert check_revision(engine).verdict == "behind"
    engine.dispose()


def test_the_change_probe_sees_every_commit_and_nothing_else(tmp_path: Path) -> None:
    home = training_home(tmp_path / "home")
    config, engine = open_home(home)
    probe = ChangeProbe(engine)
    try:
        assert probe.changed()  # the first look
        assert not probe.changed()
        with engine.connect() as conn:  # a read is no change
            conn.execute(text("SELECT count(*) FROM runs")).scalar()
        assert not probe.changed()
        with write_session(engine) as session:  # a transaction that writes nothing
            session.execute(text("SELECT 1"))
        assert not probe.changed()
        other = make_engine(config.db_url)  # another program's commit
        with other.begin() as conn:
            conn.execute(text("UPDATE daemons SET activity = 'x'"))
            conn.execute(
                text("INSERT INTO training_requests (payload, status) VALUES ('{}', 'pending')")
            )
        other.dispose()
        assert probe.changed()
        assert not probe.changed()
        # what is written through the probe's own connection is not a change ...
        probe.execute("INSERT INTO training_requests (payload) VALUES (?)", ("own",))
        assert not probe.changed()
        with engine.connect() as conn:  # ... is written all the same
            own = "SELECT COUNT(*) FROM training_requests WHERE payload = 'own'"
            assert conn.execute(text(own)).scalar_one() == 1
        with write_session(engine) as session:  # the daemon's other connections are others
            session.execute(text("UPDATE runs SET state = state"))
            session.execute(text("INSERT INTO training_requests (payload) VALUES ('{}')"))
        assert probe.changed()
        # its failures are SQLAlchemy's, which the daemon's callers already catch
        with pytest.raises(OperationalError, match="no such table: no_such_table"):
            probe.execute("SELECT * FROM no_such_table")
    finally:
        probe.close()
        engine.dispose()


def test_a_last_heartbeat_that_fails_is_logged_and_the_daemon_still_stops_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The heartbeat at the stop goes over the probe's sqlite3 connection; the database going
    away under it is logged (`heartbeat_failed`) and the daemon ends as it would have, with its
    exit status, not with a sqlite3 traceback out of its shutdown."""
    from structlog.testing import capture_logs

    from oneseekd.daemon.pulse import Pulse

    home = training_home(tmp_path / "home")
    real = Pulse.heartbeat

    def heartbeat(self: Pulse, activity: str, *, stopped: bool = False) -> None:
        if stopped:  # the table goes away under the last write, by another program's hand
            other = make_engine(load_config(home, env={}).db_url)
            with other.begin() as conn:
                conn.execute(text("ALTER TABLE daemons RENAME TO daemons_gone"))
            other.dispose()
        real(self, activity, stopped=stopped)

    monkeypatch.setattr(Pulse, "heartbeat", heartbeat)
    with capture_logs() as events:
        assert Daemon(load_config(home, env={}), exit_when_idle=True).run() == 0
    [failed] = [e for e in events if e["event"] == "heartbeat_failed"]
    assert "no such table: daemons" in failed["error"]


def calls_of(
    monkeypatch: pytest.MonkeyPatch,
    owner: type,
    name: str,
    clock: Callable[[], float] = time.monotonic,
) -> list[float]:
    """When each call of the method `owner.name` was made, by `clock`; the method still runs."""
    times: list[float] = []
    real = getattr(owner, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        times.append(clock())
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return times


def _run_through_a_quiet_window(home: Path, settle: float, window: float) -> tuple[float, float]:
    """Run a daemon on `home` until `settle` seconds past its start-up and then through a
    quiet `window`, and stop it; the window's start and end (time.monotonic())."""
    daemon = Daemon(load_config(home, env={}))
    marks: dict[str, float] = {}

    def stop() -> None:
        while getattr(daemon, "_parts", None) is None:
            time.sleep(0.05)
        time.sleep(settle)
        marks["start"] = time.monotonic()
        time.sleep(window)
        marks["end"] = time.monotonic()
        daemon.stop_requested = True

    stopper = threading.Thread(target=stop)
    stopper.start()
    try:
        assert daemon.run() == 0
    finally:
        stopper.join()
    return marks["start"], marks["end"]


def test_an_idle_daemon_looks_at_the_queue_only_when_the_database_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Idle, the supervisor's look runs when something committed or, with the queue empty,
    once an EMPTY_QUEUE_LOOK_SECONDS: not at every 0.1 s tick (about 60 looks in 6 s), nor once
    a second (each look a read that costs an idle daemon on a busy machine 5 ms of CPU), nor
    after each of the daemon's own heartbeats (here one a second)."""
    home = training_home(tmp_path / "home")
    ticks = calls_of(monkeypatch, Supervisor, "tick")
    monkeypatch.setattr(pulse, "HEARTBEAT_SECONDS", 1.0)
    window = 6.0
    start, end = _run_through_a_quiet_window(home, 0.5, window)
    quiet = [t for t in ticks if start <= t <= end]
    limit = window / pulse.EMPTY_QUEUE_LOOK_SECONDS + 2  # with a look per heartbeat: 9
    assert len(quiet) <= limit, f"{len(quiet)} looks at the queue in {window} s idle"


def test_a_step_that_raises_is_logged_and_retried_and_the_daemon_keeps_serving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row that trips a bug, or a disk that fills for a moment, must not end the daemon
    (under systemd: a restart loop, then a failed unit and nothing trained)."""
    from structlog.testing import capture_logs

    from oneseekd.intake.rows import PendingRows

    home = training_home(tmp_path / "home")
    (home / "requests").mkdir(exist_ok=True)
    (home / "requests" / "one.json").write_text(
        json.dumps({"base_models": ["qwen"], "dataset": "civic.jsonl"})
    )
    real_poll = PendingRows.poll
    calls = {"n": 0}

    def failing_twice(self: PendingRows) -> int:
        calls["n"] += 1
        if 2 <= calls["n"] <= 3:  # the first call is the start-up's, outside the loop
            raise RuntimeError("a bug in intake")
        return real_poll(self)

    monkeypatch.setattr(PendingRows, "poll", failing_twice)
    kept = structlog.get_config()  # an earlier test may have left the level at warning
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    try:
        with capture_logs() as events:
            assert Daemon(load_config(home, env={}), exit_when_idle=True).run() == 0
    finally:
        structlog.configure(**kept)
    # the row door fails alone, backing off on its own; the files door kept serving
    failed = [e for e in events if e["event"] == "part_failed"]
    assert [(e["part"], e["error"], e["failures_in_a_row"]) for e in failed] == [
        ("rows", "RuntimeError: a bug in intake", 1),
        ("rows", "RuntimeError: a bug in intake", 2),
    ]
    assert [e.get("exc_info") for e in failed] == [True, False]  # the traceback once
    assert [e["after_failures"] for e in events if e["event"] == "part_recovered"] == [2]
    assert query(home, "SELECT state FROM runs") == [("succeeded",)]


def _statements(engine_statements: list[tuple[float, str]]) -> Callable[..., None]:
    """A listener on engines: each statement this thread (the daemon's loop) sends, with when;
    a write from any thread (the metrics snapshot's reads are its own)."""
    loop = threading.current_thread()

    def record(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if threading.current_thread() is loop or statement == "BEGIN IMMEDIATE":
            engine_statements.append((time.monotonic(), statement))

    return record


def test_an_idle_daemon_with_metrics_on_writes_only_its_heartbeat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Idle, with nothing queued or running and metrics on (its snapshot read every 0.2 s):
    the only write is the daemon's heartbeat, where each look at the queue was two write
    transactions (cancel flags, a claim), one a second; and neither model_downloads nor
    training_requests is looked at for new rows: that is done after a commit, and the
    heartbeat is the daemon's own (written over its probe's connection, which SQLite leaves
    out of its data_version). The supervisor's look goes over that connection too."""
    home = training_home(tmp_path / "home")
    with (home / "oneseekd.toml").open("a") as fh:
        fh.write('[metrics]\nlisten = "127.0.0.1:0"\nrefresh_seconds = 0.2\n')
    monkeypatch.setattr(pulse, "HEARTBEAT_SECONDS", 2.0)
    sent: list[tuple[float, str]] = []
    listener = _statements(sent)
    event.listen(Engine, "before_cursor_execute", listener)
    probed: list[tuple[float, str]] = []  # what the loop sends over the probe's connection
    real_execute = ChangeProbe.execute

    def execute(self: ChangeProbe, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
        probed.append((time.monotonic(), sql))
        return real_execute(self, sql, params)

    monkeypatch.setattr(ChangeProbe, "execute", execute)
    try:
        start, end = _run_through_a_quiet_window(home, 1.0, 4.0)
    finally:
        event.remove(Engine, "before_cursor_execute", listener)
    quiet = [sql for at, sql in sent if start <= at <= end]
    own = [sql for at, sql in probed if start <= at <= end]
    heartbeats = [sql for sql in own if sql.startswith("UPDATE daemons SET heartbeat_at")]
    assert 1 <= len(heartbeats) <= 3  # one every 2 s
    assert [sql for sql in own if sql.lstrip().upper().startswith(("UPDATE", "INSERT"))] == (
        heartbeats
    )
    writes = [sql for sql in quiet if sql == "BEGIN IMMEDIATE" or sql.startswith("UPDATE")]
    assert writes == []  # nothing else writes
    assert len([sql for sql in own if "FROM runs" in sql]) <= 2  # the 5 s safety net
    looks = [
        sql
        for sql in quiet
        if ("FROM model_downloads" in sql or "FROM training_requests" in sql) and "pending" in sql
    ]
    assert looks == []  # without the gate: about 16; with a look after each heartbeat: 4


def test_a_supervisor_with_an_empty_queue_takes_no_write_transaction(tmp_path: Path) -> None:
    """Every step of a tick acts on a queued or a running run: with none, one read of the queue
    and nothing written (it used to be a cancel-flag and a claim write transaction)."""
    home = training_home(tmp_path / "home")
    config, engine = open_home(home)
    supervisor = Supervisor(engine, config, None)
    sent: list[tuple[float, str]] = []
    listener = _statements(sent)
    event.listen(engine, "before_cursor_execute", listener)
    try:
        for _ in range(3):
            supervisor.tick()
    finally:
        event.remove(engine, "before_cursor_execute", listener)
        engine.dispose()
    statements = [sql for _, sql in sent]
    assert "BEGIN IMMEDIATE" not in statements
    assert len([sql for sql in statements if "FROM runs" in sql]) == 3, statements


def _downloads(root: Path) -> tuple[Config, Engine, Downloads]:
    """A training home's Downloads as the daemon's loop drives them on SQLite: pending rows are
    looked for only once told of a change."""
    config, engine = open_home(training_home(root))
    catalog = Catalog(engine, model_roots(config), 0.0, host=config.catalog.host)
    downloads = Downloads(
        engine, config, ledger=Ledger.for_home(engine, config.home), catalog=catalog
    )
    downloads.wait_for_change = True
    return config, engine, downloads


def test_new_download_rows_are_looked_for_only_after_a_commit(tmp_path: Path) -> None:
    """The loop tells Downloads when its data_version probe saw a commit; until then a row
    INSERTed is not looked for, and once told, the next tick takes it (here: fails it, the
    repository name being impossible, with no Hub needed)."""
    config, engine, downloads = _downloads(tmp_path / "home")
    try:
        downloads.tick()  # the first look is owed: nothing there
        other = make_engine(config.db_url)
        with other.begin() as conn:
            conn.execute(text("INSERT INTO model_downloads (repository) VALUES ('not a repo')"))
        other.dispose()

        def status() -> str:
            with engine.connect() as conn:
                return str(conn.execute(text("SELECT status FROM model_downloads")).scalar_one())

        downloads._last_look = float("-inf")
        downloads.tick()
        assert status() == "pending"  # no change reported: not looked for
        downloads.database_changed()
        downloads._last_look = float("-inf")
        downloads.tick()
        assert status() == "failed"
    finally:
        downloads.shutdown()
        engine.dispose()


def test_rows_left_by_a_dead_pull_are_looked_for_twice_a_minute_not_at_every_tick(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each look for a `oneseekctl pull` that died (a read through the ORM) costs an idle
    daemon 15-35 ms of CPU on a busy machine, cold: at 5 s it was a fifth of the idle figure.
    Over a minute of 0.1 s ticks it is looked for at the first tick and every 30 s after."""
    from oneseekd.hub import downloads as module

    _config, engine, downloads = _downloads(tmp_path / "home")
    clock = {"now": 1000.0}
    monkeypatch.setattr(module.time, "monotonic", lambda: clock["now"])
    looks = calls_of(monkeypatch, Downloads, "recover", clock=lambda: clock["now"])
    try:
        for step in range(600):  # a minute of ticks
            clock["now"] = 1000.0 + step * 0.1
            downloads.tick()
    finally:
        downloads.shutdown()
        engine.dispose()
    assert len(looks) == 2, looks
    assert looks[1] - looks[0] >= module.STALE_CHECK_SECONDS


def test_an_idle_daemon_ticks_twice_a_second_and_a_dropped_file_wakes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each tick costs an idle daemon 0.3-2 ms of CPU on a busy machine, cold: ten a second
    were most of its idle figure. With nothing under way it ticks every IDLE_TICK_SECONDS;
    requests/ is watched, so a file dropped there wakes the loop at once."""
    home = training_home(tmp_path / "home")
    steps = calls_of(monkeypatch, Daemon, "_step")
    window = 3.0
    start, end = _run_through_a_quiet_window(home, 0.5, window)
    quiet = [t for t in steps if start <= t <= end]
    assert len(quiet) <= window / pulse.IDLE_TICK_SECONDS + 2, f"{len(quiet)} ticks"


def test_a_change_in_a_watched_folder_sets_the_wake_event(tmp_path: Path) -> None:
    from oneseekd.catalog.watch import Watcher

    home = training_home(tmp_path / "home")
    config, engine = open_home(home)
    catalog = Catalog(engine, model_roots(config), 0.0, host=config.catalog.host)
    watcher = Watcher(catalog)
    watcher.start()
    wake = threading.Event()
    try:
        requests = home / "requests"
        requests.mkdir(exist_ok=True)
        assert watcher.wake_on(requests, wake)
        assert not wake.is_set()
        (requests / "one.json").write_text("{}")
        assert wake.wait(10)
        assert not watcher.wake_on(home / "no-such-folder", threading.Event())
    finally:
        watcher.stop()
        engine.dispose()


def test_without_a_change_probe_the_queue_is_looked_at_once_a_second_not_at_every_tick(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL has no data_version: the loop cannot tell a commit, so the rows door looks
    at every tick (through the pending rows' index) and the supervisor at its safety net,
    QUEUE_LOOK_SECONDS, not at every tick. An in-memory SQLite database has no probe either."""
    from types import SimpleNamespace

    from oneseekd.daemon.notify import Notifier
    from oneseekd.daemon.pulse import Pulse

    config = load_config(training_home(tmp_path / "home"), env={})
    engine = make_engine("sqlite://")
    clock = {"now": 1000.0}
    monkeypatch.setattr(pulse.time, "monotonic", lambda: clock["now"])
    beat = Pulse(engine, config, Notifier(env={}))
    idle = SimpleNamespace(busy=False, queue_empty=True)
    try:
        assert not beat.probed
        looks = []
        for step in range(30):  # 3 s of 0.1 s ticks
            clock["now"] = 1000.0 + step * 0.1
            if beat.queue_look_due(idle, nudged=beat.changed()):  # type: ignore[arg-type]
                looks.append(clock["now"])
        assert len(looks) == 3, looks
        assert beat.queue_look_due(idle, nudged=True)  # type: ignore[arg-type]
        busy = SimpleNamespace(busy=True, queue_empty=False)
        assert beat.queue_look_due(busy, nudged=False)  # type: ignore[arg-type]
    finally:
        beat.close()
        engine.dispose()


def test_the_pulse_s_own_reads_and_writes_are_those_of_the_orm(tmp_path: Path) -> None:
    """The heartbeat and the idle looks go over the probe's sqlite3 connection: the row they
    write reads back through the ORM as the ORM's own would (UTC times, the stop), the
    supervisor's look finds the queue's states as the ORM's query does, and the look for a
    dead pull sees only this host's `running` downloads."""
    from sqlalchemy import select

    from oneseekd.daemon.notify import Notifier
    from oneseekd.daemon.pulse import Pulse
    from oneseekd.daemon.supervisor import _live_states
    from oneseekd.db.engine import read_session
    from oneseekd.db.models import Daemon as DaemonRow
    from oneseekd.db.models import utcnow

    home, _run_id = home_with_a_queued_run(tmp_path / "home")
    config, engine = open_home(home)
    beat = Pulse(engine, config, Notifier(env={}))
    try:
        assert beat.probed
        row_id = beat.register()
        before = utcnow()
        beat.heartbeat("idle, 1 queued")
        with read_session(engine) as session:
            row = session.scalars(select(DaemonRow).where(DaemonRow.id == row_id)).one()
            assert row.activity == "idle, 1 queued"
            assert row.heartbeat_at is not None and row.heartbeat_at >= before
            assert row.stopped_at is None
        beat.heartbeat("stopped", stopped=True)
        with read_session(engine) as session:
            row = session.scalars(select(DaemonRow).where(DaemonRow.id == row_id)).one()
            assert row.stopped_at is not None and row.stopped_at == row.heartbeat_at
        assert beat.live_states() == _live_states(engine) == {"queued"}
        with write_session(engine) as session:
            session.execute(text("UPDATE runs SET state = 'succeeded'"))
        assert beat.live_states() == _live_states(engine) == set()
        assert not beat.downloads_running()
        with write_session(engine) as session:  # another host's pull: not this daemon's
            session.execute(
                text(
                    "INSERT INTO model_downloads (repository, status, host) "
                    "VALUES ('org/a', 'running', 'elsewhere'), ('org/b', 'pending', :host)"
                ),
                {"host": config.catalog.host},
            )
        assert not beat.downloads_running()
        with write_session(engine) as session:
            session.execute(text("UPDATE model_downloads SET status = 'running'"))
        assert beat.downloads_running()
    finally:
        beat.close()
        engine.dispose()
