"""The run states: queued -> running -> succeeded | failed | cancelled, and the claim check.

Every change is one transaction that also writes a `run_events` row; nothing else in the
package writes a run's state or its events. Every write a claim owner (a daemon, or the
trainer it started) makes about a running run is fenced on the attempt it claimed
(check_claim), so one whose run was taken over learns it (ClaimLost) instead of overwriting
the new owner's state.

A `state` another program wrote is never acted on (`written_by_another`): the claim and the
cancel of a flagged queued run check the run's own history first.

Given a `ledger`, a change that a provable history needs (a run started, failed or cancelled)
also appends its signed ledger event in that same transaction. A run's success is certified by
the trainer, which appends `dna_v2_training_completed` with its artifacts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Literal

import structlog
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from oneseekd.config import DEFAULT_LEASE_SECONDS
from oneseekd.db.engine import database_now, read_session, write_session
from oneseekd.db.models import FINISHED_STATES, Run, RunEvent, utcnow
from oneseekd.errors import OneseekError
from oneseekd.errors import RunNotFound as RunNotFound  # raised here, defined light

if TYPE_CHECKING:
    from oneseekd.certify.ledger import Ledger

log = structlog.get_logger("oneseekd.queue")

TRANSITIONS = {
    "queued": ("running", "cancelled", "failed"),
    "running": ("running", "succeeded", "failed", "cancelled"),
}


class ClaimLost(OneseekError):
    """The run is no longer this claim's: it ended, or another daemon took it over after the
    lease expired. The former owner stops its trainer and writes nothing more about the run."""


def check_claim(
    session: Session,
    run_pk: int,
    attempt: int | None,
    *,
    by: Literal["daemon", "trainer"] = "daemon",
) -> None:
    """The one claim check, before a write about a running run: it must still be `running`
    in this attempt. The row stays locked until the transaction ends, so no takeover slips in
    between. Without an attempt (a trainer started by hand) there is no claim to check.
    `by` words the error for whoever checks: the daemon, or the trainer it started."""
    if attempt is None:
        return
    row = session.execute(
        select(Run.run_id, Run.state, Run.attempts, Run.host)
        .where(Run.id == run_pk)
        .with_for_update()
    ).one()
    if row.state != "running" or row.attempts != attempt:
        owner = "this daemon's" if by == "daemon" else f"this trainer's (attempt {attempt})"
        raise ClaimLost(
            f"run {row.run_id} is no longer {owner}: it is {row.state}, attempt "
            f"{row.attempts} on host {row.host}"
        )


def _event(
    session: Session, run_pk: int, old: str | None, new: str, now: datetime, detail: str | None
) -> None:
    session.add(RunEvent(run_id=run_pk, at=now, old_state=old, new_state=new, detail=detail))


def queued(session: Session, run: Run, now: datetime, detail: str) -> None:
    """A run intake just added: its first event (the run's row is written with the request's
    verdict, in intake's transaction)."""
    session.flush()  # the run's id
    _event(session, run.id, None, "queued", now, detail)


def change(session: Session, run: Run, state: str, now: datetime, detail: str | None) -> None:
    allowed = TRANSITIONS.get(run.state, ())
    if state not in allowed:
        raise OneseekError(f"run {run.run_id} is {run.state}; it cannot become {state}")
    _event(session, run.id, run.state, state, now, detail)
    run.state = state
    if state in FINISHED_STATES:
        run.finished_at = now


def started(session: Session, ledger: Ledger | None, run: Run, now: datetime) -> None:
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


def history_state(session: Session, run_pk: int) -> str | None:
    """The state the run's own events end in (None: it has none, so no run oneseekd made)."""
    return session.scalars(
        select(RunEvent.new_state)
        .where(RunEvent.run_id == run_pk)
        .order_by(RunEvent.id.desc())
        .limit(1)
    ).first()


def written_by_another(session: Session, run: Run) -> bool:
    """Whether the run's `state` is not the one its history ends in: another program wrote it.
    Then it is refused, logged, and the history's state written back (a run without one is
    failed: oneseekd never queued it)."""
    history = history_state(session, run.id)
    if history == run.state:
        return False
    restored = history if history is not None else "failed"
    log.warning(
        "run_state_refused",
        run_id=run.run_id,
        state=run.state,
        history=history,
        restored=restored,
        reason="runs.state was written by another program; only oneseekd changes it",
    )
    run.state = restored
    if history is None:
        run.outcome = "error"
        run.error = "the run was written into the database by another program, not queued"
    return True


def find_run(session: Session, run_id: str) -> Run:
    run = session.scalars(select(Run).where(Run.run_id == run_id)).first()
    if run is None and run_id.isdigit():
        run = session.get(Run, int(run_id))
    if run is None:
        raise RunNotFound(f"no run {run_id!r}", ["list the runs with `oneseekctl runs`"])
    return run


def running_run(engine: Engine, host: str | None = None) -> Run | None:
    """The run in progress (on `host`, when given)."""
    with read_session(engine) as session:
        query = select(Run).where(Run.state == "running")
        if host is not None:
            query = query.where(Run.host == host)
        return session.scalars(query.order_by(Run.id)).first()


def set_child(engine: Engine, run_pk: int, pid: int, log_path: str) -> None:
    with write_session(engine) as session:
        run = session.get_one(Run, run_pk)
        run.pid = pid
        run.log_path = log_path


def heartbeat(
    engine: Engine,
    run_pk: int,
    now: datetime | None = None,
    *,
    attempt: int | None = None,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
) -> bool:
    """Record that the run's child is alive and renew the claim's lease; returns whether a
    cancel was asked for. With `attempt`, raises ClaimLost when the claim is no longer ours."""
    with write_session(engine) as session:
        check_claim(session, run_pk, attempt)
        run = session.get_one(Run, run_pk)
        run.heartbeat_at = now or utcnow()
        if run.state == "running":
            run.lease_expires_at = database_now(session) + timedelta(seconds=lease_seconds)
        return bool(run.cancel_requested)


@dataclass(frozen=True)
class Ending:
    """How a run ended, as the runs table keeps it."""

    state: str  # succeeded | failed | cancelled
    outcome: str  # what `runs` shows: succeeded, oom, signal, stopped, error, cancelled
    error: str | None = None
    exit_code: int | None = None  # the trainer's, where one ended it

    @property
    def event(self) -> str:
        """The log event that reports it."""
        return {"succeeded": "run_succeeded", "cancelled": "run_cancelled"}.get(
            self.state, "run_failed"
        )


def finish(
    engine: Engine,
    run_pk: int,
    ending: Ending,
    *,
    now: datetime | None = None,
    ledger: Ledger | None = None,
    attempt: int | None = None,
    before: Callable[[], None] | None = None,
) -> Run:
    """End a run. With `attempt`, only the claim of that attempt may end it (else ClaimLost).
    `before` runs once the claim is checked and the row held, inside the transaction that
    ends the run: what it does (publishing the run's files) cannot race a takeover."""
    now = now or utcnow()
    with write_session(engine) as session:
        check_claim(session, run_pk, attempt)
        run = session.get_one(Run, run_pk)
        if before is not None:
            before()
        outcome, error = ending.outcome, ending.error
        detail = outcome if error is None else f"{outcome}: {error.splitlines()[-1][:300]}"
        change(session, run, ending.state, now, detail)
        run.outcome = outcome
        run.error = error
        run.exit_code = ending.exit_code
        run.pid = None
        run.lease_expires_at = None
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
            change(session, run, "cancelled", now, "cancelled while queued")
            run.outcome = "cancelled"
            run.cancel_requested = True
            _ended(session, ledger, run, now, "cancelled while queued")
            return CancelResult(run.run_id, "cancelled", True)
        run.cancel_requested = True
        _event(session, run.id, "running", "running", now, "cancel requested")
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
        runs = [run for run in runs if not written_by_another(session, run)]
        for run in runs:
            change(session, run, "cancelled", now, "cancel flag set while queued")
            run.outcome = "cancelled"
            _ended(session, ledger, run, now, "cancel flag set while queued")
        return [r.run_id for r in runs]


def queue_counts(engine: Engine) -> dict[str, int]:
    with read_session(engine) as session:
        rows = session.execute(select(Run.state, func.count()).group_by(Run.state)).all()
    return {state: int(count) for state, count in rows}


def record_attempt_end(engine: Engine, run_pk: int, attempt: int, detail: str) -> None:
    """How an attempt ended while the run stays `running` (a stop the daemon asked for): a
    `running -> running` event that oneseekd.attempts reads to count failures, not stops.
    Nothing is written when the run is no longer this attempt's."""
    with write_session(engine) as session:
        run = session.get(Run, run_pk)
        if run is None or run.state != "running" or run.attempts != attempt:
            return
        _event(session, run_pk, "running", "running", utcnow(), f"attempt {attempt} {detail}")
