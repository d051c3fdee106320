"""The run state machine: queued -> running -> succeeded | failed | cancelled.

Every change is one transaction that also writes a `run_events` row. That only one run is
`running` at a time is enforced by a unique partial index (uq_runs_one_running), so a second
claim fails in the database even if two daemons race.

Given a `ledger`, a change that a provable history needs (a run started, failed or cancelled)
also appends its signed ledger event in that same transaction. A run's success is certified by
the trainer, which appends `dna_v2_training_completed` with its artifacts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from oneseekd.db.engine import read_session, write_session
from oneseekd.db.models import FINISHED_STATES, Run, RunEvent, utcnow
from oneseekd.errors import OneseekError

if TYPE_CHECKING:
    from oneseekd.certify.ledger import Ledger

TRANSITIONS = {
    "queued": ("running", "cancelled", "failed"),
    "running": ("running", "succeeded", "failed", "cancelled"),
}


class RunNotFound(OneseekError):
    pass


def _change(session: Session, run: Run, state: str, now: datetime, detail: str | None) -> None:
    allowed = TRANSITIONS.get(run.state, ())
    if state not in allowed:
        raise OneseekError(f"run {run.run_id} is {run.state}; it cannot become {state}")
    session.add(
        RunEvent(run_id=run.id, at=now, old_state=run.state, new_state=state, detail=detail)
    )
    run.state = state
    if state in FINISHED_STATES:
        run.finished_at = now


def _started(session: Session, ledger: Ledger | None, run: Run, now: datetime) -> None:
    if ledger is not None:
        payload = {
            "run_id": run.run_id,
            "attempt": run.attempts,
            "base_models": list(run.base_models),
            "version": run.version,
        }
        ledger.append(session, "run_started", payload, run.id, now=now)


def _ended(
    session: Session, ledger: Ledger | None, run: Run, now: datetime, detail: str | None
) -> None:
    if ledger is None or run.state not in ("failed", "cancelled"):
        return
    payload = {
        "run_id": run.run_id,
        "outcome": run.outcome,
        "attempt": run.attempts,
        "exit_code": run.exit_code,
        "detail": detail,
    }
    ledger.append(session, f"run_{run.state}", payload, run.id, now=now)


def find_run(session: Session, run_id: str) -> Run:
    run = session.scalars(select(Run).where(Run.run_id == run_id)).first()
    if run is None and run_id.isdigit():
        run = session.get(Run, int(run_id))
    if run is None:
        raise RunNotFound(f"no run {run_id!r}", ["list the runs with `oneseekctl runs`"])
    return run


def running_run(engine: Engine) -> Run | None:
    with read_session(engine) as session:
        return session.scalars(select(Run).where(Run.state == "running")).first()


def claim_next(
    engine: Engine,
    daemon_id: int | None,
    now: datetime | None = None,
    *,
    ledger: Ledger | None = None,
) -> Run | None:
    """Move the first queued run (highest priority, then oldest) to running; None when the
    queue is empty or a run is already running."""
    now = now or utcnow()
    try:
        with write_session(engine) as session:
            if session.scalars(select(Run.id).where(Run.state == "running")).first():
                return None
            run = session.scalars(
                select(Run)
                .where(Run.state == "queued")
                .order_by(Run.priority.desc(), Run.id)
                .limit(1)
            ).first()
            if run is None:
                return None
            _change(session, run, "running", now, "claimed by the supervisor")
            run.daemon_id = daemon_id
            run.started_at = now
            run.heartbeat_at = now
            run.attempts += 1
            _started(session, ledger, run, now)
            return run
    except IntegrityError:
        return None  # another claimer won the race: the database kept it to one run


def adopt(
    engine: Engine,
    run_pk: int,
    daemon_id: int | None,
    detail: str,
    now: datetime | None = None,
    *,
    ledger: Ledger | None = None,
) -> Run:
    """Take over a run left `running` by a daemon that stopped or died, for another attempt."""
    now = now or utcnow()
    with write_session(engine) as session:
        run = session.get_one(Run, run_pk)
        _change(session, run, "running", now, detail)
        run.daemon_id = daemon_id
        run.attempts += 1
        run.heartbeat_at = now
        run.pid = None
        _started(session, ledger, run, now)
        return run


def set_child(engine: Engine, run_pk: int, pid: int, log_path: str) -> None:
    with write_session(engine) as session:
        run = session.get_one(Run, run_pk)
        run.pid = pid
        run.log_path = log_path


def heartbeat(engine: Engine, run_pk: int, now: datetime | None = None) -> bool:
    """Record that the run's child is alive; returns whether a cancel was asked for."""
    with write_session(engine) as session:
        run = session.get_one(Run, run_pk)
        run.heartbeat_at = now or utcnow()
        return bool(run.cancel_requested)


def cancel_requested(engine: Engine, run_pk: int) -> bool:
    with read_session(engine) as session:
        return bool(session.scalars(select(Run.cancel_requested).where(Run.id == run_pk)).one())


def finish(
    engine: Engine,
    run_pk: int,
    state: str,
    *,
    outcome: str,
    error: str | None = None,
    exit_code: int | None = None,
    now: datetime | None = None,
    ledger: Ledger | None = None,
) -> Run:
    now = now or utcnow()
    with write_session(engine) as session:
        run = session.get_one(Run, run_pk)
        detail = outcome if error is None else f"{outcome}: {error.splitlines()[-1][:300]}"
        _change(session, run, state, now, detail)
        run.outcome = outcome
        run.error = error
        run.exit_code = exit_code
        run.pid = None
        _ended(session, ledger, run, now, detail)
        return run


@dataclass(frozen=True)
class CancelResult:
    run_id: str
    state: str  # the state after the request
    immediate: bool  # cancelled now (queued) or asked of the running child


def request_cancel(
    engine: Engine, run_id: str, now: datetime | None = None, *, ledger: Ledger | None = None
) -> CancelResult:
    now = now or utcnow()
    with write_session(engine) as session:
        run = find_run(session, run_id)
        if run.state in FINISHED_STATES:
            raise OneseekError(f"run {run.run_id} already ended ({run.state}); nothing to cancel")
        if run.state == "queued":
            _change(session, run, "cancelled", now, "cancelled while queued")
            run.outcome = "cancelled"
            run.cancel_requested = True
            _ended(session, ledger, run, now, "cancelled while queued")
            return CancelResult(run.run_id, "cancelled", True)
        run.cancel_requested = True
        session.add(
            RunEvent(
                run_id=run.id,
                at=now,
                old_state="running",
                new_state="running",
                detail="cancel requested",
            )
        )
        return CancelResult(run.run_id, "running", False)


def cancel_queued_flagged(
    engine: Engine, now: datetime | None = None, *, ledger: Ledger | None = None
) -> list[str]:
    """Queued runs whose cancel flag another program set: cancel them."""
    now = now or utcnow()
    with write_session(engine) as session:
        runs = list(
            session.scalars(
                select(Run).where(Run.state == "queued", Run.cancel_requested.is_(True))
            )
        )
        for run in runs:
            _change(session, run, "cancelled", now, "cancel flag set while queued")
            run.outcome = "cancelled"
            _ended(session, ledger, run, now, "cancel flag set while queued")
        return [r.run_id for r in runs]


def queue_counts(engine: Engine) -> dict[str, int]:
    from sqlalchemy import func

    with read_session(engine) as session:
        rows = session.execute(select(Run.state, func.count()).group_by(Run.state)).all()
    return {state: int(count) for state, count in rows}
