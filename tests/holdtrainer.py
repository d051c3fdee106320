"""The real trainer, held at its first step's progress: `[trainer] command = [python,
tests/holdtrainer.py, HOLD_DIR]`. Once the first report of a training step is written to the
run's row, it creates HOLD_DIR/held and waits for HOLD_DIR/release, so a test reads the running
run at a point it chose instead of polling while the run races on."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any


def hold_at_the_first_step(folder: Path) -> None:
    from oneseekd.trainer import context

    report = context.Progress.report
    held = False

    def holding(self: context.Progress, data: dict[str, Any], *, force: bool = False) -> None:
        nonlocal held
        stepping = data.get("step") is not None and not data.get("phase")
        report(self, data, force=force or (stepping and not held))
        if stepping and not held:
            held = True
            (folder / "held").touch()
            while not (folder / "release").exists():
                time.sleep(0.02)

    context.Progress.report = holding  # type: ignore[method-assign]


def main(argv: list[str]) -> int:
    hold_at_the_first_step(Path(argv[0]))
    from oneseekd.trainer.__main__ import main as trainer_main

    return trainer_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
