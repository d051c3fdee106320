"""Engines: SQLite in WAL mode with a busy timeout and foreign keys on; any other URL as given.

pysqlite's own transaction handling is switched off so that SQLAlchemy emits BEGIN itself:
writers ask for BEGIN IMMEDIATE (see `writer`), which takes the write lock up front and waits
on the busy timeout instead of failing a lock upgrade with `database is locked`.

PostgreSQL lets writers run side by side, so what SQLite's single write lock serialized for
free is serialized explicitly there: `serialize` takes a transaction-scoped advisory lock.

On PostgreSQL every session is also bounded by the claim's lease (`session_limits`): a process
frozen inside a transaction (a VM pause, SIGSTOP, a laptop lid) holds its row locks only until
the server ends its session, so that a takeover, which skips locked rows, gets an expired run
within one lease plus one heartbeat whatever the old holder is doing (docs/scale-out.md).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from oneseekd.config import DEFAULT_LEASE_SECONDS, SQLITE_BUSY_TIMEOUT_MS
from oneseekd.errors import DatabaseError

_BEGIN_OPTION = "oneseek_sqlite_begin"


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def is_postgresql(engine: Engine | Connection) -> bool:
    return engine.dialect.name == "postgresql"


def _text_or_surrogates(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def session_limits(lease_seconds: float) -> dict[str, int]:
    """PostgreSQL's per-session bounds (milliseconds) for a fleet whose claims last
    `lease_seconds`. Half a lease each: a session frozen inside a transaction is ended (its
    locks freed) before the lease it last committed runs out, and no statement, a lock wait
    included, outlasts a lease. Every transaction of oneseekd is a few short statements;
    only migrations run longer, and they run without these bounds."""
    half = max(int(lease_seconds * 1000 / 2), 500)
    return {
        "idle_in_transaction_session_timeout": half,
        "statement_timeout": half,
        "lock_timeout": half,
    }


def make_engine(
    url: str,
    *,
    lease_seconds: float | None = DEFAULT_LEASE_SECONDS,
    page_cache_kib: int | None = None,
) -> Engine:
    """An engine on `url`. On PostgreSQL its sessions are bounded by `lease_seconds` (the
    daemon and its trainers pass `[trainer] lease_seconds`); None leaves them unbounded,
    for migrations. On SQLite, `page_cache_kib` bounds each connection's page cache (SQLite's
    default is 2 MiB: None keeps it)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        connect_args: dict[str, Any] = {}
        if parsed.get_backend_name() == "postgresql" and lease_seconds is not None:
            settings = " ".join(f"-c {k}={v}" for k, v in session_limits(lease_seconds).items())
            given = parsed.query.get("options")  # the URL's own options come after, and win
            given = " ".join(given) if isinstance(given, tuple) else given
            connect_args["options"] = f"{settings} {given}" if given else settings
        return create_engine(url, pool_pre_ping=True, connect_args=connect_args)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # SQLAlchemy emits BEGIN below
        # TEXT that is not UTF-8 (another program's bytes) would make sqlite3 raise on fetch,
        # failing every read of the row; kept as surrogates, the reader can tell and say so
        dbapi_conn.text_factory = _text_or_surrogates
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        if page_cache_kib is not None:
            cursor.execute(f"PRAGMA cache_size=-{int(page_cache_kib)}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get(_BEGIN_OPTION, "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


# the daemon's connections: what it reads idle (the queue's index, the metrics' counts) is a
# few pages, and a page it no longer holds is a read from the system's file cache away; each
# connection's 2 MiB default filled with the catalog's pages at 1,000 models (0.6-0.8 MB more
# resident, bench/idle.py)
DAEMON_PAGE_CACHE_KIB = 256


def release_memory(engine: Engine) -> None:
    """Have SQLite free what it can of a connection's memory (its page cache; a scan of 1,000
    models leaves 0.6 MB there that an idle daemon does not need): the pooled connection a
    burst of work just used. Nothing on other databases."""
    if is_sqlite(engine):
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA shrink_memory")


def writer(engine: Engine) -> Engine:
    """The same engine, whose transactions take SQLite's write lock at BEGIN."""
    if is_sqlite(engine):
        return engine.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"})
    return engine


@contextmanager
def write_session(engine: Engine) -> Iterator[Session]:
    """A session in one write transaction, committed on success, rolled back on error."""
    factory = sessionmaker(bind=writer(engine), expire_on_commit=False)
    with factory.begin() as session:
        yield session


@contextmanager
def read_session(engine: Engine) -> Iterator[Session]:
    factory = sessionmaker(bind=engine, expire_on_commit=False)
    with factory() as session:
        yield session


def serialize(session: Session, name: str) -> None:
    """Hold the lock `name` until this transaction ends, against every other daemon and
    trainer writing to the same database. SQLite needs nothing: a writer's BEGIN IMMEDIATE
    already holds the one write lock."""
    if not is_postgresql(session.get_bind()):
        return
    session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_key(name)})


