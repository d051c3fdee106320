"""The run state machine: queued -> running -> succeeded | failed | cancelled.

Every change is one transaction that also writes a `run_events` row. That only one run is
`running` per host at a time is enforced by a unique partial index (uq_runs_one_running), so
a second claim fails in the database even if two daemons race.

Several daemons may share one database (docs/scale-out.md). A claim names the claiming daemon
and host and holds a lease that the daemon renews with every heartbeat; a run whose lease
expired is taken over by another daemon that has its models. Every write a claim owner makes
afterwards is fenced on the attempt it claimed (`attempts` grows with every claim), so a daemon
whose run was taken over learns it (ClaimLost) instead of overwriting the new owner's state.
On PostgreSQL a claim locks its row with SELECT ... FOR UPDATE SKIP LOCKED; on SQLite the
writer's BEGIN IMMEDIATE already serializes claims.

Given a `ledger`, a change that a provable history needs (a run started, failed or cancelled)
also appends its signed ledger event in that same transaction. A run's success is certified by
the trainer, which appends `dna_v2_training_completed` with its artifacts.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import Engine, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from oneseekd.config import DEFAULT_LEASE_SECONDS
from oneseekd.db.engine import database_now, read_session, write_session
from oneseekd.db.models import FINISHED_STATES, BaseModel, Daemon, Run, RunEvent, utcnow
from oneseekd.errors import OneseekError
from oneseekd.errors import RunNotFound as RunNotFound  # raised here, defined light

if TYPE_CHECKING:
    from oneseekd.certify.ledger import Ledger

TRANSITIONS = {
    "queued": ("running", "cancelled", "failed"),
    "running": ("running", "succeeded", "failed", "cancelled"),
}


class ClaimLost(OneseekError):
    """The run is no longer this claim's: it ended, or another daemon took it over after the
    lease expired. The former owner stops its trainer and writes nothing more about the run."""


@dataclass(frozen=True)
class Claimant:
    """Who claims: the daemon's row, its host, and how long a claim holds unless renewed."""

    daemon_id: int | None
    host: str
    lease_seconds: float = DEFAULT_LEASE_SECONDS

    @classmethod
    def local(cls, daemon_id: int | None = None) -> Claimant:
        return cls(daemon_id, socket.gethostname())


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


def running_run(engine: Engine, host: str | None = None) -> Run | None:
    """The run in progress (on `host`, when given)."""
    with read_session(engine) as session:
        query = select(Run).where(Run.state == "running")
        if host is not None:
            query = query.where(Run.host == host)
        return session.scalars(query.order_by(Run.id)).first()


def _trainable_here(
    session: Session, host: str, runs: Iterable[tuple[int, list[str]]]
) -> list[int]:
    """The runs this host can train, in the given order: all of their base models are ready
    here. A run whose models are ready on no host at all is trainable anywhere: its trainer
    then fails it with the reason, rather than leaving it queued forever."""
    runs = list(runs)
    keys = {k for _, models in runs for k in models}
    if not keys:
        return [pk for pk, _ in runs]
    ready: dict[str, set[str]] = {}
    for row_host, key in session.execute(
        select(BaseModel.host, BaseModel.key).where(
            BaseModel.state == "ready", BaseModel.key.in_(keys)
        )
    ):
        ready.setdefault(row_host, set()).add(key)
    mine = ready.get(host, set())
    out = []
    for pk, models in runs:
        if set(models) <= mine or not any(set(models) <= have for have in ready.values()):
            out.append(pk)
    return out


def _lock(session: Session, run_pk: int, *conditions: object) -> Run | None:
    """The run, locked for this transaction, if it still meets the conditions; None when it
    does not or another daemon holds it locked right now (PostgreSQL's SKIP LOCKED)."""
    return session.scalars(
        select(Run)
        .where(Run.id == run_pk, *conditions)  # type: ignore[arg-type]
        .with_for_update(skip_locked=True)
        .execution_options(populate_existing=True)
    ).first()


def _busy(session: Session, host: str) -> bool:
    return (
        session.scalars(select(Run.id).where(Run.state == "running", Run.host == host)).first()
        is not None
    )


def _claim(session: Session, run: Run, who: Claimant, db_now: datetime) -> None:
    run.daemon_id = who.daemon_id
    run.host = who.host
    run.attempts += 1
    run.lease_expires_at = db_now + timedelta(seconds=who.lease_seconds)
    run.pid = None


# whether this host can launch a run (its GPUs), from its base models and stored config
Launchable = Callable[[list[str], dict[str, object]], bool]


def other_hosts_alive(engine: Engine, host: str, within_seconds: float) -> bool:
    """Whether a daemon of another host has beaten its heart lately (a shared database)."""
    since = utcnow() - timedelta(seconds=within_seconds)
    with read_session(engine) as session:
        return (
            session.scalars(
                select(Daemon.id).where(
                    Daemon.host != host, Daemon.stopped_at.is_(None), Daemon.heartbeat_at > since
                )
            ).first()
            is not None
        )


def claim_next(
    engine: Engine,
    daemon_id: int | None,
    now: datetime | None = None,
    *,
    ledger: Ledger | None = None,
    claimant: Claimant | None = None,
    launchable: Launchable | None = None,
) -> Run | None:
    """Move the first queued run (highest priority, then oldest) that this host can train to
    running; None when there is none or this host already runs one. `launchable` leaves the
    runs this host could not start (more GPUs than it has) to hosts that can."""
    now = now or utcnow()
    who = claimant or Claimant.local(daemon_id)
    try:
        with write_session(engine) as session:
            if _busy(session, who.host):
                return None
            queued = session.execute(
                select(Run.id, Run.base_models)
                .where(Run.state == "queued")
                .order_by(Run.priority.desc(), Run.id)
            ).all()
            if not queued:
                return None
            for pk in _trainable_here(session, who.host, ((r.id, r.base_models) for r in queued)):
                run = _lock(session, pk, Run.state == "queued")
                if run is None:
                    continue  # another daemon is claiming it right now
                if launchable is not None and not launchable(
                    list(run.base_models or []), dict(run.config or {})
                ):
                    continue
                _change(session, run, "running", now, f"claimed by host {who.host}")
                _claim(session, run, who, database_now(session))
                run.started_at = now
                run.heartbeat_at = now
                _started(session, ledger, run, now)
                return run
            return None
    except IntegrityError:
        return None  # another claimer won the race: the database kept it to one run per host


