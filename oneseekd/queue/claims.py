"""Claims: which daemon trains a run, on which host, for how long unless renewed.

That only one run is `running` per host at a time is enforced by a unique partial index
(uq_runs_one_running), so a second claim fails in the database even if two daemons race.
Several daemons may share one database (docs/scale-out.md). A claim names the claiming daemon
and host and holds a lease that the daemon renews with every heartbeat; a run whose lease
expired is taken over by another daemon that has its models; `attempts` grows with every
claim, and states.check_claim fences every later write on it. On PostgreSQL a claim locks its
row with SELECT ... FOR UPDATE SKIP LOCKED; on SQLite the writer's BEGIN IMMEDIATE already
serializes claims.

A claim takes only a run whose own history (`run_events`) ends in `queued` (a resume or a
takeover: in `running`): a `state` another program wrote (docs/database.md allows it no such
write) is never acted on. The claim logs it (`run_state_refused`) and writes back the state
the history ends in, so a finished run never runs again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import Engine, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from oneseekd.config import DEFAULT_LEASE_SECONDS, default_host
from oneseekd.db.engine import database_now, read_session, write_session
from oneseekd.db.models import BaseModel, Daemon, Run, utcnow
from oneseekd.queue.states import ClaimLost, change, started, written_by_another

if TYPE_CHECKING:
    from oneseekd.certify.ledger import Ledger


@dataclass(frozen=True)
class Claimant:
    """Who claims: the daemon's row, its host, and how long a claim holds unless renewed."""

    daemon_id: int | None
    host: str
    lease_seconds: float = DEFAULT_LEASE_SECONDS

    @classmethod
    def local(cls, daemon_id: int | None = None) -> Claimant:
        return cls(daemon_id, default_host())


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
                if written_by_another(session, run):
                    continue
                if launchable is not None and not launchable(
                    list(run.base_models or []), dict(run.config or {})
                ):
                    continue
                change(session, run, "running", now, f"claimed by host {who.host}")
                _claim(session, run, who, database_now(session))
                run.started_at = now
                run.heartbeat_at = now
                started(session, ledger, run, now)
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
        forged = written_by_another(session, run)  # its history's state is written back
        if not forged:
            change(session, run, "running", now, detail)
            _claim(session, run, who, database_now(session))
            run.heartbeat_at = now
            started(session, ledger, run, now)
            return run
        run_id, state = run.run_id, run.state
    raise ClaimLost(f"run {run_id} is {state}: its running state was written by another program")


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
            if run is None or written_by_another(session, run):
                return None
            change(session, run, "running", now, detail)
            _claim(session, run, claimant, db_now)
            run.heartbeat_at = now
            started(session, ledger, run, now)
            return run
    except IntegrityError:
        return None
