"""One trainer child at a time: start it, beat its heart, stop it, and name how it ended.

The child is a fresh interpreter started with subprocess (exec, never a fork of this process:
CUDA is not fork-safe), in its own session so a terminal's Ctrl-C reaches only the daemon. Its
output goes to HOME/logs/<run_id>.log; the tail is stored on the run when it fails.

A model that asks for more than one GPU trains in several processes: the child is then torchrun
(`python -m torch.distributed.run`, the agent) starting one trainer per GPU (docs/training.md,
"Several GPUs"). The agent passes SIGTERM on to its workers; each worker sits in a session of
its own, so a kill reaches them one by one, found as the agent's descendants.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import structlog
from sqlalchemy import Engine, select
from sqlalchemy.exc import SQLAlchemyError

from oneseekd import attempts, gpus, protocol, queue
from oneseekd.certify import current
from oneseekd.certify.ledger import Ledger
from oneseekd.certify.publish import certified_dna, discard_staged, publish
from oneseekd.config import Config
from oneseekd.db.engine import read_session
from oneseekd.db.models import BaseModel, ModelTraining, Run, utcnow
from oneseekd.logs import render_log_line
from oneseekd.times import utc_text

log = structlog.get_logger("oneseekd.supervisor")

TAIL_BYTES = 8192
TAIL_LINES = 40
# how [trainer] threads reaches the child: OpenMP and MKL read these; the trainer hands the
# first to torch.set_num_threads as well
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass
class Child:
    run_pk: int
    run_id: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]
    stop_reason: str | None = None  # "cancel" or "shutdown" once SIGTERM was sent
    term_sent_at: float | None = None
    killed: bool = False
    last_beat: float = 0.0
    world_size: int = 1  # above 1, proc is torchrun's agent and the ranks write exit_dir
    exit_dir: Path | None = None
    workers: set[int] = field(default_factory=set)  # the agent's, seen at each heartbeat
    attempt: int | None = None  # the claim's attempt: every write about the run is fenced on it
    renewed_at: float = 0.0  # when the lease was last renewed (this process's clock)


def log_tail(path: Path) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(max(path.stat().st_size - TAIL_BYTES, 0))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    # the log is JSON lines: the error an operator reads shows them as text
    return "\n".join(render_log_line(line) for line in text.splitlines()[-TAIL_LINES:])


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _process_runs(pid: int, run_id: str) -> bool:
    """Whether pid is alive and is a trainer of this run (not a recycled pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return run_id.encode() in cmdline or f"{protocol.ENV_RUN_ID}={run_id}".encode() in (
        _environ(pid)
    )


def _descendants(pid: int) -> list[int]:
    """Every process below pid (torchrun's workers and theirs), read from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kill_tree(pid: int, sig: int, known: set[int]) -> None:
    """Signal pid's process group and every descendant's (workers lead groups of their own),
    and the known workers that outlived their agent (then they are no longer its children)."""
    for target in [*_descendants(pid), *known, pid]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(target, sig)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(target, sig)


def _rank_codes(folder: Path | None, name: str = "rank") -> dict[int, int]:
    """What each rank wrote to the exit folder: `rank-<n>` its status, `pid-<n>` its pid."""
    codes: dict[int, int] = {}
    for path in folder.glob(f"{name}-*") if folder is not None else []:
        with contextlib.suppress(ValueError, OSError):
            codes[int(path.name.removeprefix(f"{name}-"))] = int(path.read_text().strip())
    return codes


def _environ(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


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

    @property
    def claimant(self) -> queue.Claimant:
        return queue.Claimant(
            self.daemon_id, self.config.catalog.host, self.config.trainer.lease_seconds
        )

    @property
    def busy(self) -> bool:
        return self.child is not None

    # --- start -------------------------------------------------------------------------------
    def recover(self) -> None:
        """A run this host left `running` when its daemon stopped or died: resume it, or fail
        it. Runs of other hosts are taken over only once their lease expires (see tick)."""
        try:  # a CURRENT move whose ledger event committed before a crash is finished now
            current.settle(self.engine, self.config.home)
        except OSError as exc:
            log.error("current_not_settled", error=str(exc))
        run = queue.running_run(self.engine, self.config.catalog.host)
        if run is None:
            return
        self._resume(run, f"resumed after the daemon restarted (attempt {run.attempts + 1})")

    def _resume(self, run: Run, detail: str) -> None:
        if run.host == self.config.catalog.host and run.pid and _process_runs(run.pid, run.run_id):
            log.warning("orphan_trainer_stopped", run_id=run.run_id, pid=run.pid)
            self._stop_pid(run.pid)
        if self._finish_certified(run.id, run.run_id, None, attempt=run.attempts):
            return
        problem = self._cannot_resume(run)
        try:
            if problem:
                self._fail(
                    run.id,
                    run.run_id,
                    "lost",
                    problem,
                    attempt=run.attempts,
                    before=lambda: self._settle_outputs(run.id, run.run_id),
                )
                return
            adopted = queue.adopt(
                self.engine,
                run.id,
                self.daemon_id,
                detail,
                ledger=self.ledger,
                claimant=self.claimant,
                expected_attempts=run.attempts,
            )
        except queue.ClaimLost:
            log.info("run_claimed_elsewhere", run_id=run.run_id)
            return
        log.info("run_resumed", run_id=run.run_id, attempt=adopted.attempts, detail=detail)
        self._spawn(adopted)

    def _take_over(self, launchable: queue.Launchable | None) -> bool:
        """Claim a run whose owner's lease expired (its daemon died, or lost the database);
        True when one was found. Checked about once per heartbeat, not every tick."""
        now = self.clock()
        if now < self._next_takeover_check:
            return False
        self._next_takeover_check = now + self.config.trainer.heartbeat_seconds
        for expired in queue.expired_runs(self.engine, self.claimant):
            if launchable is not None and not launchable(expired.base_models, expired.config):
                continue  # a host with the GPUs it asks for takes it, or its own host resumes it
            spent = attempts.attempts_of(self.engine, expired.run_pk, expired.attempts).spent(
                self.config.trainer.max_attempts
            )
            detail = (
                "lease expired"
                if spent
                else f"taken over from host {expired.host} after its lease expired "
                f"(attempt {expired.attempts + 1})"
            )
            run = queue.take_over(self.engine, expired, self.claimant, detail, ledger=self.ledger)
            if run is None:
                continue  # renewed meanwhile, or another daemon was first
            if spent:  # counted as one more attempt, then failed as lost
                self._resume(run, "")
                return True
            log.warning(
                "run_taken_over", run_id=run.run_id, from_host=expired.host, attempt=run.attempts
            )
            self._spawn(run)
            return True
        return False

    def _cannot_resume(self, run: Run) -> str | None:
        limit = self.config.trainer.max_attempts
        so_far = attempts.attempts_of(self.engine, run.id, run.attempts)
        if so_far.spent(limit):
            return (
                f"{so_far.message(limit)}; see {run.log_path or 'the run log'}, then submit "
                "it again"
            )
        with read_session(self.engine) as session:
            rows = session.execute(
                select(BaseModel.key, BaseModel.state).where(
                    BaseModel.key.in_(run.base_models),
                    BaseModel.host == self.config.catalog.host,
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

    def _stop_pid(self, pid: int) -> None:
        """Stop the trainer a dead daemon left behind. It was already told to stop (its
        daemon's death reached it as SIGTERM, or its ranks see the daemon gone at the next
        step) and may be writing its checkpoint: it gets the stop grace, then SIGKILL; a second
        SIGTERM would make it exit at once."""
        workers = _descendants(pid)  # a torchrun agent's: they outlive it for a while
        for kill, wait in ((False, self.config.trainer.stop_grace_seconds), (True, 5.0)):
            if kill:
                for target in [pid, *workers]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(target, signal.SIGKILL)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if not any(Path(f"/proc/{p}").exists() for p in [pid, *workers]):
                    return
                time.sleep(0.05)

    def _launchable(self) -> queue.Launchable | None:
        """Which runs this host can start, by the GPUs each model asks for; None (any) when no
        other host's daemon is alive: then a run this host cannot start is failed with the
        reason at launch, not left queued where no one would ever train it."""
        trainer = self.config.trainer
        if not queue.other_hosts_alive(
            self.engine, self.config.catalog.host, 3 * trainer.lease_seconds
        ):
            return None
        here = gpus.host_gpus()

        def fits(models: list[str], config: dict[str, object]) -> bool:
            try:
                return all(
                    gpus.too_many(gpus.asked_for(config, key), here, trainer.cpu_processes) is None
                    for key in models
                )
            except (TypeError, ValueError, AttributeError):
                return True  # an unreadable config: the trainer refuses it with the reason

        return fits

    def _world(self, run: Run) -> tuple[dict[str, int], int, str | None]:
        """Processes per model of the run, the number the next untrained model needs, and
        why this host cannot give it (None when it can)."""
        trainer = self.config.trainer
        here = gpus.host_gpus()
        devices = here if here > 0 else trainer.cpu_processes
        asked = {key: gpus.asked_for(run.config, key) for key in run.base_models}
        plan = {key: gpus.resolve(value, devices) for key, value in asked.items()}
        with read_session(self.engine) as session:
            trained = set(
                session.scalars(
                    select(ModelTraining.model_key).where(
                        ModelTraining.run_id == run.id, ModelTraining.state == "trained"
                    )
                )
            )
        pending = [key for key in run.base_models if key not in trained]
        if not pending:
            return plan, 1, None  # only certifying is left: one process does it
        problem = gpus.too_many(asked[pending[0]], here, trainer.cpu_processes)
        if problem:
            problem = f"model {pending[0]} {problem} now; it cannot train here"
        return plan, plan[pending[0]], problem

    def _launch(self, run: Run) -> tuple[list[str], dict[str, str], int, Path | None] | str:
        """The argv and environment of the child, its world size and the folder its ranks
        write their exit status to; or why it cannot start."""
        cfg = self.config
        plan, size, problem = self._world(run)
        if problem:
            return problem
        trainer_argv = [
            *cfg.trainer.command,
            "--home",
            str(cfg.home.root),
            "--db-url",
            cfg.db_url,
            "--run-id",
            run.run_id,
        ]
        env = {
            **os.environ,
            protocol.ENV_RUN_ID: run.run_id,
            protocol.ENV_ATTEMPT: str(run.attempts),
            protocol.ENV_RESUME: "1" if run.attempts > 1 else "0",
            protocol.ENV_PARENT_PID: str(os.getpid()),
            protocol.ENV_WORLD_SIZES: json.dumps(plan),
            protocol.ENV_HOST: cfg.catalog.host,
            "PYTHONUNBUFFERED": "1",
        }
        if cfg.trainer.threads:  # else torch's default, or what the daemon's environment says
            env.update({name: str(cfg.trainer.threads) for name in THREAD_VARIABLES})
        if size == 1:
            return trainer_argv, env, 1, None
        exit_dir = cfg.home.root / "runs" / run.run_id / "exit"
        shutil.rmtree(exit_dir, ignore_errors=True)
        exit_dir.mkdir(parents=True)
        env[protocol.ENV_EXIT_DIR] = str(exit_dir)
        env[protocol.ENV_COLLECTIVE_TIMEOUT] = str(cfg.trainer.collective_timeout_seconds)
        # torchrun would set 1; give each worker its share of the cores instead
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // size)))
        argv = [
            sys.executable,
            "-m",
            "torch.distributed.run",  # torchrun as a module: no PATH lookup
            "--standalone",
            f"--nproc-per-node={size}",
            # the supervisor escalates itself; torchrun must not kill a checkpointing worker
            f"--shutdown-timeout={int(max(cfg.trainer.stop_grace_seconds, 1))}",
            "--no-python",
            *trainer_argv,
        ]
        return argv, env, size, exit_dir

    def _spawn(self, run: Run) -> None:
        cfg = self.config
        cfg.home.logs.mkdir(parents=True, exist_ok=True)
        log_path = cfg.home.logs / f"{run.run_id}.log"
        launch = self._launch(run)
        if isinstance(launch, str):
            self._fail(run.id, run.run_id, "error", launch, attempt=run.attempts)
            return
        argv, env, size, exit_dir = launch
        log_file = log_path.open("ab")
        started: dict[str, object] = {"timestamp": utc_text(utcnow()), "level": "info"}
        started |= {"event": "trainer_started", "run_id": run.run_id, "attempt": run.attempts}
        started["argv"] = argv
        log_file.write((json.dumps(started) + "\n").encode())  # the run log is JSON lines
        log_file.flush()
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            log_file.close()
            error = (
                f"cannot start the trainer {argv[0]!r}: {exc.strerror}; check "
                "[trainer] command in oneseekd.toml"
            )
            self._fail(run.id, run.run_id, "error", error, attempt=run.attempts)
            return
        try:
            queue.set_child(self.engine, run.id, proc.pid, str(log_path))
        except BaseException:
            # a trainer nobody records or watches must not go on: stop it, and let the run be
            # resumed (tick's _resume_own) once the database answers again
            _kill_tree(proc.pid, signal.SIGKILL, set())
            proc.wait()
            log_file.close()
            raise
        now = self.clock()
        self.child = Child(
            run.id,
            run.run_id,
            proc,
            log_path,
            log_file,
            last_beat=now,
            world_size=size,
            exit_dir=exit_dir,
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
            processes=size,
        )

    # --- the loop ----------------------------------------------------------------------------
    def tick(self, *, accepting: bool = True) -> None:
        """Watch the child; when there is none and the daemon is accepting, start the next."""
        self.watch()  # first: a failing write below must not keep the child unwatched
        for run_id in queue.cancel_queued_flagged(self.engine, ledger=self.ledger):
            log.info("run_cancelled", run_id=run_id, while_state="queued")
        if self.child is not None or not accepting or self._resume_own():
            return
        launchable = self._launchable()
        if not self._take_over(launchable):
            run = queue.claim_next(
                self.engine,
                self.daemon_id,
                ledger=self.ledger,
                claimant=self.claimant,
                launchable=launchable,
            )
            if run is not None:
                self._spawn(run)

    def watch(self) -> None:
        """Only the child: its exit, heartbeat, lease and stop escalation. The daemon calls it
        even when another step of its loop keeps failing."""
        if self.child is not None:
            self._watch(self.child)

    def _resume_own(self) -> bool:
        """A run of this host left `running` with no child here (its start failed after the
        claim, a reap was cut short by an error, or it was abandoned while the database was
        unreachable): resume it as a restart would. True when there was one."""
        try:  # a CURRENT move whose ledger event committed before a crash is finished now
            current.settle(self.engine, self.config.home)
        except OSError as exc:
            log.error("current_not_settled", error=str(exc))
        run = queue.running_run(self.engine, self.config.catalog.host)
        if run is None:
            return False
        self._resume(
            run, f"resumed after it was left without a trainer (attempt {run.attempts + 1})"
        )
        return True

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
            self._abandon(child)
            return
        if now - child.last_beat >= self.config.trainer.heartbeat_seconds:
            child.last_beat = now
            if child.world_size > 1:
                child.workers.update(_descendants(child.proc.pid))
            if not self._renew(child, now):
                return
        grace = self._grace(child)
        if child.term_sent_at is not None and not child.killed and now - child.term_sent_at > grace:
            log.warning("trainer_killed", run_id=child.run_id, after_seconds=grace)
            self._kill(child)

    def _renew(self, child: Child, now: float) -> bool:
        """Beat the run's heart and renew its lease; False when the run is no longer ours.
        A renewal that fails is retried at the next heartbeat; _watch stops the trainer once
        80 % of the lease has passed without one."""
        try:
            cancel = queue.heartbeat(
                self.engine,
                child.run_pk,
                attempt=child.attempt,
                lease_seconds=self.config.trainer.lease_seconds,
            )
        except queue.ClaimLost as exc:
            log.error("run_claim_lost", run_id=child.run_id, error=exc.message)
            self._abandon(child)
            return False
        except SQLAlchemyError as exc:
            log.warning("heartbeat_failed", run_id=child.run_id, error=str(exc).splitlines()[0])
            return True
        child.renewed_at = now
        if cancel and child.stop_reason is None:
            self._terminate(child, "cancel")
        return True

    def _abandon(self, child: Child) -> None:
        """Stop a trainer whose run is no longer ours, at once and without a checkpoint (the
        new owner may be writing them), and write nothing about the run."""
        self._kill(child)
        child.proc.wait()
        child.log_file.close()
        self.child = None
        log.warning("run_abandoned", run_id=child.run_id, exit_code=child.proc.returncode)

    def _grace(self, child: Child) -> float:
        trainer = self.config.trainer
        return (
            trainer.cancel_grace_seconds
            if child.stop_reason == "cancel"
            else (trainer.stop_grace_seconds)
        )

    def _terminate(self, child: Child, reason: str) -> None:
        child.stop_reason = reason
        child.term_sent_at = self.clock()
        log.info("trainer_stop_requested", run_id=child.run_id, reason=reason)
        with contextlib.suppress(ProcessLookupError):
            child.proc.send_signal(signal.SIGTERM)

    def _kill(self, child: Child) -> None:
        child.killed = True
        if child.world_size > 1:
            _kill_tree(child.proc.pid, signal.SIGKILL, self._workers(child))
            return
        try:
            os.killpg(child.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            child.proc.kill()

    def _reap(self, child: Child, code: int) -> None:
        child.log_file.close()
        self.child = None
        if child.world_size > 1:
            left = self._workers(child)
            if left:  # the agent died and left them: they must not train on unwatched
                log.warning("trainer_workers_killed", run_id=child.run_id, pids=sorted(left))
                _kill_tree(child.proc.pid, signal.SIGKILL, left)
            code = protocol.combined_exit(_rank_codes(child.exit_dir), child.world_size, code)
        if code == protocol.EXIT_RELAUNCH and child.stop_reason is None:
            self._relaunch(child)
            return
        if self._finish_certified(child.run_pk, child.run_id, code, attempt=child.attempt):
            return
        if child.stop_reason == "shutdown":
            # a checkpointed stop the daemon asked for is not a failed attempt (max_attempts)
            planned = code == protocol.EXIT_STOPPED and not child.killed
            ending = (
                attempts.stopped_detail("shutdown")
                if planned
                else attempts.failed_detail(code, "shutdown")
            )
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
            return  # stays `running`: recover() resumes it at the next start
        state, outcome, error = self._outcome(child, code)
        try:
            queue.finish(
                self.engine,
                child.run_pk,
                state,
                outcome=outcome,
                error=error,
                exit_code=code,
                ledger=self.ledger,
                attempt=child.attempt,
                before=lambda: self._settle_outputs(child.run_pk, child.run_id),
            )
        except queue.ClaimLost as exc:
            log.error("run_claim_lost", run_id=child.run_id, error=exc.message)
            return
        event = {"succeeded": "run_succeeded", "cancelled": "run_cancelled"}.get(
            state, "run_failed"
        )
        log.info(
            event,
            run_id=child.run_id,
            outcome=outcome,
            exit_code=code,
            error=error.splitlines()[0] if error else None,
        )

    def _workers(self, child: Child) -> set[int]:
        """The agent's workers still alive (checked to be this run's, not a recycled pid)."""
        if child.proc.poll() is None:
            child.workers.update(_descendants(child.proc.pid))
        child.workers.update(_rank_codes(child.exit_dir, "pid").values())
        child.workers = {p for p in child.workers if _process_runs(p, child.run_id)}
        return child.workers

    def _relaunch(self, child: Child) -> None:
        """The next model asks for another number of processes: start the run again, in the
        same attempt, if the run is still this claim's."""
        try:
            queue.heartbeat(
                self.engine,
                child.run_pk,
                attempt=child.attempt,
                lease_seconds=self.config.trainer.lease_seconds,
            )
        except queue.ClaimLost as exc:
            log.error("run_claim_lost", run_id=child.run_id, error=exc.message)
            return
        with read_session(self.engine) as session:
            run = session.get_one(Run, child.run_pk)
            session.expunge(run)
        _, size, _ = self._world(run)
        if size == child.world_size:  # nothing would change: do not go round in circles
            error = (
                f"the trainer asked to be started again with {size} processes, as it was\n"
                + log_tail(child.log_path)
            )
            with contextlib.suppress(queue.ClaimLost):  # then it is another daemon's to end
                self._fail(
                    child.run_pk,
                    child.run_id,
                    "error",
                    error,
                    exit_code=protocol.EXIT_RELAUNCH,
                    attempt=child.attempt,
                )
            return
        log.info("trainer_relaunched", run_id=child.run_id, processes=size)
        self._spawn(run)

    def _fail(
        self,
        run_pk: int,
        run_id: str,
        outcome: str,
        error: str,
        *,
        exit_code: int | None = None,
        attempt: int | None = None,
        before: Callable[[], None] | None = None,
    ) -> None:
        """End a run `failed` with the reason (fenced on the claim's attempt when given)."""
        queue.finish(
            self.engine,
            run_pk,
            "failed",
            outcome=outcome,
            error=error,
            exit_code=exit_code,
            ledger=self.ledger,
            attempt=attempt,
            before=before,
        )
        log.error("run_failed", run_id=run_id, outcome=outcome, error=error)

    def _finish_certified(
        self, run_pk: int, run_id: str, code: int | None, *, attempt: int | None
    ) -> bool:
        """A run whose completion event the ledger holds succeeded, however its trainer ended
        (it may have been killed between the commit and the rename into place, or on its way
        out): publish what it committed and mark it so. False for any other run."""
        dna = certified_dna(self.engine, run_pk)
        if dna is None:
            return False
        try:
            queue.finish(
                self.engine,
                run_pk,
                "succeeded",
                outcome="succeeded",
                exit_code=code,
                ledger=self.ledger,
                attempt=attempt,
                before=lambda: self._settle_outputs(run_pk, run_id),
            )
        except queue.ClaimLost as exc:  # ended already, or another daemon's attempt now
            log.info("run_claimed_elsewhere", run_id=run_id, error=exc.message)
            return True
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

    def _outcome(self, child: Child, code: int) -> tuple[str, str, str | None]:
        if child.stop_reason == "cancel":
            return "cancelled", "cancelled", None
        if code == protocol.EXIT_OK:
            return "succeeded", "succeeded", None
        tail = log_tail(child.log_path)
        if code == protocol.EXIT_OOM or any(m in tail for m in protocol.OOM_MARKERS):
            return (
                "failed",
                "oom",
                (
                    "out of memory: lower batch_size or max_seq_len, or set "
                    "gradient_checkpointing: true\n" + tail
                ),
            )
        if code < 0:
            name = _signal_name(-code)
            hint = (
                " (the kernel's out-of-memory killer sends SIGKILL: see dmesg)"
                if -code == signal.SIGKILL
                else ""
            )
            return "failed", "signal", f"the trainer was killed by {name}{hint}\n{tail}"
        if code == protocol.EXIT_STOPPED:
            return (
                "failed",
                "stopped",
                (f"the trainer stopped without being asked to (exit {code})\n{tail}"),
            )
        return "failed", "error", f"the trainer exited with status {code}\n{tail}"

    # --- stop --------------------------------------------------------------------------------
    def shutdown(self, urgent: Callable[[], bool] = lambda: False) -> None:
        """Ask the child to checkpoint and exit; kill it after the stop grace, or at once when
        `urgent()` turns true (a second SIGTERM). The run stays `running` and is resumed at the
        next start."""
        child = self.child
        if child is None:
            return
        self._terminate(child, "shutdown")
        deadline = self.clock() + self.config.trainer.stop_grace_seconds
        while child.proc.poll() is None and self.clock() < deadline and not urgent():
            time.sleep(0.05)
        if child.proc.poll() is None:
            self._kill(child)
            child.proc.wait()
        self._reap(child, child.proc.returncode)
