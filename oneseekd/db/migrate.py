"""Bringing a database to the newest Alembic revision, and refusing one newer than we know."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Literal

import structlog
from sqlalchemy import Connection, Engine, inspect, text
from sqlalchemy.exc import SQLAlchemyError

from oneseekd.config import DEFAULT_LEASE_SECONDS
from oneseekd.db.engine import (
    DAEMON_PAGE_CACHE_KIB,
    foreign_keys_off,
    is_postgresql,
    lock_key,
    make_engine,
    writer,
)
from oneseekd.db.heads import scripted_head
from oneseekd.errors import DatabaseError

log = structlog.get_logger("oneseekd")

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

# alembic (with mako and every dialect's DDL) costs the daemon about 10 MB resident for good
# once imported. A database already at the newest revision, every start but the first after an
# upgrade, is recognised without it: the head is read from the scripts' `revision =` and
# `down_revision =` lines, and the database's revision from alembic_version.
Verdict = Literal["current", "empty", "behind"]


def alembic_config() -> AlembicConfig:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(resources.files("oneseekd_migrations")))
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "migrations/ holds no revision"
    return head


@dataclass(frozen=True)
class Revision:
    current: str | None
    head: str
    verdict: Verdict


def stamped_revision(engine: Engine) -> str | None:
    """The revision alembic_version holds; None when there is no such table or row."""
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        rows = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    return str(rows[0]) if len(rows) == 1 else None


def current_without_alembic(engine: Engine) -> Revision | None:
    """The database's revision when it is plainly the newest; None when only alembic can
    tell (behind, empty, newer, foreign)."""
    head = scripted_head()
    if head is not None and stamped_revision(engine) == head:
        return Revision(head, head, "current")
    return None


def check_revision(engine: Engine) -> Revision:
    """Where the database stands; raises when it is newer than this oneseekd or not ours."""
    return current_without_alembic(engine) or _check_with_alembic(engine)


def _check_with_alembic(engine: Engine) -> Revision:
    with engine.connect() as conn:
        return _check_on(conn)


def _check_on(conn: Connection) -> Revision:
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config())
    head = head_revision()
    current = MigrationContext.configure(conn).get_current_revision()
    tables = set(inspect(conn).get_table_names())
    url = conn.engine.url.render_as_string(hide_password=True)
    if current is None:
        if tables - {"alembic_version"}:
            raise DatabaseError(
                f"the database {url} holds tables but no oneseekd revision",
                ["point --db-url / ONESEEK_DB_URL at a database of oneseekd's own"],
            )
        return Revision(None, head, "empty")
    known = {rev.revision for rev in script.walk_revisions()}
    if current not in known:
        raise DatabaseError(
            f"the database {url} is at revision {current}, newer than this oneseekd knows "
            f"(its newest is {head})",
            [
                "upgrade oneseekd to the release that wrote this database; "
                "never downgrade a database by hand"
            ],
        )
    return Revision(current, head, "current" if current == head else "behind")


# the advisory lock that daemons starting together on one PostgreSQL database queue on
MIGRATION_LOCK = "oneseekd.migrations"


def upgrade(engine: Engine) -> Revision:
    """Apply every migration this oneseekd has; a no-op on a current database.

    Daemons started together on a new database would each find it empty and each create
    alembic_version (a duplicate key fails all but one). On PostgreSQL the revision is read
    again under an advisory lock that the migrating transaction holds to its commit, so the
    others wait, then find it current. SQLite's BEGIN IMMEDIATE already serializes them."""
    fast = current_without_alembic(engine)
    if fast is not None:
        return fast
    from alembic import command

    cfg = alembic_config()
    with writer(engine).connect() as conn, foreign_keys_off(conn), conn.begin():
        if is_postgresql(conn):
            key = lock_key(MIGRATION_LOCK)
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
        before = _check_on(conn)
        if before.verdict != "current":
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
            _check_foreign_keys(conn)
    return before


def _check_foreign_keys(conn: Connection) -> None:
    """What foreign_keys_off let through: a rebuilt SQLite table must still satisfy them."""
    if conn.dialect.name != "sqlite":
        return
    broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if broken:
        raise DatabaseError(
            "a migration left rows whose foreign keys point nowhere; nothing was changed",
            [f"{row[0]} row {row[1]} -> {row[2]}" for row in broken[:20]],
        )


def upgrade_in_child(url: str) -> Revision:
    """upgrade() in a separate interpreter, so that alembic never becomes resident in the
    long-lived daemon. The URL travels in the environment, never on a command line `ps` shows;
    the child's DatabaseError comes back as one, problems included."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "ONESEEK_MIGRATE_URL": url}
    done = subprocess.run(
        [sys.executable, "-m", "oneseekd.db.migrate"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        answer = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise DatabaseError(
            f"the database migration exited with status {done.returncode}",
            [*done.stderr.strip().splitlines()[-5:], "run `oneseekctl db upgrade` to see why"],
        ) from None
    if "error" in answer:
        raise DatabaseError(str(answer["error"]), [str(p) for p in answer["problems"]])
    return Revision(answer["current"], answer["head"], answer["verdict"])


def _main() -> int:
    import json
    import os

    from sqlalchemy.exc import SQLAlchemyError

    from oneseekd.db.engine import make_engine

    engine = make_engine(os.environ["ONESEEK_MIGRATE_URL"], lease_seconds=None)
    try:
        revision = upgrade(engine)
    except DatabaseError as exc:
        print(json.dumps({"error": exc.message, "problems": exc.problems}))
        return exc.exit_code
    except SQLAlchemyError as exc:
        detail = str(getattr(exc, "orig", None) or exc)
        print(json.dumps({"error": "the database migration failed", "problems": [detail]}))
        return DatabaseError.exit_code
    finally:
        engine.dispose()
    print(json.dumps(revision.__dict__))
    return 0


def _in_memory(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite" and engine.url.database in (None, "", ":memory:")


def open_database(url: str, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> Engine:
    """The daemon's engine, on a database brought to the newest revision (refusing a newer
    one); on PostgreSQL its sessions are bounded by the claims' lease (engine.session_limits),
    on SQLite its connections' page caches by DAEMON_PAGE_CACHE_KIB."""
    engine = make_engine(url, lease_seconds=lease_seconds, page_cache_kib=DAEMON_PAGE_CACHE_KIB)
    try:
        # the usual start finds the database current without alembic; a migration runs in a
        # child interpreter so that alembic's ~10 MB never stay resident in the daemon
        revision = current_without_alembic(engine)
        if revision is None:
            revision = upgrade(engine) if _in_memory(engine) else upgrade_in_child(url)
    except SQLAlchemyError as exc:
        raise DatabaseError(
            f"cannot open the database {engine.url!r}",
            [
                str(exc.orig if hasattr(exc, "orig") else exc),
                "check --db-url / ONESEEK_DB_URL and the folder's permissions",
            ],
        ) from exc
    if revision.verdict != "current":
        log.info("database_migrated", from_revision=revision.current, to_revision=revision.head)
    return engine


if __name__ == "__main__":
    raise SystemExit(_main())
