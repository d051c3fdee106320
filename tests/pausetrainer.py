"""A `[trainer] command` that runs the real trainer and pauses it at a deterministic point, so
a test reaches "past a checkpoint, nothing published yet" without racing the run.

    python tests/pausetrainer.py --pause-dir DIR --pause-at-step N [--pause-attempt A] ARGS...

In attempt A (default 1), right after the checkpoint of the first optimizer step >= N is
written (with --pause-armed: only while DIR/armed exists, see `arm`), the trainer writes
DIR/paused-<run id> and waits: until DIR/release-<run id> exists
(`release()`), or until it is asked to stop (SIGTERM: it then goes on to its stop checkpoint
and exits 75, as it would have at that step), or until its supervisor is gone. Under torchrun
only rank 0 writes checkpoints; the other ranks wait for it at the barrier that follows.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()


def pause_command(folder: Path, step: int, attempt: int = 1, *, armed: bool = False) -> list[str]:
    return [
        sys.executable,
        str(HERE),
        "--pause-dir",
        str(folder),
        "--pause-at-step",
        str(step),
        "--pause-attempt",
        str(attempt),
        *(["--pause-armed"] if armed else []),
    ]


def arm(folder: Path) -> None:
    """The next run to reach the step pauses (with --pause-armed); later ones do not."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "armed").write_text("pause the next run")


def paused(folder: Path, run_id: str) -> bool:
    return (folder / f"paused-{run_id}").exists()


def release(folder: Path, run_id: str) -> None:
    (folder / "armed").unlink(missing_ok=True)
    (folder / f"release-{run_id}").write_text("go")


def _install(folder: Path, step: int, armed: bool) -> None:
    import oneseekd.trainer.__main__ as trainer_main
    from oneseekd.trainer.checkpoint import Checkpoints

    save = Checkpoints.save
    run_id = os.environ.get("ONESEEK_RUN_ID", "run")
    parent = os.getppid()
    done = [False]

    def save_then_pause(self: Checkpoints, *args: Any, **kwargs: Any) -> Path:
        path = save(self, *args, **kwargs)
        position = args[4] if len(args) > 4 else kwargs["position"]
        if done[0] or position.step < step or (armed and not (folder / "armed").exists()):
            return path
        done[0] = True
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"paused-{run_id}").write_text(str(position.step))
        while not (
            (folder / f"release-{run_id}").exists()
            or trainer_main._stop["requested"] > 0
            or os.getppid() != parent
        ):
            time.sleep(0.01)
        return path

    Checkpoints.save = save_then_pause  # type: ignore[method-assign]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="pausetrainer")
    parser.add_argument("--pause-dir", type=Path, required=True)
    parser.add_argument("--pause-at-step", type=int, required=True)
    parser.add_argument("--pause-attempt", type=int, default=1)
    parser.add_argument("--pause-armed", action="store_true")
    ours, rest = parser.parse_known_args(argv)
    if os.environ.get("ONESEEK_ATTEMPT") == str(ours.pause_attempt):
        _install(ours.pause_dir, ours.pause_at_step, ours.pause_armed)
    from oneseekd.trainer.__main__ import main as trainer_main

    return trainer_main(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
