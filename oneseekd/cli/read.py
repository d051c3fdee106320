"""The light read path of `status`, `models`, `runs` and `show`: answers in about 0.1 s.

An operator runs these in loops and scripts, so they import only what they need: the stdlib
`sqlite3` for a SQLite home, and never the SQLAlchemy ORM, pydantic, structlog, alembic or
torch. Whenever the light path cannot answer exactly as the full one would (no database file
yet, a database behind the newest revision, a catalog the model folders no longer match, a
database that is not SQLite, any sqlite3 error), it falls back to the full machinery
(`Context.engine()`, `Context.fresh_catalog()`), which creates, scans, upgrades or reports the
error with its fix, and then reads through SQLAlchemy Core with the same queries.

tests/test_cli_read.py proves what a read imports and that both paths read the same.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from oneseekd.config import SQLITE_BUSY_TIMEOUT_MS
from oneseekd.db.heads import scripted_head
from oneseekd.errors import DatabaseError
from oneseekd.times import read_time

if TYPE_CHECKING:
    from oneseekd.catalog.scan import Found
    from oneseekd.cli.context import Context

# Columns that hold JSON or times as text (docs/database.md): parsed here as the mapped types
# of oneseekd/db/models.py parse them; text that cannot be read reads as None.
_JSON = frozenset(
    {"architectures", "shadowed_paths", "base_models", "fingerprints", "config", "progress"}
    | {"problems"}
)
_TIMES = frozenset(
    {"first_seen_at", "updated_at", "state_changed_at", "started_at", "heartbeat_at"}
    | {"stopped_at", "lease_expires_at", "queued_at", "finished_at", "at"}
    | {"created_at", "decided_at"}
)
_BOOLS = frozenset({"enabled", "has_tokenizer", "cancel_requested", "allow_pickle"})

RUN_COLUMNS = (
    "id, run_id, request_id, state, outcome, version, base_models, fingerprints, dataset, "
    "config, priority, attempts, host, pid, cancel_requested, error, exit_code, log_path, "
    "progress, queued_at, started_at, finished_at, heartbeat_at"
)
MODEL_COLUMNS = (
    "id, host, key, display_name, detected_name, path, root, state, state_reason, enabled, "
    "model_type, architectures, parameter_count, size_bytes, weight_format, has_tokenizer, "
    "fingerprint, shadowed_paths, first_seen_at, updated_at, state_changed_at, "
    "source_repository, source_commit"
)


class Row(dict[str, Any]):
    """One row, its columns read as attributes (run.state), like a mapped object's."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _value(column: str, value: Any) -> Any:
    if value is None:
        return None
    if column in _BOOLS:
        return bool(value)
    try:
        if column in _JSON:
            return json.loads(value)
        if column in _TIMES:
            return read_time(str(value))
    except (ValueError, TypeError, RecursionError):
        return None
    return value


Query = Callable[[str, dict[str, Any]], tuple[list[str], list[Sequence[Any]]]]


