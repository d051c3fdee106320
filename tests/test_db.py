from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, text
from structlog.testing import capture_logs

from oneseekd.config import Config
from oneseekd.db.engine import make_engine, read_session, write_session
from oneseekd.db.migrate import check_revision, head_revision, upgrade
from oneseekd.db.models import BaseModel, Daemon, TrainingRequest, unreadable_columns, utcnow
from oneseekd.errors import DatabaseError


def test_sqlite_runs_in_wal_with_busy_timeout_and_foreign_keys(engine: Engine) -> None:
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_migrations_create_every_table_and_upgrade_is_idempotent(
    config: Config, engine: Engine
) -> None:
    con = sqlite3.connect(config.home.db_file)
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"alembic_version", "base_models", "catalog_events", "daemons"} <= tables
    assert con.execute("SELECT version_num FROM alembic_version").fetchone()[0] == head_revision()
    again = upgrade(engine)
    assert again.verdict == "current"


def test_a_database_newer_than_this_oneseekd_is_refused(config: Config, engine: Engine) -> None:
    con = sqlite3.connect(config.home.db_file)
    con.execute("UPDATE alembic_version SET version_num = '9999_from_the_future'")
    con.commit()
    con.close()
    with pytest.raises(DatabaseError) as err:
        upgrade(engine)
    assert "is at revision 9999_from_the_future, newer than this oneseekd knows" in str(err.value)
    assert "upgrade oneseekd to the release that wrote this database" in str(err.value)


def test_a_foreign_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE invoices (id INTEGER)")
    con.commit()
    con.close()
    engine = make_engine(f"sqlite:///{path}")
    with pytest.raises(DatabaseError, match="holds tables but no oneseekd revision"):
        check_revision(engine)


def test_foreign_keys_are_enforced(engine: Engine) -> None:
    with pytest.raises(Exception, match="FOREIGN KEY constraint failed"), engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO catalog_events (model_id, at, event, new_state) "
                "VALUES (424242, '2026-01-01T00:00:00.000000Z', 'added', 'ready')"
            )
        )


def test_times_are_stored_as_sortable_utc_text(config: Config, engine: Engine) -> None:
    with write_session(engine) as session:
        now = utcnow()
        session.add(Daemon(host="h", pid=1, version="x", started_at=now, heartbeat_at=now))
    raw = (
        sqlite3.connect(config.home.db_file).execute("SELECT started_at FROM daemons").fetchone()[0]
    )
    assert raw.endswith("Z") and len(raw) == 27 and raw[10] == "T"


def test_a_column_another_program_wrote_badly_reads_as_none_and_says_where(
    config: Config, engine: Engine
) -> None:
    """A catalog row whose JSON or time column is not readable must not stop its readers (the
    daemon loads every row at each start): it reads as None, with a warning naming it."""
    con = sqlite3.connect(config.home.db_file)
    con.execute(
        "INSERT INTO base_models (host, key, display_name, detected_name, path, root, state, "
        "architectures, shadowed_paths, first_seen_at, updated_at, state_changed_at) VALUES "
        "('h', 'm', 'M', 'M', '/m', 'base_models', 'ready', 'LlamaForCausalLM', '[\"/a\"]', "
        "'2026-01-01T00:00:00.000000Z', 'yesterday', '2026-01-02T03:04:05Z')"
    )
    con.commit()
    con.close()
    with capture_logs() as logs, read_session(engine) as session:
        row = session.scalars(select(BaseModel)).one()
        bad = unreadable_columns(session, BaseModel, row.id)
    assert (row.architectures, row.updated_at, row.shadowed_paths) == (None, None, ["/a"])
    assert row.first_seen_at == datetime(2026, 1, 1, tzinfo=UTC)
    assert row.state_changed_at == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert bad == {"architectures": "JSON", "updated_at": "an ISO-8601 time"}
    warned = [
        (e["table"], e["column"], e["value"]) for e in logs if e["event"] == "unreadable_column"
    ]
    assert warned == [
        ("base_models", "architectures", "'LlamaForCausalLM'"),
        ("base_models", "updated_at", "'yesterday'"),
    ]


def test_unreadable_columns_of_a_sound_row_or_no_row_are_none(engine: Engine) -> None:
    with write_session(engine) as session:
        row = TrainingRequest(payload="{}", created_at=utcnow(), problems=["x"])
        session.add(row)
        session.flush()
        row_id = row.id
    with read_session(engine) as session:
        assert unreadable_columns(session, TrainingRequest, row_id) == {}
        assert unreadable_columns(session, TrainingRequest, row_id + 1) == {}


def test_another_program_inserts_a_download_with_only_its_repository(
    config: Config, engine: Engine
) -> None:
    """The admin panel's door to the Hub: one column, the rest from the schema's defaults."""
    con = sqlite3.connect(config.home.db_file)
    con.execute("INSERT INTO model_downloads (repository) VALUES ('acme/tiny-llama')")
    con.commit()
    row = con.execute(
        "SELECT revision, folder, allow_pickle, status, source, cancel_requested, created_at "
        "FROM model_downloads"
    ).fetchone()
    assert row[:6] == ("main", None, 0, "pending", "database", 0)
    assert len(row[6]) == len("2026-11-24T19:00:00.000000Z")  # one fixed width, as every time
    with pytest.raises(sqlite3.IntegrityError, match="ck_model_downloads_status"):
        con.execute("INSERT INTO model_downloads (repository, status) VALUES ('a/b', 'done')")
    con.close()
    columns = {
        r[1] for r in sqlite3.connect(config.home.db_file).execute("PRAGMA table_info(base_models)")
    }
    assert {"source_repository", "source_commit"} <= columns