def adopt(
    engine: Engine,
    run_pk: int,
    daemon_id: int | None,
    detail: str,
    now: datetime | None = None,
    *,
    ledger: Ledger | None = None,
    claimant: Claimant | None = None,
    expected_attempts: int | None = None,
) -> Run:
    """Take over a run left `running` by a daemon that stopped or died, for another attempt.
    With `expected_attempts`, only if nobody claimed it since it was read (else ClaimLost)."""
    now = now or utcnow()
    who = claimant or Claimant.local(daemon_id)
    with write_session(engine) as session:
        run = _lock(session, run_pk)
        if run is None or (expected_attempts is not None and run.attempts != expected_attempts):
            raise ClaimLost(f"run {run_pk} was claimed by another daemon meanwhile")
        _change(session, run, "running", now, detail)
        _claim(session, run, who, database_now(session))
        run.heartbeat_at = now
        _started(session, ledger, run, now)
        return run


@dataclass(frozen=True)
class Expired:
    """A run whose owner's lease ran out, as a takeover found it."""

    run_pk: int
    run_id: str
    host: str | None
    attempts: int
    base_models: list[str]
    config: dict[str, object]


def expired_runs(engine: Engine, claimant: Claimant) -> list[Expired]:
    """Runs `running` on other hosts whose lease has expired and that this host can train,
    oldest first; none while this host runs one itself. The lease is compared on the
    database's clock, the one that set it."""
    with read_session(engine) as session:
        if _busy(session, claimant.host):
            return []
        now = database_now(session)
        rows = session.execute(
            select(Run.id, Run.run_id, Run.host, Run.attempts, Run.base_models, Run.config)
            .where(
                Run.state == "running",
                or_(Run.host.is_(None), Run.host != claimant.host),
                or_(Run.lease_expires_at.is_(None), Run.lease_expires_at < now),
            )
            .order_by(Run.id)
        ).all()
        if not rows:
            return []
        ok = set(_trainable_here(session, claimant.host, ((r.id, r.base_models) for r in rows)))
    return [
        Expired(r.id, r.run_id, r.host, r.attempts, list(r.base_models or []), dict(r.config or {}))
        for r in rows
        if r.id in ok
    ]


def take_over(
    engine: Engine,
    expired: Expired,
    claimant: Claimant,
    detail: str,
    now: datetime | None = None,
    *,
    ledger: Ledger | None = None,
) -> Run | None:
    """Claim an expired run for another attempt here; None when its owner renewed the lease
    or another daemon took it first."""
    now = now or utcnow()
    try:
        with write_session(engine) as session:
            if _busy(session, claimant.host):
                return None
            db_now = database_now(session)
            run = _lock(
                session,
                expired.run_pk,
                Run.state == "running",
                Run.attempts == expired.attempts,
                or_(Run.lease_expires_at.is_(None), Run.lease_expires_at < db_now),
            )
            if run is None:
                return None
            _change(session, run, "running", now, detail)
            _claim(session, run, claimant, db_now)
            run.heartbeat_at = now
            _started(session, ledger, run, now)
            return run
    except IntegrityError:
        return None


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
        run = session.get_one(Run, run_pk, with_for_update=attempt is not None)
        if attempt is not None and (run.state != "running" or run.attempts != attempt):
            raise ClaimLost(
                f"run {run.run_id} is no longer this daemon's: it is {run.state}, attempt "
                f"{run.attempts} on host {run.host}"
            )
        run.heartbeat_at = now or utcnow()
        if run.state == "running":
            run.lease_expires_at = database_now(session) + timedelta(seconds=lease_seconds)
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
    attempt: int | None = None,
    before: Callable[[], None] | None = None,
) -> Run:
    """End a run. With `attempt`, only the claim of that attempt may end it (else ClaimLost).
    `before` runs once the claim is checked and the row held, inside the transaction that
    ends the run: what it does (publishing the run's files) cannot race a takeover."""
    now = now or utcnow()
    with write_session(engine) as session:
        run = session.get_one(Run, run_pk, with_for_update=attempt is not None)
        if attempt is not None and (run.state != "running" or run.attempts != attempt):
            raise ClaimLost(f"run {run.run_id} is no longer this daemon's; its outcome is not ours")
        if before is not None:
            before()
        detail = outcome if error is None else f"{outcome}: {error.splitlines()[-1][:300]}"
        _change(session, run, state, now, detail)
        run.outcome = outcome
        run.error = error
        run.exit_code = exit_code
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


def record_attempt_end(engine: Engine, run_pk: int, attempt: int, detail: str) -> None:
    """How an attempt ended while the run stays `running` (a stop the daemon asked for): a
    `running -> running` event that oneseekd.attempts reads to count failures, not stops.
    Nothing is written when the run is no longer this attempt's."""
    with write_session(engine) as session:
        run = session.get(Run, run_pk)
        if run is None or run.state != "running" or run.attempts != attempt:
            return
        session.add(
            RunEvent(
                run_id=run_pk,
                at=utcnow(),
                old_state="running",
                new_state="running",
                detail=f"attempt {attempt} {detail}",
            )
        )
