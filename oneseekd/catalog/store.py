"""Reconciling scan results into the `base_models` table, with a history row per change.

Rows are never deleted. `enabled` and an operator-set `display_name` belong to the operator
(the admin panel writes them) and survive every scan. Each host's daemon scans its own folders
and writes and reconciles only the rows that name its host: several hosts share one database.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, insert, or_, select
from sqlalchemy.orm import Session

from oneseekd.catalog.scan import Found, ScanResult
from oneseekd.config import default_host
from oneseekd.db.engine import read_session, write_session
from oneseekd.db.models import BaseModel, CatalogEvent, utcnow


@dataclass
class Change:
    key: str
    event: str
    old_state: str | None
    new_state: str
    detail: str | None


@dataclass
class Reconciled:
    changes: list[Change] = field(default_factory=list)
    total: int = 0


def _event(
    session: Session,
    row: BaseModel,
    event: str,
    old: str | None,
    now: datetime,
    detail: str | None,
    out: Reconciled,
) -> None:
    session.add(
        CatalogEvent(
            model_id=row.id, at=now, event=event, old_state=old, new_state=row.state, detail=detail
        )
    )
    out.changes.append(Change(row.key, event, old, row.state, detail))


def _apply(session: Session, row: BaseModel, found: Found, now: datetime, out: Reconciled) -> None:
    old_state, old_path = row.state, row.path
    _apply_fields(row, found, now)
    if old_path != row.path:
        _event(session, row, "moved", old_state, now, f"{old_path} -> {row.path}", out)
    if old_state != row.state:
        row.state_changed_at = now
        _event(
            session,
            row,
            "returned" if old_state == "missing" else "state_changed",
            old_state,
            now,
            found.reason,
            out,
        )


def _apply_fields(row: BaseModel, found: Found, now: datetime) -> None:
    if row.display_name == row.detected_name:  # not renamed by the operator
        row.display_name = found.detected_name
    row.detected_name = found.detected_name
    row.path = str(found.path)
    row.root = found.root.kind
    row.state = found.state
    row.state_reason = found.reason
    row.model_type = found.model_type
    row.architectures = list(found.architectures) if found.architectures else None
    row.parameter_count = found.parameter_count
    row.size_bytes = found.size_bytes
    row.weight_format = found.weight_format
    row.has_tokenizer = found.has_tokenizer
    row.fingerprint = found.fingerprint
    row.shadowed_paths = list(found.shadowed) or None
    row.source_repository = found.source_repository
    row.source_commit = found.source_commit
    row.updated_at = now
    # a time another program overwrote with text that is not one reads as None: unknown
    row.first_seen_at = row.first_seen_at or now
    row.state_changed_at = row.state_changed_at or now


def _new_row(found: Found, now: datetime, host: str) -> dict[str, Any]:
    """The INSERT values of a model seen for the first time."""
    return {
        "host": host,
        "key": found.key,
        "display_name": found.detected_name,
        "detected_name": found.detected_name,
        "path": str(found.path),
        "root": found.root.kind,
        "state": found.state,
        "state_reason": found.reason,
        "enabled": True,
        "model_type": found.model_type,
        "architectures": list(found.architectures) if found.architectures else None,
        "parameter_count": found.parameter_count,
        "size_bytes": found.size_bytes,
        "weight_format": found.weight_format,
        "has_tokenizer": found.has_tokenizer,
        "fingerprint": found.fingerprint,
        "shadowed_paths": list(found.shadowed) or None,
        "source_repository": found.source_repository,
        "source_commit": found.source_commit,
        "first_seen_at": now,
        "updated_at": now,
        "state_changed_at": now,
    }


def _insert_new(
    session: Session, added: list[dict[str, Any]], now: datetime, out: Reconciled
) -> None:
    """New models in two bulk INSERTs (rows, then their `added` events): a first scan of
    10,000 folders would spend seconds in the ORM's per-object bookkeeping otherwise."""
    if not added:
        return
    inserted = session.execute(insert(BaseModel).returning(BaseModel.key, BaseModel.id), added)
    ids = {key: pk for key, pk in inserted}
    events = []
    for values in added:
        detail = values["state_reason"] or values["path"]
        events.append(
            {
                "model_id": ids[values["key"]],
                "at": now,
                "event": "added",
                "old_state": None,
                "new_state": values["state"],
                "detail": detail,
            }
        )
        out.changes.append(Change(values["key"], "added", None, values["state"], detail))
    session.execute(insert(CatalogEvent), events)


def _mark_missing(session: Session, row: BaseModel, now: datetime, out: Reconciled) -> None:
    old = row.state
    row.state = "missing"
    row.state_reason = f"{row.path} is gone"
    row.state_changed_at = now
    _event(session, row, "missing", old, now, row.state_reason, out)


def reconcile(
    engine: Engine,
    result: ScanResult,
    *,
    now: datetime | None = None,
    complete: bool = True,
    gone: Iterable[Path] = (),
    host: str | None = None,
) -> Reconciled:
    """Write a scan into the catalog in one transaction.

    complete=True (a full scan): every key the scan did not find becomes `missing`.
    complete=False (folders re-inspected after watch events): only the given models change,
    and rows whose folder is listed in `gone` become `missing`.
    Only the rows of `host` (default: this machine's name) are read and written.
    """
    host = host or default_host()
    now = now or utcnow()
    out = Reconciled()
    gone_paths = {str(p) for p in gone}
    with write_session(engine) as session:
        query = select(BaseModel).where(BaseModel.host == host)
        if not complete:  # only the rows this change touches, not the whole catalog
            touched = or_(
                BaseModel.key.in_(list(result.models)),
                *(
                    or_(BaseModel.path == p, BaseModel.path.startswith(p.rstrip("/") + "/"))
                    for p in gone_paths
                ),
            )
            query = query.where(touched)
        rows = {row.key: row for row in session.scalars(query)}
        added: list[dict[str, Any]] = []
        for key, found in result.models.items():
            row = rows.get(key)
            if row is None:
                added.append(_new_row(found, now, host))
            elif found.differs_from(row):
                _apply(session, row, found, now, out)
        _insert_new(session, added, now, out)
        for key, row in rows.items():
            if row.state == "missing" or key in result.models:
                continue
            if complete or row.path in gone_paths or _under(row.path, gone_paths):
                _mark_missing(session, row, now, out)
        out.total = len(rows) + len(added)
    return out


def _under(path: str, folders: set[str]) -> bool:
    return any(path.startswith(f.rstrip("/") + "/") for f in folders)


def load_rows(engine: Engine, host: str | None = None) -> list[BaseModel]:
    """The catalog: every host's rows, or one host's."""
    with read_session(engine) as session:
        query = select(BaseModel)
        if host is not None:
            query = query.where(BaseModel.host == host)
        return list(session.scalars(query.order_by(BaseModel.key, BaseModel.host)))