def lock_key(name: str) -> int:
    """The 64-bit advisory lock key of a lock's name."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def database_now(session: Session) -> datetime:
    """The database's clock, where it has one that every host shares (PostgreSQL): leases are
    compared across hosts, so they must not depend on each host's clock. SQLite is one
    machine's file: its clock is this process's."""
    if is_postgresql(session.get_bind()):
        now = session.execute(text("SELECT clock_timestamp()")).scalar_one()
        assert isinstance(now, datetime)
        return now.astimezone(UTC)
    return datetime.now(UTC)


@contextmanager
def foreign_keys_off(conn: Connection) -> Iterator[None]:
    """Migrations that rebuild a SQLite table: with foreign keys on, dropping the old table
    would cascade-delete the rows that refer to it. The pragma only works outside a
    transaction, so it is set on the driver's connection before BEGIN."""
    if conn.dialect.name != "sqlite":
        yield
        return
    raw = conn.connection.driver_connection
    assert raw is not None
    raw.execute("PRAGMA foreign_keys=OFF")
    try:
        yield
    finally:
        raw.execute("PRAGMA foreign_keys=ON")


class ChangeProbe:
    """Whether another connection (this daemon's own pooled ones included) committed to the
    SQLite database since the last look, from `PRAGMA data_version` on a connection of its
    own: a read of a counter in shared memory, where a look at the queue is a write
    transaction.

    `execute` runs a statement over that same connection. SQLite leaves a connection's own
    commits out of its data_version, so what the loop writes through it (its heartbeat, every
    few seconds) is never taken for somebody else's change and triggers no look. And a plain
    sqlite3 statement touches a small fraction of the memory a SQLAlchemy one does: on a
    machine whose host reclaims what a guest leaves untouched for seconds, that is most of
    what an idle look costs (docs/reliability.md, "Idle cost")."""

    def __init__(self, engine: Engine, *, page_cache_kib: int | None = None) -> None:
        self._probe: sqlite3.Connection | None = None
        self._version: int | None = None
        database = engine.url.database
        if is_sqlite(engine) and database and database != ":memory:":
            self._probe = sqlite3.connect(
                database,
                timeout=SQLITE_BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,  # each statement its own transaction
                check_same_thread=False,
            )
            self._probe.text_factory = _text_or_surrogates
            if page_cache_kib is not None:
                self._probe.execute(f"PRAGMA cache_size=-{int(page_cache_kib)}")

    @property
    def available(self) -> bool:
        """Whether this database has such a counter (SQLite files do; others do not)."""
        return self._probe is not None

    def changed(self) -> bool:
        """True after a commit by another connection; False when unchanged or when there is
        no probe."""
        if self._probe is None:
            return False
        (version,) = self._probe.execute("PRAGMA data_version").fetchone()
        if version == self._version:
            return False
        self._version = int(version)
        return True

    def execute(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """One statement over the probe's own connection, in a transaction of its own (a
        write waits on SQLite's busy timeout like any writer); its rows. Only where
        `available`. A failure is raised as SQLAlchemy raises the same one (`OperationalError`
        for a locked or vanished database...), so callers catch one family of errors."""
        assert self._probe is not None, "ChangeProbe.execute needs a SQLite file"
        try:
            return self._probe.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise DBAPIError.instance(sql, params, exc, sqlite3.Error) from exc

    def close(self) -> None:
        if self._probe is not None:
            self._probe.close()
            self._probe = None


class DatabaseFile:
    """The SQLite file the daemon opened, checked each tick: deleted, replaced by another file
    (a new inode at the path) or truncated, the daemon's open connections would go on writing
    into a file nobody else sees, or fail with `database is locked`. `problem()` says which,
    or None while the file at the path is still the one that was opened (and other databases,
    which have no file, never have one).

    Only stat() is used: opening and closing the file here would drop the POSIX locks SQLite
    holds on it in this process (closing any descriptor of a file releases them all)."""

    def __init__(self, engine: Engine) -> None:
        database = engine.url.database
        self.path: Path | None = None
        self._identity: tuple[int, int] | None = None
        self._size = 0  # the largest size seen: a WAL database may be empty until a checkpoint
        if is_sqlite(engine) and database and database != ":memory:":
            self.path = Path(database)
            st = os.stat(self.path)
            self._identity = (st.st_dev, st.st_ino)
            self._size = st.st_size

    def problem(self) -> str | None:
        if self.path is None:
            return None
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return f"the database file {self.path} was deleted"
        except OSError as exc:
            return f"the database file {self.path} cannot be read: {exc.strerror}"
        if (st.st_dev, st.st_ino) != self._identity:
            return f"the database file {self.path} was replaced by another file"
        if st.st_size == 0 and self._size > 0:
            return f"the database file {self.path} was truncated to 0 bytes"
        self._size = max(self._size, st.st_size)
        return None


class DatabaseChanged(DatabaseError):
    """The database file was deleted, replaced or truncated under the daemon. It exits with
    this status, which systemd restarts (RestartForceExitStatus=), on the file now there."""

    exit_code = 76
