"""The trainer child process: `python -m oneseekd.trainer --home H --db-url U --run-id R`.

Started by the supervisor, never by hand. Exit codes follow oneseekd.protocol. First SIGTERM:
finish the step, checkpoint, exit 75; a second one: exit at once. The process also stops when
its supervisor goes away (Linux parent-death signal, and a parent-pid check each step).

Under torchrun (a model asking for several GPUs) this runs once per rank; its parent is then
torchrun's agent, and each rank writes the status it exits with to ONESEEK_EXIT_DIR/rank-<n>,
since torchrun reports any failure as its own status 1.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import structlog

from oneseekd import protocol
from oneseekd.errors import OneseekError
from oneseekd.home import HomePaths
from oneseekd.logs import (
    capture_library_output,
    configure_logging,
    library_loggers_propagate,
    one_line_reason,
)
from oneseekd.trainer import heap

if TYPE_CHECKING:
    from sqlalchemy import Engine

log = structlog.get_logger("oneseekd.trainer")

_stop = {"requested": 0}


def _on_term(_signum: int, _frame: FrameType | None) -> None:
    _stop["requested"] += 1
    if _stop["requested"] > 1:
        os._exit(protocol.EXIT_STOPPED)  # second signal: stop now, the last checkpoint stands


def _die_with_parent(sig: int = signal.SIGTERM) -> None:
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, sig)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _parent_of(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return -1


def _write_status(name: str, value: int) -> None:
    folder = os.environ.get(protocol.ENV_EXIT_DIR)
    if folder and "RANK" in os.environ:
        path = Path(folder) / f"{name}-{os.environ['RANK']}"
        path.with_suffix(".tmp").write_text(str(value))
        os.replace(path.with_suffix(".tmp"), path)


def set_threads(env: Mapping[str, str]) -> int | None:
    """torch's CPU threads from OMP_NUM_THREADS, which the supervisor sets from [trainer]
    threads; returns the number set, or None (unset or not a positive whole number: torch's
    default stands)."""
    raw = env.get("OMP_NUM_THREADS", "").strip()
    if not raw.isdigit() or int(raw) < 1:
        return None
    import torch

    torch.set_num_threads(int(raw))
    return int(raw)


def run_backend(config: object) -> str | None:
    """The ddp_backend a run's processes join over (spec.host makes every model that names
    one name the same); None: the default for the device, or a config the run's own
    loading will refuse with its reasons."""
    from oneseekd.spec import request as runspec

    try:
        spec = runspec.load(config if isinstance(config, dict) else {})
    except runspec.SpecError:
        return None
    return next((o.ddp_backend for o in spec.models.values() if o.ddp_backend), None)


def uses_bitsandbytes(config: object) -> bool:
    """Whether the run quantizes or steps with an 8-bit optimizer; a config the run's own
    loading will refuse counts as yes (bitsandbytes is imported as it always was)."""
    from oneseekd.spec import request as runspec

    try:
        return runspec.load(config if isinstance(config, dict) else {}).uses_bitsandbytes
    except runspec.SpecError:
        return True


def _stored_config(engine: Engine, run_id: str) -> object:
    from sqlalchemy import select

    from oneseekd.db.engine import read_session
    from oneseekd.db.models import Run

    with read_session(engine) as session:
        return session.scalars(select(Run.config).where(Run.run_id == run_id)).first()


def main(argv: list[str] | None = None) -> int:
    # a rank's pid, for the supervisor to kill it even once its agent is gone
    _write_status("pid", os.getpid())
    heap.fix_mmap_threshold()  # before any tensor: freed activations go back to the system
    code = protocol.EXIT_ERROR  # what an exception that escapes means
    try:
        code = _main(argv)
    finally:
        _write_status("rank", code)
    return code


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="python -m oneseekd.trainer")
    parser.add_argument("--home", required=True)
    parser.add_argument("--db-url", required=True)
    parser.add_argument("--run-id", required=True)
    args = parser.parse_args(argv)
    level = os.environ.get("ONESEEK_LOG_LEVEL", "info")
    configure_logging(level, human=False)  # the run log is JSON lines, whatever its stream
    capture_library_output(level)  # the run log is JSON lines, libraries' output included
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the daemon's to handle
    launched = "TORCHELASTIC_RUN_ID" in os.environ  # a rank: torchrun's agent is the parent
    supervisor = int(os.environ.get(protocol.ENV_PARENT_PID, os.getppid()))
    parent = os.getppid() if launched else supervisor
    # a rank whose agent is gone is out of the supervisor's sight, and the next launch may
    # already be training: it ends at once, not after a checkpoint
    _die_with_parent(signal.SIGKILL if launched else signal.SIGTERM)
    if launched and _parent_of(parent) != supervisor:  # the agent died before the line above
        return protocol.EXIT_ERROR

    def should_stop() -> bool:
        # a rank also stops when the daemon is gone: torchrun's agent would not notice
        return (
            _stop["requested"] > 0
            or os.getppid() != parent
            or (launched and not Path(f"/proc/{supervisor}").exists())
        )

    from oneseekd.db.engine import make_engine

    engine = make_engine(args.db_url, lease_seconds=_lease_seconds())
    try:
        config = _stored_config(engine, args.run_id)
        # imported after the signal set-up: torch takes seconds to import
        import torch

        from oneseekd.trainer.hubless import hide_bitsandbytes, import_bitsandbytes

        if uses_bitsandbytes(config):
            import_bitsandbytes()  # before peft imports it: no kernel lookup on the Hub
        else:
            hide_bitsandbytes()  # peft imports none: a second less at each start
        library_loggers_propagate()
        set_threads(os.environ)

        from oneseekd.trainer.recipe import Stopped
        from oneseekd.trainer.run import train_run
        from oneseekd.trainer.world import Relaunch, join, leave

        world = join(backend=run_backend(config))
    except BaseException:
        engine.dispose()
        raise
    try:
        train_run(
            engine,
            HomePaths(Path(args.home).resolve()),
            args.run_id,
            should_stop=should_stop,
            world=world,
        )
    except Relaunch as exc:
        log.info("trainer_relaunch", text=f"to be started again: {exc}")
        return protocol.EXIT_RELAUNCH
    except Stopped:
        log.info("trainer_stopped", text="stopped on request after writing a checkpoint")
        return protocol.EXIT_STOPPED
    except (torch.OutOfMemoryError, MemoryError) as exc:
        error = f"{type(exc).__name__}: {exc}"
        log.error(
            "trainer_out_of_memory",
            error=error,
            reason=" ".join(error.splitlines()[0].split()),
            exc_info=True,
        )
        return protocol.EXIT_OOM
    except OneseekError as exc:
        # `reason` is the run's cause in one line: the supervisor makes it the first line of
        # the run's error (daemon/outcome.py), which status, show and train print
        log.error(
            "trainer_refused",
            error=f"Error: {exc}",
            reason=one_line_reason(exc.message, exc.problems),
        )
        return (
            protocol.EXIT_REFUSED
            if exc.exit_code == protocol.EXIT_REFUSED
            else (protocol.EXIT_ERROR)
        )
    finally:
        engine.dispose()
        leave(world)
    return protocol.EXIT_OK


def _lease_seconds() -> float:
    """The lease the daemon gave this trainer (protocol.ENV_LEASE_SECONDS); the default when
    it was started by hand or the value is unreadable."""
    from oneseekd.config import DEFAULT_LEASE_SECONDS

    try:
        value = float(os.environ.get(protocol.ENV_LEASE_SECONDS, ""))
    except ValueError:
        return DEFAULT_LEASE_SECONDS
    return value if value > 0 else DEFAULT_LEASE_SECONDS


if __name__ == "__main__":
    sys.exit(main())
