"""Issue 30, item 4: `oneseekctl logs RUN [-f]` prints a run's JSON log as lines a person
reads, and follows it until the run has ended."""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from pathlib import Path

from homes import ctl

from oneseekd.cli.logs import human_line


def queued_run(home: Path) -> str:
    result = ctl(home, "submit", "--base-models", "qwen", "--dataset", "civic.jsonl", "--json")
    assert result.exit_code == 0, result.output
    return str(json.loads(result.stdout)["run_id"])


def line(event: str, **fields: object) -> str:
    return json.dumps(
        {"timestamp": "2026-11-24T19:00:00.123456Z", "level": "info", "event": event, **fields}
    )


def set_state(home: Path, run_id: str, state: str, log: Path | None = None) -> None:
    con = sqlite3.connect(home / "oneseek.db")
    with con:
        con.execute("UPDATE runs SET state = ? WHERE run_id = ?", (state, run_id))
        if log is not None:
            con.execute("UPDATE runs SET log_path = ? WHERE run_id = ?", (str(log), run_id))
    con.close()


def test_a_log_line_reads_as_time_level_event_and_fields() -> None:
    assert human_line(
        line("epoch_finished", run_id="run-x", model="m", epoch=1, val_loss=5.25)
    ) == ("2026-11-24 19:00:00 info    epoch_finished  model=m epoch=1 val_loss=5.25")
    assert human_line(line("progress", step=5, steps=12, loss=4.3612, tokens_per_s=812.4)) == (
        "2026-11-24 19:00:00 info    progress  step 5/12 loss 4.36 812 tok/s"
    )
    assert human_line(line("trainer_started", attempt=2, argv=["python", "-m", "x"])) == (
        "2026-11-24 19:00:00 info    trainer_started  attempt=2"
    )
    assert human_line("not json \x1b[2J") == "not json \\x1b[2J"


def test_logs_prints_human_lines_and_json_as_it_is(fake_home: Path) -> None:
    run_id = queued_run(fake_home)
    none = ctl(fake_home, "logs", run_id)
    assert none.exit_code == 0
    assert none.stderr == f"Run {run_id} has no log yet (it is queued).\n"
    log = fake_home / "logs" / f"{run_id}.log"
    log.parent.mkdir(exist_ok=True)
    raw = line("trainer_started", run_id=run_id, attempt=1) + "\n" + line("progress", step=1) + "\n"
    log.write_text(raw)
    set_state(fake_home, run_id, "running", log)
    text = ctl(fake_home, "logs", "latest")
    assert text.exit_code == 0, text.output
    assert text.stdout == (
        "2026-11-24 19:00:00 info    trainer_started  attempt=1\n"
        "2026-11-24 19:00:00 info    progress  step 1\n"
    )
    assert "{" not in text.stdout
    assert ctl(fake_home, "logs", run_id, "--json").stdout == raw


def test_logs_follow_prints_new_lines_until_the_run_has_ended(fake_home: Path) -> None:
    run_id = queued_run(fake_home)
    log = fake_home / "logs" / f"{run_id}.log"
    log.parent.mkdir(exist_ok=True)
    log.write_text(line("trainer_started", attempt=1) + "\n")
    set_state(fake_home, run_id, "running", log)

    def the_run() -> None:
        time.sleep(0.3)
        with log.open("a") as fh:
            fh.write(line("progress", step=1, steps=2, loss=3.0) + "\n")
            fh.write(line("training_completed", dna="OneSeek-7B-Zero.v1.0.abcdef"))
            fh.flush()
            time.sleep(0.3)  # the line's end comes later: never printed in halves
            fh.write("\n")
        set_state(fake_home, run_id, "succeeded")

    writer = threading.Thread(target=the_run)
    writer.start()
    try:
        followed = ctl(fake_home, "logs", "-f", run_id)
    finally:
        writer.join()
    assert followed.exit_code == 0, followed.output
    lines = followed.stdout.splitlines()
    assert [re.sub(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ", "", x) for x in lines] == [
        "info    trainer_started  attempt=1",
        "info    progress  step 1/2 loss 3",
        "info    training_completed  dna=OneSeek-7B-Zero.v1.0.abcdef",
        f"-- run {run_id} succeeded --",
    ]
    # the daemon is not running here: said once, on stderr
    assert followed.stderr.count("no oneseekd serves") == 1


def test_logs_is_a_light_read(tmp_path: Path) -> None:
    """Like `show`: no SQLAlchemy, structlog or torch on a SQLite home."""
    from homes import home_with_a_queued_run
    from test_cli_read import imported_by

    home, run_id = home_with_a_queued_run(tmp_path / "home")
    log = home / "logs" / f"{run_id}.log"
    log.parent.mkdir(exist_ok=True)
    log.write_text(line("trainer_started", attempt=1) + "\n")
    set_state(home, run_id, "running", log)
    heavy, output = imported_by(home, "logs", run_id)
    assert output == "2026-11-24 19:00:00 info    trainer_started  attempt=1\n"
    assert heavy == []
