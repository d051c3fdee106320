"""How a trainer child is started: how many processes a run gets (its GPUs, or CPU processes
standing in for them), the argv and environment, torchrun for more than one, and the Popen.

The child is a fresh interpreter started with subprocess (exec, never a fork of this process:
CUDA is not fork-safe), in its own session so a terminal's Ctrl-C reaches only the daemon. Its
output goes to HOME/logs/<run_id>.log, a JSON line naming how it was started first.

A model that asks for more than one GPU trains in several processes: the child is then torchrun
(`python -m torch.distributed.run`, the agent) starting one trainer per GPU (docs/training.md,
"Several GPUs"). The agent passes SIGTERM on to its workers; each worker sits in a session of
its own (see procs.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from sqlalchemy import Engine, select

from oneseekd import gpus, protocol, queue
from oneseekd.config import Config
from oneseekd.db.engine import read_session
from oneseekd.db.models import ModelTraining, Run, utcnow
from oneseekd.times import utc_text

# how [trainer] threads reaches the child: OpenMP and MKL read these; the trainer hands the
# first to torch.set_num_threads as well
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


class CannotLaunch(Exception):
    """Why a run's trainer cannot start here; the run fails with this as its error."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class World:
    """Processes per model of a run, and the number the next untrained model needs."""

    plan: dict[str, int]
    size: int
    problem: str | None = None  # why this host cannot give `size` (None when it can)


@dataclass(frozen=True)
class Launch:
    argv: list[str]
    env: dict[str, str]
    size: int  # above 1, argv is torchrun's agent
    exit_dir: Path | None  # where the ranks write their exit status (several processes)


@dataclass
class Started:
    proc: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]
    launch: Launch


def launchable(engine: Engine, config: Config) -> queue.Launchable | None:
    """Which runs this host can start, by the GPUs each model asks for; None (any) when no
    other host's daemon is alive: then a run this host cannot start is failed with the reason
    at launch, not left queued where no one would ever train it."""
    trainer = config.trainer
    if not queue.other_hosts_alive(engine, config.catalog.host, 3 * trainer.lease_seconds):
        return None
    here = gpus.host_gpus()

    def fits(models: list[str], run_config: dict[str, object]) -> bool:
        try:
            return all(
                gpus.too_many(gpus.asked_for(run_config, key), here, trainer.cpu_processes) is None
                for key in models
            )
        except (TypeError, ValueError, AttributeError):
            return True  # an unreadable config: the trainer refuses it with the reason

    return fits


def world(engine: Engine, config: Config, run: Run) -> World:
    trainer = config.trainer
    here = gpus.host_gpus()
    devices = here if here > 0 else trainer.cpu_processes
    asked = {key: gpus.asked_for(run.config, key) for key in run.base_models}
    plan = {key: gpus.resolve(value, devices) for key, value in asked.items()}
    with read_session(engine) as session:
        trained = set(
            session.scalars(
                select(ModelTraining.model_key).where(
                    ModelTraining.run_id == run.id, ModelTraining.state == "trained"
                )
            )
        )
    pending = [key for key in run.base_models if key not in trained]
    if not pending:
        return World(plan, 1)  # only certifying is left: one process does it
    problem = gpus.too_many(asked[pending[0]], here, trainer.cpu_processes)
    if problem:
        problem = f"model {pending[0]} {problem} now; it cannot train here"
    return World(plan, plan[pending[0]], problem)


def plan(engine: Engine, config: Config, run: Run) -> Launch:
    """The argv and environment of the run's child; CannotLaunch when this host cannot give
    the next model the processes it asks for."""
    cfg = config
    got = world(engine, cfg, run)
    if got.problem:
        raise CannotLaunch(got.problem)
    size = got.size
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
        protocol.ENV_PARENT_PID: str(os.getpid()),
        protocol.ENV_WORLD_SIZES: json.dumps(got.plan),
        protocol.ENV_HOST: cfg.catalog.host,
        protocol.ENV_LEASE_SECONDS: str(cfg.trainer.lease_seconds),
        "PYTHONUNBUFFERED": "1",
    }
    if cfg.trainer.threads:  # else torch's default, or what the daemon's environment says
        env.update({name: str(cfg.trainer.threads) for name in THREAD_VARIABLES})
    if size == 1:
        return Launch(trainer_argv, env, 1, None)
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
    return Launch(argv, env, size, exit_dir)


def start(engine: Engine, config: Config, run: Run) -> Started:
    """Plan the run's child and start it, its output appended to the run's log; CannotLaunch
    when it cannot start (the reason names the fix)."""
    config.home.logs.mkdir(parents=True, exist_ok=True)
    log_path = config.home.logs / f"{run.run_id}.log"
    launch = plan(engine, config, run)
    log_file = log_path.open("ab")
    started: dict[str, object] = {"timestamp": utc_text(utcnow()), "level": "info"}
    started |= {"event": "trainer_started", "run_id": run.run_id, "attempt": run.attempts}
    started["argv"] = launch.argv
    log_file.write((json.dumps(started) + "\n").encode())  # the run log is JSON lines
    log_file.flush()
    try:
        proc = subprocess.Popen(
            launch.argv,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=launch.env,
            start_new_session=True,
            close_fds=True,
        )
    except OSError as exc:
        log_file.close()
        raise CannotLaunch(
            f"cannot start the trainer {launch.argv[0]!r}: {exc.strerror}; check "
            "[trainer] command in oneseekd.toml"
        ) from exc
    return Started(proc, log_path, log_file, launch)
