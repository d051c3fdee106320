"""Runs the supervisor finds rather than starts: its own host's run left `running` (a restart,
a start or reap cut short), another host's run whose lease expired (a takeover), and the lease
a live child's run keeps renewed.

Functions of the supervisor they serve: a resumed or taken-over run is started, ended or
given up through it, so that one child at most trains here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from oneseekd import attempts, queue
from oneseekd.certify import current
from oneseekd.daemon import identity, procs
from oneseekd.db.engine import read_session
from oneseekd.db.models import BaseModel, Daemon, Run

if TYPE_CHECKING:
    from oneseekd.daemon.procs import Child
    from oneseekd.daemon.supervisor import Supervisor

log = structlog.get_logger("oneseekd.supervisor")


def settle_current(sup: Supervisor) -> None:
    try:  # a CURRENT move whose ledger event committed before a crash is finished now
        current.settle(sup.engine, sup.config.home)
    except (OSError, current.ViewBlocked) as exc:
        log.error("current_not_settled", error=str(exc))


def recover(sup: Supervisor) -> None:
    """A run this host left `running` when its daemon stopped or died: resume it, or fail
    it. Runs of other hosts are taken over only once their lease expires (see take_over)."""
    settle_current(sup)
    run = queue.running_run(sup.engine, sup.config.catalog.host)
    if run is not None:
        resume(sup, run, f"resumed after the daemon restarted (attempt {run.attempts + 1})")


def resume_own(sup: Supervisor) -> bool:
    """A run of this host left `running` with no child here (its start failed after the
    claim, a reap was cut short by an error, or it was abandoned while the database was
    unreachable): resume it as a restart would. True when there was one."""
    settle_current(sup)
    run = queue.running_run(sup.engine, sup.config.catalog.host)
    if run is None:
        return False
    resume(sup, run, f"resumed after it was left without a trainer (attempt {run.attempts + 1})")
    return True


def _started_here(sup: Supervisor, run: Run) -> bool:
    """Whether the run's trainer was started by a daemon of this home on this machine (a
    predecessor of this one), or by one that did not record where it ran. Only such a
    trainer is ever signalled: a pid on this machine is not proof enough of whose it is."""
    if run.daemon_id is None:
        return True
    with read_session(sup.engine) as session:
        row = session.get(Daemon, run.daemon_id)
    if row is None or row.home is None or row.machine is None:
        return True
    return identity.is_predecessor(row, str(sup.config.home.root.resolve()), identity.machine_id())


def resume(sup: Supervisor, run: Run, detail: str) -> None:
    host = sup.config.catalog.host
    if run.host == host and run.pid and procs.runs(run.pid, run.run_id):
        if _started_here(sup, run):
            log.warning("orphan_trainer_stopped", run_id=run.run_id, pid=run.pid)
            procs.stop_left_behind(run.pid, sup.config.trainer.stop_grace_seconds)
        else:
            log.error("trainer_not_ours", run_id=run.run_id, pid=run.pid)
            return
    if sup.finish_certified(run.id, run.run_id, None, attempt=run.attempts):
        return
    problem = cannot_resume(sup, run)
    if problem:
        lost = queue.Ending("failed", "lost", problem)
        sup.fail(run.id, run.run_id, lost, attempt=run.attempts, settle=True)
        return
    try:
        adopted = queue.adopt(
            sup.engine,
            run.id,
            sup.daemon_id,
            detail,
            ledger=sup.ledger,
            claimant=sup.claimant,
            expected_attempts=run.attempts,
        )
    except queue.ClaimLost as exc:
        sup.lost(run.run_id, exc)
        return
    log.info("run_resumed", run_id=run.run_id, attempt=adopted.attempts, detail=detail)
    sup.spawn(adopted)


def cannot_resume(sup: Supervisor, run: Run) -> str | None:
    limit = sup.config.trainer.max_attempts
    so_far = attempts.attempts_of(sup.engine, run.id, run.attempts)
    if so_far.spent(limit):
        return f"{so_far.message(limit)}; see {run.log_path or 'the run log'}, then submit it again"
    with read_session(sup.engine) as session:
        rows = session.execute(
            select(BaseModel.key, BaseModel.state).where(
                BaseModel.key.in_(run.base_models),
                BaseModel.host == sup.config.catalog.host,
            )
        ).all()
    states = {key: state for key, state in rows}
    gone = [k for k in run.base_models if states.get(k) != "ready"]
    if gone:
        return (
            f"cannot resume: base model {', '.join(gone)} is no longer ready in the "
            "catalog; put it back and submit the request again"
        )
    return None


def take_over(sup: Supervisor, launchable: queue.Launchable | None) -> bool:
    """Claim a run whose owner's lease expired (its daemon died, or lost the database);
    True when one was found."""
    for expired in queue.expired_runs(sup.engine, sup.claimant):
        if launchable is not None and not launchable(expired.base_models, expired.config):
            continue  # a host with the GPUs it asks for takes it, or its own host resumes it
        spent = attempts.attempts_of(sup.engine, expired.run_pk, expired.attempts).spent(
            sup.config.trainer.max_attempts
        )
        detail = (
            "lease expired"
            if spent
            else f"taken over from host {expired.host} after its lease expired "
            f"(attempt {expired.attempts + 1})"
        )
        run = queue.take_over(sup.engine, expired, sup.claimant, detail, ledger=sup.ledger)
        if run is None:
            continue  # renewed meanwhile, or another daemon was first
        if spent:  # counted as one more attempt, then failed as lost
            resume(sup, run, "")
            return True
        log.warning(
            "run_taken_over", run_id=run.run_id, from_host=expired.host, attempt=run.attempts
        )
        sup.spawn(run)
        return True
    return False


def renew(sup: Supervisor, child: Child) -> bool | None:
    """Beat the run's heart and renew its lease: whether a cancel was asked for, None when
    the run is no longer this claim's (logged). A database error is raised."""
    try:
        return queue.heartbeat(
            sup.engine,
            child.run_pk,
            attempt=child.attempt,
            lease_seconds=sup.config.trainer.lease_seconds,
        )
    except queue.ClaimLost as exc:
        sup.lost(child.run_id, exc)
        return None


def keep_lease(sup: Supervisor, child: Child, now: float) -> bool:
    """The heartbeat of a live child; False when the run is no longer ours (the child is
    then abandoned). A renewal that fails is retried at the next heartbeat; the supervisor
    stops the trainer once 80 % of the lease has passed without one."""
    try:
        cancel = renew(sup, child)
    except SQLAlchemyError as exc:
        log.warning("heartbeat_failed", run_id=child.run_id, error=str(exc).splitlines()[0])
        return True
    if cancel is None:
        sup.abandon(child)
        return False
    child.renewed_at = now
    if cancel and child.stop_reason is None:
        sup.terminate(child, "cancel")
    return True
