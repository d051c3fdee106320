"""Rows other programs INSERT into training_requests with status `pending`.

A row is a commit, and the daemon's loop tells this door when its `PRAGMA data_version` probe
saw one (`database_changed`): only then is there a look, and the look reads the partial index
of pending rows, never the whole table. On databases without a probe the loop says so at every
tick: they are simply polled through that index.

A request waiting for the download of a model it names (`download_id`, intake/hubnames.py) is
left alone while that download is pending or running, and decided again once it has ended, as
its own door (a file keeps its claim, for the drop folder to move it by its verdict).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, Select, or_, select

from oneseekd.db.engine import read_session
from oneseekd.db.models import ModelDownload, TrainingRequest
from oneseekd.intake.accept import Intake
from oneseekd.intake.hubnames import LIVE
from oneseekd.intake.incoming import Incoming

BATCH = 64  # rows decided per transaction


class PendingRows:
    def __init__(self, intake: Intake, engine: Engine) -> None:
        self.intake = intake
        self.engine = engine
        self._more = False
        self._look_due = True  # the first look: rows INSERTed while no daemon ran

    def database_changed(self) -> None:
        """Someone committed: a new row may be there. Owed until a look is taken, even while
        this door backs off from a failure."""
        self._look_due = True

    def pending_ids(self) -> list[int]:
        with read_session(self.engine) as session:
            return list(session.scalars(self._pending().with_only_columns(TrainingRequest.id)))

    def _pending(self) -> Select[int, str, str, int | None]:
        """Pending rows, less those waiting for a download still under way."""
        return (
            select(
                TrainingRequest.id,
                TrainingRequest.payload,
                TrainingRequest.source,
                TrainingRequest.download_id,
            )
            .outerjoin(ModelDownload, ModelDownload.id == TrainingRequest.download_id)
            .where(
                TrainingRequest.status == "pending",
                or_(
                    TrainingRequest.download_id.is_(None),
                    ModelDownload.id.is_(None),  # deleted: decided again, downloaded again
                    ModelDownload.status.not_in(LIVE),
                ),
            )
            .order_by(TrainingRequest.id)
            .limit(BATCH)
        )

    def poll(self) -> int:
        """Decide up to BATCH pending rows in one transaction, when a commit was reported
        since the last look; returns how many were read. A full batch means more may wait:
        the next poll looks again without waiting for a change."""
        if not (self._look_due or self._more):
            return 0
        with read_session(self.engine) as session:
            rows = session.execute(self._pending()).all()
        if rows:
            self.intake.take_batch([_incoming(*row) for row in rows])
        self._look_due = False  # only now: a batch that failed is looked for again
        self._more = len(rows) == BATCH
        return len(rows)


def _incoming(row_id: int, payload: Any, source: str | None, download_id: int | None) -> Incoming:
    item = Incoming.of_row(row_id, payload)
    if download_id is not None and source:  # a file's or submit's request, after its download
        item.source = source
    return item
