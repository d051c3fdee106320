"""The daemon's process entry point (`oneseekd`, `python -m oneseekd`).

The daemon writes JSON lines and never a console traceback, yet structlog imports `rich`
whenever it is installed (transformers' tooling brings it): about 4 MB resident for nothing.
Marking it absent before anything imports structlog keeps it out of the daemon's process only;
`oneseekctl` and the trainer are untouched.
"""

from __future__ import annotations

import sys


def main() -> None:
    if "rich" not in sys.modules:
        sys.modules["rich"] = None  # type: ignore[assignment]  # import rich -> ImportError
    from oneseekd.daemon.command import main as run_daemon

    run_daemon()
