"""Bringing a database to the newest Alembic revision, and refusing one newer than we know."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Literal

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect

from oneseekd.db.engine import foreign_keys_off, writer
from oneseekd.errors import DatabaseError

Verdict = Literal["current", "empty", "behind"]


def alembic_config() -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(resources.files("oneseekd_migrations")))
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "migrations/ holds no revision"
    return head


@dataclass(frozen=True)
class Revision:
    current: str | None
    head: str
    verdict: Verdict


def check_revision(engine: Engine) -> Revision:
    """Where the database stands; raises when it is newer than this oneseekd or not ours."""
    script = ScriptDirectory.from_config(alembic_config())
    head = head_revision()
    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
        tables = set(inspect(conn).get_table_names())
    url = engine.url.render_as_string(hide_password=True)
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


def upgrade(engine: Engine) -> Revision:
    """Apply every migration this oneseekd has; a no-op on a current database."""
    before = check_revision(engine)
    if before.verdict != "current":
        cfg = alembic_config()
        with writer(engine).connect() as conn, foreign_keys_off(conn), conn.begin():
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
            _check_foreign_keys(conn)
    return Revision(before.current, before.head, before.verdict)


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
