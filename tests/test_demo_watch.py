"""The demo's progress line (demo/watch.py) never shows a finished run as still starting."""

from __future__ import annotations

from types import ModuleType

from demos import load_demo


def _watch() -> ModuleType:
    return load_demo("watch")


def test_after_the_run_the_line_says_how_it_ended_not_the_daemons_stale_activity() -> None:
    watch = _watch()
    status = {
        "current_run": None,
        "queue": {"queued": 0},
        # the daemon's row is refreshed every few seconds: it still says what it did before
        "daemon": {"running": True, "activity": "training run-1: starting"},
        "recent_runs": [{"run_id": "run-1", "state": "succeeded"}],
    }
    line = watch.line_of(status, seen_run=True)
    assert line == "run-1: succeeded; oneseekd: nothing left, exiting"
    assert watch.line_of(status, seen_run=False) == "oneseekd: training run-1: starting"
