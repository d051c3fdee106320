"""The trainer child process: `python -m oneseekd.trainer --home H --db-url U --run-id R`.

Started by the supervisor, never by hand. Exit codes follow oneseekd.protocol. First SIGTERM:
finish the step, checkpoint, exit 75; a second one: exit at once. The process also stops when
its supervisor goes away (Linux parent-death signal, and a parent-pid check each step).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys
import traceback
from collections.abc import Mapping
from pathlib import Path
from types import FrameType

from oneseekd import protocol
from oneseekd.config import HomePaths
from oneseekd.errors import OneseekError
from oneseekd.logs import configure_logging

_stop = {"requested": 0}


def _on_term(_signum: int, _frame: FrameType | None) -> None:
    _stop["requested"] += 1
    if _stop["requested"] > 1:
        os._exit(protocol.EXIT_STOPPED)  # second signal: stop now, the last checkpoint stands


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m oneseekd.trainer")
    parser.add_argument("--home", required=True)
    parser.add_argument("--db-url", required=True)
    parser.add_argument("--run-id", required=True)
    args = parser.parse_args(argv)
    configure_logging(os.environ.get("ONESEEK_LOG_LEVEL", "info"))
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the daemon's to handle
    _die_with_parent()
    parent = int(os.environ.get(protocol.ENV_PARENT_PID, os.getppid()))

    def should_stop() -> bool:
        return _stop["requested"] > 0 or os.getppid() != parent

    # imported after the signal set-up: torch takes seconds to import
    import torch

    set_threads(os.environ)

    from oneseekd.db.engine import make_engine
    from oneseekd.trainer.recipe import Stopped
    from oneseekd.trainer.run import train_run

    engine = make_engine(args.db_url)
    try:
        train_run(
            engine, HomePaths(Path(args.home).resolve()), args.run_id, should_stop=should_stop
        )
    except Stopped:
        print("stopped on request after writing a checkpoint", file=sys.stderr)
        return protocol.EXIT_STOPPED
    except (torch.OutOfMemoryError, MemoryError):
        traceback.print_exc()
        return protocol.EXIT_OOM
    except OneseekError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return (
            protocol.EXIT_REFUSED
            if exc.exit_code == protocol.EXIT_REFUSED
            else (protocol.EXIT_ERROR)
        )
    finally:
        engine.dispose()
    return protocol.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
