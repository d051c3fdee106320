"""One trainer child at a time: start it, beat its heart, stop it, and record how it ended.

How a child is started is launch.py's, its process tree procs.py's, how its exit reads as an
outcome outcome.py's, and the runs found rather than started (resume, takeover, the lease)
recovery.py's. The supervisor holds the child and decides when each of those happens, like
rq's worker holds its work horse.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable

import structlog
from sqlalchemy import Engine, select
from sqlalchemy.exc import SQLAlchemyError

from oneseekd import protocol, queue
from oneseekd.certify.ledger import Ledger
from oneseekd.certify.publish import certified_dna, discard_staged, publish
from oneseekd.config import Config
from oneseekd.daemon import launch, outcome, procs, recovery
from oneseekd.daemon.procs import Child
from oneseekd.db.engine import read_session
from oneseekd.db.models import Run
from oneseekd.errors import OneseekError

log = structlog.get_logger("oneseekd.supervisor")


def _live_states(engine: Engine) -> set[str]:
    """Which of `queued` and `running` some run is in (any host's), from the queue's index."""
    with engine.connect() as conn:  # no Session: this runs every second an idle daemon ticks
        found = conn.scalars(
            select(Run.state).where(Run.state.in_(("queued", "running"))).distinct()
        )
        return set(found)


class Supervisor:
    def __init__(
        self,
        engine: Engine,
        config: Config,
        daemon_id: int | None,
        clock: Callable[[], float] = time.monotonic,
        ledger: Ledger | None = None,
    ) -> None:
        self.engine = engine
        self.config = config
        self.daemon_id = daemon_id
        self.clock = clock
        # every run start and ending goes into the signed ledger
        self.ledger = ledger or Ledger.for_home(engine, config.home)
        self.child: Child | None = None
        self._next_takeover_check = 0.0
        # the last look found no run queued or running (any host's): nothing waits on a clock
        self.queue_empty = False
        # which of queued and running some run is in: the daemon gives a cheaper reader
        # where it has one (daemon/pulse.py, over its change probe's connection)
        self.live_states: Callable[[], set[str]] = lambda: _live_states(engine)

    @property
    def claimant(self) -> queue.Claimant:
        return queue.Claimant(
            self.daemon_id, self.config.catalog.host, self.config.trainer.lease_seconds
        )

    @property
    def busy(self) -> bool:
        return self.child is not None

    def recover(self) -> None:
        """At the daemon's start: resume or fail the run this host left `running`."""
        recovery.recover(self)

    # --- the loop ----------------------------------------------------------------------------
    def tick(self, *, accepting: bool = True) -> None:
        """Watch the child; when there is none and the daemon is accepting, start the next.

        Every step below acts on a queued run (a cancel flag, a claim) or a running one (a
        resume, a takeover): one read of the queue's index says whether there are any, so an
        empty queue costs that read, not two write transactions and four reads."""
        self.watch()  # first: a failing write below must not keep the child unwatched
        live = self.live_states()
        self.queue_empty = not live
        if "queued" in live:
            for run_id in queue.cancel_queued_flagged(self.engine, ledger=self.ledger):
                log.info("run_cancelled", run_id=run_id, while_state="queued")
        if self.child is not None or not accepting:
            return
        if not live:
            recovery.settle_current(self)  # a file's check: no run needs the database
            return
        if recovery.resume_own(self):
            return
        launchable = launch.launchable(self.engine, self.config)
        if not self._take_over(launchable):
            run = queue.claim_next(
                self.engine,
                self.daemon_id,
                ledger=self.ledger,
                claimant=self.claimant,
                launchable=launchable,
            )
            if run is not None:
                self.spawn(run)

    def _take_over(self, launchable: queue.Launchable | None) -> bool:
        """Checked about once per heartbeat, not every tick."""
        now = self.clock()
        if now < self._next_takeover_check:
            return False
        self._next_takeover_check = now + self.config.trainer.heartbeat_seconds
        return recovery.take_over(self, launchable)

    def watch(self) -> None:
        """Only the child: its exit, heartbeat, lease and stop escalation. The daemon calls it
        even when another step of its loop keeps failing."""
        if self.child is not None:
            self._watch(self.child)

    def _watch(self, child: Child) -> None:
        code = child.proc.poll()
        if code is not None:
            self._reap(child, code)
            return
        now = self.clock()
        silent = now - child.renewed_at
        if silent >= 0.8 * self.config.trainer.lease_seconds:
            # a daemon that cannot renew stops its trainer before the lease can expire (on its
            # own clock), so that a takeover never finds it still training
            log.error("run_lease_expiring", run_id=child.run_id, seconds=round(silent, 1))
            self.abandon(child)
            return
        if now - child.last_beat >= self.config.trainer.heartbeat_seconds:
            child.last_beat = now
            if child.world_size > 1:
                child.workers.update(procs.descendants(child.proc.pid))
            if not recovery.keep_lease(self, child, now):
                return
        grace = self._grace(child)
        if child.term_sent_at is not None and not child.killed and now - child.term_sent_at > grace:
            log.warning("trainer_killed", run_id=child.run_id, after_seconds=grace)
            child.kill()

    # --- the child's life --------------------------------------------------------------------
    def spawn(self, run: Run) -> None:
        """Start the run's trainer; a run that cannot start here fails with the reason."""
        try:
            started = launch.start(self.engine, self.config, run)
        except launch.CannotLaunch as exc:
            failed = queue.Ending("failed", "error", exc.reason)
            self.fail(run.id, run.run_id, failed, attempt=run.attempts, settle=False)
            return
        proc = started.proc
        try:
            queue.set_child(self.engine, run.id, proc.pid, str(started.log_path))
        except BaseException:
            # a trainer nobody records or watches must not go on: stop it, and let the run be
            # resumed (tick's resume_own) once the database answers again
            procs.kill_tree(proc.pid, signal.SIGKILL, set())
            proc.wait()
            started.log_file.close()
            raise
        now = self.clock()
        self.child = Child(
            run.id,
            run.run_id,
            proc,
            started.log_path,
            started.log_file,
            last_beat=now,
            world_size=started.launch.size,
            exit_dir=started.launch.exit_dir,
            attempt=run.attempts,
            renewed_at=now,
        )
        log.info(
            "run_started",
            run_id=run.run_id,
            pid=proc.pid,
            attempt=run.attempts,
            models=run.base_models,
            version=run.version,
            processes=started.launch.size,
        )

    def abandon(self, child: Child) -> None:
        """Stop a trainer whose run is no longer ours, at once and without a checkpoint (the
        new owner may be writing them), and write nothing about the run."""
        child.kill()
        child.proc.wait()
        child.log_file.close()
        self.child = None
        log.warning("run_abandoned", run_id=child.run_id, exit_code=child.proc.returncode)

    def _grace(self, child: Child) -> float:
        trainer = self.config.trainer
        return (
            trainer.cancel_grace_seconds
            if child.stop_reason == "cancel"
            else trainer.stop_grace_seconds
        )

    def terminate(self, child: Child, reason: str) -> None:
        child.stop_reason = reason
        child.term_sent_at = self.clock()
        log.info("trainer_stop_requested", run_id=child.run_id, reason=reason)
        with contextlib.suppress(ProcessLookupError):
            child.proc.send_signal(signal.SIGTERM)

    def _reap(self, child: Child, code: int) -> None:
        child.log_file.close()
        self.child = None
        if child.world_size > 1:
            left = child.live_workers()
            if left:  # the agent died and left them: they must not train on unwatched
                log.warning("trainer_workers_killed", run_id=child.run_id, pids=sorted(left))
                procs.kill_tree(child.proc.pid, signal.SIGKILL, left)
            code = protocol.combined_exit(procs.rank_codes(child.exit_dir), child.world_size, code)
        if code == protocol.EXIT_RELAUNCH and child.stop_reason is None:
            self._relaunch(child)
            return
        if self.finish_certified(child.run_pk, child.run_id, code, attempt=child.attempt):
            return
        if child.stop_reason == "shutdown":
            self._interrupted(child, code)
            return  # stays `running`: recover() resumes it at the next start
        ended = outcome.of_exit(
            code,
            cancelled=child.stop_reason == "cancel",
            tail=outcome.log_tail(child.log_path),
            reason=outcome.log_reason(child.log_path),
        )
        if not self._end(child.run_pk, child.run_id, ended, attempt=child.attempt, settle=True):
            return
        # a failure is an error in the journal, with its one cause line
        (log.error if ended.state == "failed" else log.info)(
            ended.event,
            run_id=child.run_id,
            outcome=ended.outcome,
            exit_code=code,
            error=ended.error.splitlines()[0] if ended.error else None,
        )

    def _interrupted(self, child: Child, code: int) -> None:
        """A child the daemon stopped on its way down: the run stays `running`, and how the
        attempt ended is recorded (a checkpointed stop is not a failure for max_attempts)."""
        planned, ending = outcome.of_shutdown(code, killed=child.killed)
        try:
            if child.attempt is not None:
                queue.record_attempt_end(self.engine, child.run_pk, child.attempt, ending)
        except SQLAlchemyError as exc:  # then the attempt counts as failed: never lost
            log.error("attempt_end_unrecorded", run_id=child.run_id, error=str(exc))
        log.info(
            "run_interrupted",
            run_id=child.run_id,
            exit_code=code,
            counted_as_failure=not planned,
            detail="resumes at the next start",
        )

    def _relaunch(self, child: Child) -> None:
        """The next model asks for another number of processes: start the run again, in the
        same attempt, if the run is still this claim's."""
        if recovery.renew(self, child) is None:
            return
        with read_session(self.engine) as session:
            run = session.get_one(Run, child.run_pk)
            session.expunge(run)
        size = launch.world(self.engine, self.config, run).size
        if size == child.world_size:  # nothing would change: do not go round in circles
            error = (
                f"the trainer asked to be started again with {size} processes, as it was\n"
                + outcome.log_tail(child.log_path)
            )
            failed = queue.Ending("failed", "error", error, protocol.EXIT_RELAUNCH)
            self.fail(child.run_pk, child.run_id, failed, attempt=child.attempt, settle=False)
            return
        log.info("trainer_relaunched", run_id=child.run_id, processes=size)
        self.spawn(run)

    # --- how a run ends ----------------------------------------------------------------------
    def lost(self, run_id: str, exc: OneseekError) -> None:
        """The run is no longer this claim's (it ended, or another daemon took it over): the
        one place that says so; nothing more is written about it."""
        log.warning("run_claim_lost", run_id=run_id, error=exc.message)

    def _end(
        self, run_pk: int, run_id: str, ending: queue.Ending, *, attempt: int | None, settle: bool
    ) -> bool:
        """End the run, fenced on the claim's attempt (and with `settle`, its outputs put in
        place or discarded in the same transaction); False when it is no longer ours."""
        try:
            queue.finish(
                self.engine,
                run_pk,
                ending,
                ledger=self.ledger,
                attempt=attempt,
                before=(lambda: self._settle_outputs(run_pk, run_id)) if settle else None,
            )
        except queue.ClaimLost as exc:
            self.lost(run_id, exc)
            return False
        return True

    def fail(
        self, run_pk: int, run_id: str, failed: queue.Ending, *, attempt: int | None, settle: bool
    ) -> None:
        """End a run `failed` with its reason (fenced on the claim's attempt when given)."""
        if self._end(run_pk, run_id, failed, attempt=attempt, settle=settle):
            log.error("run_failed", run_id=run_id, outcome=failed.outcome, error=failed.error)

    def finish_certified(
        self, run_pk: int, run_id: str, code: int | None, *, attempt: int | None
    ) -> bool:
        """A run whose completion event the ledger holds succeeded, however its trainer ended
        (it may have been killed between the commit and the rename into place, or on its way
        out): publish what it committed and mark it so. False for any other run."""
        dna = certified_dna(self.engine, run_pk)
        if dna is None:
            return False
        ending = queue.Ending("succeeded", "succeeded", exit_code=code)
        if self._end(run_pk, run_id, ending, attempt=attempt, settle=True):
            log.info("run_succeeded", run_id=run_id, outcome="succeeded", exit_code=code, dna=dna)
        return True

    def _settle_outputs(self, run_pk: int, run_id: str) -> None:
        """For a run that is over: move what it committed into place (its trainer may have
        died before it did), and remove what it staged but never committed. A disk error here
        is logged, not raised into the daemon's loop."""
        try:
            publish(self.engine, self.config.home, run_pk)
            discard_staged(self.engine, self.config.home, run_pk)
        except OSError as exc:
            log.error("outputs_not_published", run_id=run_id, error=str(exc))

    # --- stop --------------------------------------------------------------------------------
    def shutdown(self, urgent: Callable[[], bool] = lambda: False) -> None:
        """Ask the child to checkpoint and exit; kill it after the stop grace, or at once when
        `urgent()` turns true (a second SIGTERM). The run stays `running` and is resumed at the
        next start."""
        child = self.child
        if child is None:
            return
        self.terminate(child, "shutdown")
        deadline = self.clock() + self.config.trainer.stop_grace_seconds
        while child.proc.poll() is None and self.clock() < deadline and not urgent():
            time.sleep(0.05)
        if child.proc.poll() is None:
            child.kill()
            child.proc.wait()
        self._reap(child, child.proc.returncode)
