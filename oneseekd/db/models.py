"""Mapped tables. Migrations in migrations/ create and change them; this module only maps them.

Tables other programs may use are documented in docs/database.md (`base_models`: read, and
UPDATE of `enabled` and `display_name`). Everything else is the daemon's alone.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    select,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.sql.expression import type_coerce
from sqlalchemy.types import TypeDecorator

# read_time and utcnow are imported from here by much of the package: kept importable
from oneseekd.times import read_time as read_time
from oneseekd.times import utc_text
from oneseekd.times import utcnow as utcnow

log = structlog.get_logger("oneseekd.db")

MODEL_STATES = ("ready", "incomplete", "invalid", "missing")


def read_json(text: str) -> Any:
    """JSON text to its value; ValueError (JSONDecodeError) when it is not JSON."""
    return json.loads(text)


def _unreadable(where: str, value: object, error: Exception) -> None:
    """Other programs write these tables too: a value that cannot be read is logged and read
    as None, never raised, or one bad row would stop every reader (the daemon at every start)."""
    table, _, column = where.partition(".")
    log.warning(
        "unreadable_column",
        table=table or None,
        column=column or None,
        value=repr(value)[:200],
        error=str(error)[:200],
    )


class UTCDateTime(TypeDecorator[datetime]):
    """An aware UTC time stored as fixed-width ISO-8601 text ('2026-11-24T19:00:00.000000Z'),
    so that it sorts as text and reads plainly from Node or the sqlite3 shell. Text that is
    not a time reads as None (with a warning naming the column)."""

    impl = String(32)
    cache_ok = True
    expected = "an ISO-8601 time"

    def __init__(self, where: str = "") -> None:
        super().__init__()
        self.where = where  # "table.column", for the warning; set by _name_columns

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> str | None:
        if value is None:
            return None
        return utc_text(value)

    def process_result_value(self, value: str | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        try:
            return read_time(str(value))
        except (ValueError, TypeError) as exc:
            _unreadable(self.where, value, exc)
            return None


class JSONText(TypeDecorator[Any]):
    """JSON kept as text: readable by any client, stable key order. Text that is not JSON
    reads as None (with a warning naming the column)."""

    impl = Text
    cache_ok = True
    expected = "JSON"

    def __init__(self, where: str = "") -> None:
        super().__init__()
        self.where = where  # "table.column", for the warning; set by _name_columns

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        return None if value is None else json.dumps(value, sort_keys=True)

    def process_result_value(self, value: str | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        try:
            return read_json(value if isinstance(value, str | bytes) else str(value))
        except (ValueError, TypeError, RecursionError) as exc:
            _unreadable(self.where, value, exc)
            return None


class Base(DeclarativeBase):
    pass


class BaseModel(Base):
    """One catalog entry per host and normalized key. Rows are never deleted: a model that goes
    away becomes `missing` and keeps its history."""

    __tablename__ = "base_models"
    __table_args__ = (UniqueConstraint("host", "key", name="uq_base_models_host_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    key: Mapped[str] = mapped_column(String(200))
    display_name: Mapped[str] = mapped_column(String(300))
    detected_name: Mapped[str] = mapped_column(String(300))
    path: Mapped[str] = mapped_column(Text)
    root: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(20))
    state_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    model_type: Mapped[str | None] = mapped_column(String(100), nullable=True)
    architectures: Mapped[list[str] | None] = mapped_column(JSONText, nullable=True)
    parameter_count: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    weight_format: Mapped[str | None] = mapped_column(String(40), nullable=True)
    has_tokenizer: Mapped[bool] = mapped_column(Boolean, default=False)
    fingerprint: Mapped[str | None] = mapped_column(String(64), nullable=True)
    shadowed_paths: Mapped[list[str] | None] = mapped_column(JSONText, nullable=True)
    # a folder `oneseekctl pull` installed: the repository and commit its .oneseek-pull.json
    # names (None for a folder copied in by hand)
    source_repository: Mapped[str | None] = mapped_column(Text, nullable=True)
    source_commit: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # NOT NULL, but another program may write text that is not a time: it reads as None
    first_seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=False)
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=False)
    state_changed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=False)


class _StateChange:
    """The columns every history row has: when, from which state to which, and why."""

    at: Mapped[datetime] = mapped_column(UTCDateTime)
    old_state: Mapped[str | None] = mapped_column(String(20), nullable=True)
    new_state: Mapped[str] = mapped_column(String(20))
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)


class CatalogEvent(_StateChange, Base):
    """The history of a catalog entry: every appearance, state change and move."""

    __tablename__ = "catalog_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(
        ForeignKey("base_models.id", ondelete="CASCADE"), index=True
    )
    event: Mapped[str] = mapped_column(String(40))


class Daemon(Base):
    """One row per daemon start: who ran, where, and when it last said it was alive."""

    __tablename__ = "daemons"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    version: Mapped[str] = mapped_column(String(40))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime)
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    activity: Mapped[str] = mapped_column(Text, default="starting")
    # where it runs: the home's real path and the machine (daemon/identity.py); None on rows
    # written before they were recorded
    home: Mapped[str | None] = mapped_column(Text, nullable=True)
    machine: Mapped[str | None] = mapped_column(String(255), nullable=True)


REQUEST_STATUSES = ("pending", "queued", "rejected", "duplicate")
RUN_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED_STATES = ("succeeded", "failed", "cancelled")


class TrainingRequest(Base):
    """Every request from every door. Other programs INSERT rows with status `pending` and a
    JSON `payload`; the daemon writes the verdict (`queued`, `rejected`, `duplicate`)."""

    __tablename__ = "training_requests"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    payload: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(20), default="pending")
    source: Mapped[str] = mapped_column(String(20), default="database")
    source_name: Mapped[str | None] = mapped_column(Text, nullable=True)
    claim: Mapped[str | None] = mapped_column(String(100), nullable=True, unique=True)
    content_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    request_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # the sha256 of the request as read and of its dataset's bytes (intake/accept.py)
    duplicate_key: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # the model_downloads row a request naming `hf:ORG/NAME` waits for (intake/hubnames.py)
    download_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    problems: Mapped[list[str] | None] = mapped_column(JSONText, nullable=True)
    run_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    duplicate_of: Mapped[int | None] = mapped_column(
        ForeignKey("training_requests.id"), nullable=True
    )
    created_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Run(Base):
    """A queued request's training run: queued -> running -> succeeded | failed | cancelled."""

    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(String(64), unique=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("training_requests.id"))
    request_key: Mapped[str | None] = mapped_column(String(200), nullable=True, unique=True)
    state: Mapped[str] = mapped_column(String(20))
    priority: Mapped[int] = mapped_column(Integer, default=0)
    version: Mapped[str] = mapped_column(String(20))
    base_models: Mapped[list[str]] = mapped_column(JSONText)
    fingerprints: Mapped[dict[str, str]] = mapped_column(JSONText)
    dataset: Mapped[str] = mapped_column(Text)
    config: Mapped[dict[str, Any]] = mapped_column(JSONText)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    daemon_id: Mapped[int | None] = mapped_column(ForeignKey("daemons.id"), nullable=True)
    # the host whose daemon claimed the run, and until when its claim holds unless renewed
    host: Mapped[str | None] = mapped_column(String(255), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # the host whose catalog rows `fingerprints` were taken from at intake
    fingerprints_host: Mapped[str | None] = mapped_column(String(255), nullable=True)
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    outcome: Mapped[str | None] = mapped_column(String(20), nullable=True)
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    log_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSONText, nullable=True)
    queued_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


