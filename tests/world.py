"""World: a training home with the fake trainer and a Supervisor driven tick by tick in the
test's process (test_supervisor, test_hardening)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from daemon import wait_for
from homes import fake_behaviour, open_home, request, training_home
from pg import Outsider

from oneseekd.daemon.supervisor import Supervisor
from oneseekd.intake.accept import Intake


class World:
    def __init__(self, root: Path, db_url: str | None = None, **home_options: object) -> None:
        home = training_home(root, **home_options)  # type: ignore[arg-type]
        self.config, self.engine = open_home(home, db_url)
        self.intake = Intake(self.engine, self.config.home)
        self.supervisor = Supervisor(self.engine, self.config, None)
        self.db = Outsider(db_url, self.config.home.db_file)

    @property
    def home(self) -> Path:
        return self.config.home.root

    def submit(self, version: str, **spec: object) -> str:
        fake_behaviour(self.home, version, **spec)
        verdict = self.intake.take_bytes(
            json.dumps(request(version=version)).encode(), source="submit"
        )
        assert verdict.run_id is not None, verdict.problems
        return verdict.run_id

    def drive(self, until: Callable[[], bool], timeout: float = 10.0) -> None:
        def step() -> bool:
            self.supervisor.tick()
            return until()

        wait_for(step, timeout=timeout, interval=0.01)

    def restart(self) -> None:
        """A new daemon's supervisor, as after the last one stopped or died (its child, if
        any, forgotten, not killed), recovering the runs it finds."""
        self.supervisor = Supervisor(self.engine, self.config, None)
        self.supervisor.recover()

    def run(self, run_id: str) -> dict[str, object]:
        [row] = self.db.mappings("SELECT * FROM runs WHERE run_id = ?", run_id)
        return row

    def lost(self, run_id: str) -> str:
        """The error of a run that must have failed `lost` (interrupted too often)."""
        run = self.run(run_id)
        assert (run["state"], run["outcome"]) == ("failed", "lost")
        return str(run["error"])

    def started(self, run_id: str) -> bool:
        """The fake trainer is up and handles SIGTERM."""
        return (self.home / "fake" / f"started-{run_id}").exists()

    def finished(self, run_id: str) -> bool:
        return self.run(run_id)["state"] in ("succeeded", "failed", "cancelled")


def close(w: World) -> None:
    if w.supervisor.child is not None:
        w.supervisor.child.proc.kill()
    w.db.close()
    w.engine.dispose()
