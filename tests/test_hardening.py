"""Issue 17: one bad file never stops the daemon, a planned stop never loses a run, and the
ledger proves its own completeness. Each test reproduces one finding of the issue."""

from __future__ import annotations

from pathlib import Path

from homes import fake_behaviour
from test_supervisor import World, close

from oneseekd.supervisor import Supervisor


# --- item 5: attempts count failures, not stops ----------------------------------------------
def test_planned_stops_are_not_failed_attempts(tmp_path: Path) -> None:
    w = World(tmp_path / "home")
    try:
        run_id = w.submit("1.0", sleep=60)
        for _ in range(4):  # one more stop than trainer.max_attempts = 3
            w.drive(lambda: w.started(run_id))
            w.supervisor.shutdown()  # systemctl stop: the trainer checkpoints and exits 75
            assert w.run(run_id)["state"] == "running"
            (w.home / "fake" / f"started-{run_id}").unlink()
            w.supervisor = Supervisor(w.engine, w.config, None)
            w.supervisor.recover()
        fake_behaviour(w.home, "1.0", sleep=0.05)
        w.supervisor.shutdown()
        w.supervisor = Supervisor(w.engine, w.config, None)
        w.supervisor.recover()
        w.drive(lambda: w.finished(run_id))
        run = w.run(run_id)
        assert (run["state"], run["attempts"]) == ("succeeded", 6), run["error"]
    finally:
        close(w)


def test_a_run_that_crashed_too_often_says_which_attempts_failed_how(tmp_path: Path) -> None:
    w = World(tmp_path / "home")
    try:
        run_id = w.submit("1.0", sleep=60)
        w.drive(lambda: w.started(run_id))
        w.supervisor.shutdown()  # attempt 1: a planned stop, not counted
        for _ in range(3):  # attempts 2-4: the daemon dies; its trainer is left behind
            (w.home / "fake" / f"started-{run_id}").unlink(missing_ok=True)
            w.supervisor = Supervisor(w.engine, w.config, None)
            w.supervisor.recover()
            w.drive(lambda: w.started(run_id))
            assert w.supervisor.child is not None
            w.supervisor.child.proc.kill()
            w.supervisor.child.proc.wait()
            w.supervisor.child = None  # as if the daemon died with it
        w.supervisor = Supervisor(w.engine, w.config, None)
        w.supervisor.recover()
        run = w.run(run_id)
        assert (run["state"], run["outcome"]) == ("failed", "lost")
        assert str(run["error"]).startswith(
            "the trainer failed 3 times (trainer.max_attempts = 3): attempts 2, 3 and 4 ended "
            "without a checkpointed stop (the trainer or its daemon was killed or crashed); "
            "1 stop the daemon asked for is not counted; see "
        )
    finally:
        close(w)