DOWNLOAD_STATES = ("pending", "running", "succeeded", "failed", "cancelled")


class ModelDownload(Base):
    """A base model to download from the Hub. `oneseekctl pull` and other programs INSERT rows
    naming `repository` (and optionally `revision`, `folder`, `allow_pickle`); the daemon of
    the host that claims one carries it out (oneseekd/hub/downloads.py) and writes the rest."""

    __tablename__ = "model_downloads"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    repository: Mapped[str] = mapped_column(Text)
    revision: Mapped[str] = mapped_column(String(200), default="main")
    folder: Mapped[str | None] = mapped_column(Text, nullable=True)  # None: the repo's name
    allow_pickle: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(20), default="pending")
    source: Mapped[str] = mapped_column(String(20), default="database")  # or "pull"
    host: Mapped[str | None] = mapped_column(String(255), nullable=True)
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    commit: Mapped[str | None] = mapped_column(String(64), nullable=True)
    bytes_total: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    bytes_done: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # {"rate": bytes/s, "eta_s": seconds or null, "file": the file arriving}
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSONText, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    problems: Mapped[list[str] | None] = mapped_column(JSONText, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    model_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class RunEvent(_StateChange, Base):
    """Every state change of a run, with its time and why."""

    __tablename__ = "run_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)


class ModelTraining(Base):
    """One base model's training within a run: losses per epoch and its final weight."""

    __tablename__ = "model_trainings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    model_key: Mapped[str] = mapped_column(String(200))
    position: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(20), default="pending")
    epochs_done: Mapped[int] = mapped_column(Integer, default=0)
    train_losses: Mapped[list[float] | None] = mapped_column(JSONText, nullable=True)
    val_losses: Mapped[list[float] | None] = mapped_column(JSONText, nullable=True)
    weight: Mapped[float | None] = mapped_column(Float, nullable=True)
    steps: Mapped[int] = mapped_column(Integer, default=0)
    tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    seconds: Mapped[float] = mapped_column(Float, default=0.0)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Artifact(Base):
    """A file a run produced, with its size and sha256 at the time it was written. `path` is
    relative to the home folder."""

    __tablename__ = "artifacts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int | None] = mapped_column(
        ForeignKey("runs.id", ondelete="CASCADE"), nullable=True
    )
    model_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    path: Mapped[str] = mapped_column(Text, unique=True)
    kind: Mapped[str] = mapped_column(String(40))
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class LedgerKey(Base):
    """A public key that signed ledger events (the private key never leaves the home)."""

    __tablename__ = "ledger_keys"

    key_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    algorithm: Mapped[str] = mapped_column(String(20), default="ed25519")
    public_key: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class LedgerEvent(Base):
    """One link of the hash chain: `hash` covers the event and `prev_hash`; `signature` is the
    Ed25519 signature of `hash`."""

    __tablename__ = "ledger_events"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    event: Mapped[str] = mapped_column(String(60))
    run_id: Mapped[int | None] = mapped_column(
        ForeignKey("runs.id", ondelete="SET NULL"), nullable=True
    )
    payload: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)
    key_id: Mapped[str] = mapped_column(ForeignKey("ledger_keys.key_id"))
    signature: Mapped[str] = mapped_column(String(128))


def _name_columns() -> None:
    """Tell each time and JSON column type which column it reads, for its warning."""
    for table in Base.metadata.tables.values():
        for column in table.columns:
            if isinstance(column.type, UTCDateTime | JSONText):
                column.type.where = f"{table.name}.{column.name}"


_name_columns()


def unreadable_columns(session: Session, table: type[Base], row_id: int) -> dict[str, str]:
    """The time and JSON columns of one row that hold text their type cannot read, with what
    each should hold: column name -> 'JSON' or 'an ISO-8601 time'. A row another program
    wrote reads such a column as None; this says which ones it was."""
    columns = [c for c in table.__table__.columns if isinstance(c.type, UTCDateTime | JSONText)]
    raw = session.execute(
        select(*(type_coerce(c, Text) for c in columns)).where(table.__table__.c.id == row_id)
    ).first()
    found: dict[str, str] = {}
    if raw is None:
        return found
    for column, value in zip(columns, raw, strict=True):
        if value is None:
            continue
        timed = isinstance(column.type, UTCDateTime)
        try:
            (read_time if timed else read_json)(str(value))
        except (ValueError, TypeError, RecursionError):
            found[column.name] = UTCDateTime.expected if timed else JSONText.expected
    return found
