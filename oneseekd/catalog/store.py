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

from sqlalchemy import Engine, insert, or_, select, update
from sqlalchemy.orm import Session

from oneseekd.catalog.scan import Found, ScanResult
from oneseekd.config import default_host
from oneseekd.db.engine import read_session, write_session
from oneseekd.db.models import BaseModel, CatalogEvent, utcnow

PAGE = 200  # rows per INSERT or SELECT ... IN of a scan: bounds what one statement holds
# what a scan reads of its rows: what Found.differs_from compares, and what an UPDATE keeps
READ = (
    BaseModel.id,
    BaseModel.key,
    BaseModel.state,
    BaseModel.path,
    BaseModel.state_reason,
    BaseModel.fingerprint,
    BaseModel.architectures,
    BaseModel.shadowed_paths,
    BaseModel.detected_name,
    BaseModel.display_name,
    BaseModel.source_repository,
    BaseModel.source_commit,
    BaseModel.first_seen_at,
    BaseModel.updated_at,
    BaseModel.state_changed_at,
)


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


class _Writes:
    """A scan's writes, in bulk statements of PAGE rows each, sent as each page fills: the
    whole scan's rows never sit in memory at once. History rows go in the order they come."""

    def __init__(self, session: Session, now: datetime, out: Reconciled) -> None:
        self.session = session
        self.now = now
        self.out = out
        self.updates: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []

    def update(self, values: dict[str, Any]) -> None:
        self.updates.append(values)
        if len(self.updates) >= PAGE:
            self.flush()

    def event(
        self, model_id: int, key: str, event: str, old: str | None, new: str, detail: str | None
    ) -> None:
        self.events.append(
            {
                "model_id": model_id,
                "at": self.now,
                "event": event,
                "old_state": old,
                "new_state": new,
                "detail": detail,
            }
        )
        self.out.changes.append(Change(key, event, old, new, detail))
        if len(self.events) >= PAGE:
            self.flush()

    def insert(self, rows: list[dict[str, Any]]) -> None:
        """New models, and their `added` history rows."""
        self.flush()
        inserted = self.session.execute(
            insert(BaseModel).returning(BaseModel.key, BaseModel.id), rows
        )
        ids = {key: pk for key, pk in inserted}
        for values in rows:
            detail = values["state_reason"] or values["path"]
            self.event(ids[values["key"]], values["key"], "added", None, values["state"], detail)

    def flush(self) -> None:
        if self.updates:
            self.session.execute(update(BaseModel), self.updates)
            self.updates = []
        if self.events:
            self.session.execute(insert(CatalogEvent), self.events)
            self.events = []


def _scanned_values(found: Found) -> dict[str, Any]:
    """The columns a scan owns, as it found them."""
    return {
        "detected_name": found.detected_name,
        "path": str(found.path),
        "root": found.root.kind,
        "state": found.state,
        "state_reason": found.reason,
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
    }


def _update(seen: Any, found: Found, writes: _Writes) -> None:
    """A row the scan found changed: its new values, and its history rows."""
    now = writes.now
    values = {"id": seen.id, **_scanned_values(found), "updated_at": now}
    if seen.display_name == seen.detected_name:  # not renamed by the operator
        values["display_name"] = found.detected_name
    # a time another program overwrote with text that is not one reads as None: unknown
    values["first_seen_at"] = seen.first_seen_at or now
    values["state_changed_at"] = seen.state_changed_at or now
    if seen.state != found.state:
        values["state_changed_at"] = now
    writes.update(values)
    if seen.path != values["path"]:
        moved = f"{seen.path} -> {values['path']}"
        writes.event(seen.id, seen.key, "moved", seen.state, found.state, moved)
    if seen.state != found.state:
        event = "returned" if seen.state == "missing" else "state_changed"
        writes.event(seen.id, seen.key, event, seen.state, found.state, found.reason)


def _missing(seen: Any, writes: _Writes) -> None:
    """A row whose folder is gone."""
    reason = f"{seen.path} is gone"
    values = {"state": "missing", "state_reason": reason, "state_changed_at": writes.now}
    writes.update({"id": seen.id, **values})
    writes.event(seen.id, seen.key, "missing", seen.state, "missing", reason)


def _new_row(found: Found, now: datetime, host: str) -> dict[str, Any]:
    """The INSERT values of a model seen for the first time."""
    return {
        "host": host,
        "key": found.key,
        "display_name": found.detected_name,
        "enabled": True,
        **_scanned_values(found),
        "first_seen_at": now,
        "updated_at": now,
        "state_changed_at": now,
    }


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
        writes = _Writes(session, now, out)
        # a page of the scan's models at a time, read as plain rows (never the ORM's objects)
        # and written in bulk: reading the whole catalog as objects and writing it in one
        # INSERT cost a scan of 1,000 models 8 MB at its peak, which the idle daemon kept
        # resident (the allocator does not give it back to the system)
        keys = list(result.models)
        for start in range(0, len(keys), PAGE):
            page = keys[start : start + PAGE]
            query = select(*READ).where(BaseModel.host == host, BaseModel.key.in_(page))
            seen_rows = {row.key: row for row in session.execute(query)}
            added = []
            for key in page:
                found, seen = result.models[key], seen_rows.get(key)
                if seen is None:
                    added.append(_new_row(found, now, host))
                elif found.differs_from(seen):
                    _update(seen, found, writes)
            if added:
                writes.insert(added)
        out.total = len(keys)
        # the rows the scan did not find: every other row of the host (a full scan), or those
        # under the folders that are gone
        if complete or gone_paths:
            others = select(BaseModel.id, BaseModel.key, BaseModel.state, BaseModel.path).where(
                BaseModel.host == host
            )
            if not complete:
                others = others.where(
                    or_(
                        *(
                            or_(BaseModel.path == p, BaseModel.path.startswith(p.rstrip("/") + "/"))
                            for p in gone_paths
                        )
                    )
                )
            for other in session.execute(others):
                if other.key in result.models:
                    continue
                out.total += 1
                if other.state != "missing":
                    _missing(other, writes)
        writes.flush()
    return out


def load_rows(engine: Engine, host: str | None = None) -> list[BaseModel]:
    """The catalog: every host's rows, or one host's."""
    with read_session(engine) as session:
        query = select(BaseModel)
        if host is not None:
            query = query.where(BaseModel.host == host)
        return list(session.scalars(query.order_by(BaseModel.key, BaseModel.host)))