class Reader:
    """The queries of the read commands, over sqlite3 or a SQLAlchemy Core connection."""

    def __init__(
        self,
        query: Query,
        url: str,
        light: bool,
        errors: tuple[type[Exception], ...] = (),
        close: Callable[[], None] | None = None,
    ) -> None:
        self._query = query
        self.url = url  # shown by status
        self.light = light  # True: none of the full machinery (the ORM, structlog, ...)
        self._errors = errors
        self._close = close

    def close(self) -> None:
        if self._close is not None:
            self._close()
            self._close = None

    def rows(self, sql: str, **params: Any) -> list[Row]:
        try:
            names, rows = self._query(sql, params)
        except self._errors as exc:
            raise DatabaseError(
                f"cannot read the database: {exc}",
                ["check that the database is reachable, then run the command again"],
            ) from exc
        return [Row((n, _value(n, v)) for n, v in zip(names, r, strict=True)) for r in rows]

    def one(self, sql: str, **params: Any) -> Row | None:
        found = self.rows(sql, **params)
        return found[0] if found else None

    # --- what the commands read -----------------------------------------------------------
    def models(self, host: str | None = None) -> list[Row]:
        where = "" if host is None else " WHERE host = :host"
        return self.rows(
            f"SELECT {MODEL_COLUMNS} FROM base_models{where} ORDER BY key, host", host=host
        )

    def runs(self, limit: int, state: str | None = None) -> list[Row]:
        where = "" if state is None else " WHERE state = :state"
        return self.rows(
            f"SELECT {RUN_COLUMNS} FROM runs{where} ORDER BY id DESC LIMIT :limit",
            state=state,
            limit=limit,
        )

    def running(self) -> list[Row]:
        return self.rows(f"SELECT {RUN_COLUMNS} FROM runs WHERE state = 'running' ORDER BY id")

    def recent(self, limit: int) -> list[Row]:
        return self.rows(
            f"SELECT {RUN_COLUMNS} FROM runs WHERE state IN ('succeeded', 'failed', 'cancelled') "
            "ORDER BY finished_at DESC LIMIT :limit",
            limit=limit,
        )

    def downloads(self) -> list[Row]:
        """model_downloads rows not yet ended, oldest first (none on a database before 0008)."""
        return self.rows(
            "SELECT id, repository, revision, folder, allow_pickle, status, source, host, pid, "
            '"commit", bytes_total, bytes_done, progress, error, problems, cancel_requested, '
            "model_key, created_at, started_at, finished_at, heartbeat_at FROM model_downloads "
            "WHERE status IN ('pending', 'running') ORDER BY id"
        )

    def queue_counts(self) -> dict[str, int]:
        rows = self.rows("SELECT state, COUNT(*) AS n FROM runs GROUP BY state")
        return {r.state: int(r.n) for r in rows}

    def last_daemon(self, host: str) -> Row | None:
        return self.one(
            "SELECT id, host, pid, version, started_at, heartbeat_at, stopped_at, activity "
            "FROM daemons WHERE host = :host ORDER BY id DESC LIMIT 1",
            host=host,
        )

    def run(self, run_id: str) -> Row | None:
        """A run by its id, or by its row number (as `queue.find_run` finds it)."""
        found = self.one(f"SELECT {RUN_COLUMNS} FROM runs WHERE run_id = :run_id", run_id=run_id)
        if found is None and run_id.isdigit():
            found = self.one(f"SELECT {RUN_COLUMNS} FROM runs WHERE id = :pk", pk=int(run_id))
        return found

    def request(self, pk: int) -> Row | None:
        return self.one(
            "SELECT id, source, source_name, status, created_at, decided_at, payload "
            "FROM training_requests WHERE id = :pk",
            pk=pk,
        )

    def events(self, run_pk: int) -> list[Row]:
        return self.rows(
            "SELECT id, at, old_state, new_state, detail FROM run_events "
            "WHERE run_id = :pk ORDER BY id",
            pk=run_pk,
        )


def _sqlite_file(db_url: str) -> Path | None:
    """The file of a plain `sqlite:///PATH` URL; None for anything else."""
    prefix = "sqlite:///"
    if not db_url.startswith(prefix) or "?" in db_url or db_url == prefix:
        return None
    return Path(db_url.removeprefix(prefix))


def _sqlite_query(db_file: Path) -> tuple[Query, Callable[[], None]] | None:
    try:
        con = sqlite3.connect(
            f"file:{db_file}?mode=rw", uri=True, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000
        )
        con.execute("PRAGMA query_only = 1")
    except sqlite3.Error:
        return None
    # TEXT another program wrote that is not UTF-8 reads as surrogates, as the engine reads
    # it (oneseekd/db/engine.py), and is shown escaped
    con.text_factory = lambda raw: raw.decode("utf-8", "surrogateescape")

    def query(sql: str, params: dict[str, Any]) -> tuple[list[str], list[Sequence[Any]]]:
        cursor = con.execute(sql, params)
        return [d[0] for d in cursor.description or ()], cursor.fetchall()

    return query, con.close


