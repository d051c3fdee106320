"""The duplicates rule (docs/interface.md, "Duplicates"), one for every door: the same
`request_id` is always the same request; without one, the same request (its fields as read) on
the same dataset bytes repeats the first only while that run is queued or running or once it
has succeeded. After a failure or a cancel it runs again. The refusal says what became of the
first run and how to train again.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from oneseekd.certify.layout import run_dna
from oneseekd.certify.ledger import Ledger, canonical_json
from oneseekd.db.models import Run, TrainingRequest
from oneseekd.home import HomePaths
from oneseekd.intake.checks import dataset_sha
from oneseekd.intake.incoming import Verdict
from oneseekd.intake.schema import TrainingRequestModel
from oneseekd.times import human_text

# the states of a first run that make a request without a request_id a duplicate: after a
# failure or a cancel the same request runs again
BLOCKING_STATES = ("queued", "running", "succeeded")


def duplicate_key(request: TrainingRequestModel, dataset: Path) -> str | None:
    """The sha256 of the request as read (its fields: spelling, key order and whitespace do
    not count, so a file, submit's flags and a row agree) and of its dataset's bytes (a
    changed dataset is a new request). None when the dataset cannot be read to hash."""
    sha = dataset_sha(dataset)
    if sha is None:
        return None
    try:
        fields = canonical_json(request.model_dump(mode="json"))
    except ValueError:  # a value JSON cannot hold (NaN): never taken for a repeat
        return None
    return hashlib.sha256(fields + b"\n" + sha.encode()).hexdigest()


def first_run_fate(run: Run, paths: HomePaths) -> tuple[str, str]:
    """What became of the run a duplicate repeats, and what to do to train again."""
    name = run.run_id
    by_id = run.request_key is not None
    again = (
        f"the same request_id ({run.request_key!r}) is always this request: give a new "
        "`request_id` to train it again"
    )
    if run.state in ("queued", "running"):
        happened = f"run {name} is {run.state}"
        fix = (
            again
            if by_id
            else "it trains once: follow it with `oneseekctl status`, or add a `request_id` "
            "to queue a second run"
        )
    elif run.state == "succeeded":
        made = run_dna(paths, name) or f"version {run.version}"
        happened = f"run {name} succeeded as {made} on {human_text(run.finished_at)}"
        fix = again if by_id else "change the dataset or add a `request_id` to train again"
    elif run.state == "failed":
        reason = next((line.strip() for line in (run.error or "").splitlines() if line.strip()), "")
        happened = f"run {name} failed" + (f": {_cut(reason)}" if reason else "")
        fix = again
    else:
        happened = f"run {name} was {run.state}"
        fix = again
    return happened, fix


def _cut(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def first_of(
    session: Session, row: TrainingRequest, request: TrainingRequestModel | None
) -> tuple[TrainingRequest, Run] | None:
    """The request this one repeats, with its run (docs/interface.md, "Duplicates"): the
    one whose run has the same request_id, whatever became of that run; without a
    request_id, the same request on the same dataset bytes, only while its run is queued
    or running or once it has succeeded (after a failure or a cancel it runs again). The
    same rule for every door: files, submit and rows."""
    if request is None:
        return None  # refused on its own problems; a refused request is never a first
    if request.request_id is not None:
        run = session.scalars(select(Run).where(Run.request_key == request.request_id)).first()
    elif row.duplicate_key is not None:
        run = session.scalars(
            select(Run)
            .join(TrainingRequest, TrainingRequest.run_id == Run.id)
            .where(
                TrainingRequest.duplicate_key == row.duplicate_key,
                TrainingRequest.id != row.id,
                Run.state.in_(BLOCKING_STATES),
            )
            .order_by(Run.id.desc())
        ).first()
    else:
        return None
    if run is None:
        return None
    first = session.get(TrainingRequest, run.request_id)
    return None if first is None else (first, run)


def duplicate(
    ledger: Ledger,
    session: Session,
    row: TrainingRequest,
    first: TrainingRequest,
    run: Run,
    now: datetime,
    paths: HomePaths,
) -> Verdict:
    """Decide `row` a duplicate of `first` (whose run is `run`): its verdict names what
    became of that run and how to train again; the ledger records it."""
    happened, fix = first_run_fate(run, paths)
    row.status = "duplicate"
    row.duplicate_of = first.id
    row.decided_at = now
    message = f"duplicate of request #{first.id}: {happened}; {fix}"
    row.problems = [message]
    row.error = message
    ledger.append(
        session,
        "request_duplicate",
        {
            "request": row.id,
            "source": row.source,
            "duplicate_of": first.id,
            "duplicate_of_run": run.run_id,
        },
        now=now,
    )
    return Verdict("duplicate", row.id, problems=[message], duplicate_of=run.run_id, fix=fix)