def _core_query(db_url: str) -> tuple[Query, Callable[[], None]] | None:
    """Another database (PostgreSQL): SQLAlchemy Core, never the ORM."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import SQLAlchemyError

    try:
        engine = create_engine(db_url, pool_pre_ping=True)
        conn = engine.connect()
    except (SQLAlchemyError, ImportError, ValueError):
        return None

    def query(sql: str, params: dict[str, Any]) -> tuple[list[str], list[Sequence[Any]]]:
        result = conn.execute(text(sql), params)
        return list(result.keys()), [tuple(r) for r in result]

    def close() -> None:
        conn.close()
        engine.dispose()

    return query, close


def _light(obj: Context, catalog: bool) -> Reader | None:
    """A reader that needs none of the full machinery, or None when only the full path can
    answer exactly (no database yet, one behind the newest revision, a changed catalog)."""
    cfg = obj.config
    if not cfg.home.root.is_dir():
        return None
    db_file = _sqlite_file(cfg.db_url)
    shown_url = cfg.db_url
    if db_file is not None:
        opened = _sqlite_query(db_file) if db_file.is_file() else None
        errors: tuple[type[Exception], ...] = (sqlite3.Error,)
    elif cfg.db_url.startswith("sqlite"):
        return None  # a URL with options: the full path reads it as given
    else:
        opened = _core_query(cfg.db_url)
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import SQLAlchemyError

        errors = (SQLAlchemyError,)
        shown_url = make_url(cfg.db_url).render_as_string(hide_password=True)
    if opened is None:
        return None
    query, close = opened
    reader = Reader(query, shown_url, light=True, errors=errors, close=close)
    try:
        _, revision = query("SELECT version_num FROM alembic_version", {})
        current = [r[0] for r in revision] == [scripted_head()]
        if not current or (
            catalog and not obj.daemon().held and not catalog_is_current(obj, reader)
        ):
            close()
            return None
    except errors:
        close()
        return None
    return reader


def open_reader(obj: Context, *, catalog: bool = False) -> tuple[Reader, bool]:
    """A reader of the home's database, and whether this command scanned the model folders.

    catalog=True: with no daemon keeping the catalog current, the model folders are scanned
    first; the light path does that without writing when nothing changed since the last
    scan, and leaves a changed catalog to the full path, which records the change."""
    reader = _light(obj, catalog)
    if reader is not None:
        return _closed_with_the_command(reader), catalog and not obj.daemon().held
    full_machinery()
    scanned = obj.fresh_catalog() if catalog else False
    engine = obj.engine()
    from sqlalchemy import text
    from sqlalchemy.exc import SQLAlchemyError

    conn = engine.connect()

    def query(sql: str, params: dict[str, Any]) -> tuple[list[str], list[Sequence[Any]]]:
        result = conn.execute(text(sql), params)
        return list(result.keys()), [tuple(r) for r in result]

    url = engine.url.render_as_string(hide_password=True)
    reader = Reader(query, url, light=False, errors=(SQLAlchemyError,), close=conn.close)
    return _closed_with_the_command(reader), scanned


def _closed_with_the_command(reader: Reader) -> Reader:
    """The connection ends with the command (its click context), not at interpreter exit."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.call_on_close(reader.close)
    return reader


def full_machinery() -> None:
    """Before the full machinery is imported: its log lines go to stderr, warnings only."""
    from oneseekd.logs import configure_logging

    configure_logging("warning")


def catalog_is_current(obj: Context, reader: Reader) -> bool:
    """Whether a scan of the model folders would change nothing in this host's catalog rows.

    The scan lists every folder and compares its fingerprint (names, sizes, times) with the
    row's, exactly as the full scan does, reading no config.json of an unchanged folder; the
    rows it would write are compared field by field as `catalog.store.reconcile` does."""
    from oneseekd.catalog.scan import model_roots, scan

    cfg = obj.config
    host = cfg.catalog.host
    rows = {r.key: r for r in reader.models(host)}
    roots = model_roots(cfg)
    result = scan(roots, settle=cfg.catalog.settle_seconds, cache=_cache(rows, roots))
    for key, row in rows.items():
        if row.state != "missing" and key not in result.models:
            return False  # would become missing
    for key, found in result.models.items():
        stored = rows.get(key)
        if stored is None or found.differs_from(stored):
            return False
    return True


def _cache(rows: dict[str, Row], roots: Sequence[Any]) -> dict[Path, Found]:
    """The stored rows as the scan's cache: a folder whose fingerprint is unchanged is taken
    from its row instead of being read again."""
    from oneseekd.catalog.scan import Found

    cache: dict[Path, Found] = {}
    for row in rows.values():
        if row.fingerprint is None or row.state not in ("ready", "invalid"):
            continue
        path = Path(row.path)
        root = next((r for r in roots if path.is_relative_to(r.path)), None)
        if root is None:
            continue
        folder = root.path / path.relative_to(root.path).parts[0]
        cache[folder] = Found(
            key=row.key,
            folder=folder,
            path=path,
            root=root,
            state=row.state,
            reason=row.state_reason,
            detected_name=row.detected_name,
            model_type=row.model_type,
            architectures=tuple(row.architectures) if row.architectures else None,
            parameter_count=row.parameter_count,
            size_bytes=row.size_bytes or 0,
            weight_format=row.weight_format,
            has_tokenizer=bool(row.has_tokenizer),
            fingerprint=row.fingerprint,
        )
    return cache
