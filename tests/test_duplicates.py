"""One duplicate rule for every door (docs/interface.md, "Duplicates").

The same request_id is always the same request, whatever became of its run. Without one, the
same request on the same dataset bytes is a duplicate only while the first run is queued or
running, or once it has succeeded: after a failure or a cancel it runs again. A dropped file,
`oneseekctl submit` and a row get the same verdict, and a refusal says what became of the
first run and what to do to train again.
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from homes import ctl, drop, open_home, request, take, take_row, training_home
from sqlalchemy import Engine

from oneseekd.config import Config
from oneseekd.intake.accept import Intake
from oneseekd.intake.dropfolder import DropFolder
from oneseekd.intake.incoming import Incoming, Verdict
from oneseekd.logs import configure_logging


@pytest.fixture
def drops(tmp_path: Path) -> Iterator[tuple[Config, Engine, DropFolder]]:
    config, engine = open_home(training_home(tmp_path / "home"))
    yield config, engine, DropFolder(Intake(engine, config.home), config.home, settle=0)
    engine.dispose()


def dropped(config: Config, folder: DropFolder, name: str, body: object) -> dict[str, object]:
    """Drop `body` as NAME.json and take it in: the row the daemon wrote for it."""
    drop(config.home.root, name, json.dumps(body))
    assert folder.poll() == 1
    con = sqlite3.connect(config.home.db_file)
    con.row_factory = sqlite3.Row
    row = con.execute(
        "SELECT t.id, t.status, t.problems, r.run_id FROM training_requests t "
        "LEFT JOIN runs r ON r.id = t.run_id ORDER BY t.id DESC LIMIT 1"
    ).fetchone()
    con.close()
    return {**dict(row), "problems": json.loads(row["problems"] or "[]")}


def end(config: Config, run_id: object, state: str, error: str | None = None) -> None:
    """The run ended as `state` (what the daemon writes when its trainer exits)."""
    con = sqlite3.connect(config.home.db_file)
    with con:
        con.execute(
            "UPDATE runs SET state = ?, outcome = ?, error = ?, "
            "finished_at = '2026-12-07T09:30:00.000000Z' WHERE run_id = ?",
            (state, state, error, run_id),
        )
    con.close()


def error_file(config: Config, name: str) -> dict[str, object]:
    data = json.loads((config.home.requests / "rejected" / name).read_text())
    assert isinstance(data, dict)
    return data


def test_a_failed_run_s_request_dropped_again_runs_again(drops: tuple) -> None:
    config, _, folder = drops
    first = dropped(config, folder, "nightly.json", request())
    assert first["status"] == "queued"
    end(config, first["run_id"], "failed", "20 of 20 records: the response would be cut\nmore")
    again = dropped(config, folder, "nightly.json", request())
    assert again["status"] == "queued", again["problems"]
    assert again["run_id"] != first["run_id"]
    assert sorted(p.name for p in (config.home.requests / "accepted").iterdir()) == [
        "nightly.2.json",
        "nightly.json",
    ]


def test_a_cancelled_run_s_request_runs_again(drops: tuple) -> None:
    config, _, folder = drops
    first = dropped(config, folder, "nightly.json", request())
    end(config, first["run_id"], "cancelled")
    assert dropped(config, folder, "nightly.json", request())["status"] == "queued"


def test_a_succeeded_one_is_refused_naming_its_run_what_it_made_and_when(drops: tuple) -> None:
    config, _, folder = drops
    first = dropped(config, folder, "nightly.json", request())
    end(config, first["run_id"], "succeeded")
    # the run's link names its certified folder: the DNA it made
    dna = "OneSeek-7B-Zero.v1.0.abc123"
    config.home.certified.mkdir(parents=True, exist_ok=True)
    os.symlink(dna, config.home.certified / str(first["run_id"]))
    again = dropped(config, folder, "nightly.json", request())
    fix = "change the dataset or add a `request_id` to train again"
    assert (again["status"], again["problems"]) == (
        "duplicate",
        [
            f"duplicate of request #{first['id']}: run {first['run_id']} succeeded as {dna} "
            f"on 2026-12-07 09:30:00; {fix}"
        ],
    )
    error = error_file(config, "nightly.error.json")
    assert (error["status"], error["duplicate_of_run"], error["fix"]) == (
        "duplicate",
        first["run_id"],
        fix,
    )
    assert "nothing to do" not in json.dumps(error)


def test_a_queued_one_is_refused_saying_it_is_queued(drops: tuple) -> None:
    config, _, folder = drops
    first = dropped(config, folder, "a.json", request())
    again = dropped(config, folder, "b.json", request())
    assert again["status"] == "duplicate"
    assert again["problems"] == [
        f"duplicate of request #{first['id']}: run {first['run_id']} is queued; it trains "
        "once: follow it with `oneseekctl status`, or add a `request_id` to queue a second run"
    ]


def test_a_changed_dataset_is_not_a_duplicate(drops: tuple) -> None:
    config, _, folder = drops
    first = dropped(config, folder, "nightly.json", request())
    end(config, first["run_id"], "succeeded")
    with (config.home.datasets / "civic.jsonl").open("a") as fh:
        fh.write('{"text": "Ny lag om datasets."}\n')
    assert dropped(config, folder, "nightly.json", request())["status"] == "queued"
    # and the same request on those same new bytes again is the duplicate of that run
    assert dropped(config, folder, "nightly.json", request())["status"] == "duplicate"


def test_submit_and_the_drop_folder_agree(drops: tuple, tmp_path: Path) -> None:
    """The same request is one request at every door, however its JSON is written."""
    config, engine, folder = drops
    first = dropped(config, folder, "a.json", request(epochs=2))
    # the same fields in another order and spelling, as submit's flags build them
    result = ctl(
        config.home.root,
        "submit",
        "--dataset",
        "civic.jsonl",
        "--epochs",
        "2",
        "--base-models",
        "KB-Llama-3.1-8B-Swedish",
        "--json",
    )
    assert result.exit_code == 0, result.output
    submitted = json.loads(result.stdout)
    assert (submitted["status"], submitted["duplicate_of"]) == ("duplicate", first["run_id"])
    # two identical submits: the second is refused, as a second dropped file is
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(request(epochs=3)))
    once = json.loads(ctl(config.home.root, "submit", str(path), "--json").stdout)
    twice = json.loads(ctl(config.home.root, "submit", str(path), "--json").stdout)
    assert (once["status"], twice["status"]) == ("queued", "duplicate")
    assert twice["duplicate_of"] == once["run_id"]
    # and a row another program INSERTs with it too
    row = take_row(Intake(engine, config.home), insert(config, json.dumps(request(epochs=3))))
    assert row is not None and (row.status, row.duplicate_of) == ("duplicate", once["run_id"])
    # once that run failed, each door queues it again, the same way
    end(config, once["run_id"], "failed", "boom")
    assert dropped(config, folder, "mine.json", request(epochs=3))["status"] == "queued"


def insert(config: Config, payload: str) -> int:
    con = sqlite3.connect(config.home.db_file)
    with con:
        row_id = con.execute(
            "INSERT INTO training_requests (payload) VALUES (?)", (payload,)
        ).lastrowid
    con.close()
    assert row_id is not None
    return row_id


def test_two_identical_requests_in_one_batch_queue_once(setup: tuple) -> None:
    _, _, intake = setup
    raw = json.dumps(request()).encode()
    verdicts = intake.take_batch(
        [Incoming.of_bytes(raw, "file", "a.json"), Incoming.of_bytes(raw, "submit")]
    )
    assert [v.status for v in verdicts if v is not None] == ["queued", "duplicate"]


@pytest.mark.parametrize("state", ["queued", "running", "succeeded", "failed", "cancelled"])
def test_the_same_request_id_is_refused_at_every_door_whatever_its_run_became(
    drops: tuple, state: str
) -> None:
    config, engine, folder = drops
    first = dropped(config, folder, "a.json", request(request_id="civic-7"))
    if state != "queued":
        end(config, first["run_id"], state, "the trainer ran out of memory\nTraceback ...")
    verdicts: list[Verdict | None] = [
        take(Intake(engine, config.home), request(request_id="civic-7", epochs=5)),
        take_row(
            Intake(engine, config.home), insert(config, json.dumps(request(request_id="civic-7")))
        ),
    ]
    again = dropped(config, folder, "b.json", request(request_id="civic-7"))
    assert again["status"] == "duplicate"
    assert all(v is not None and v.status == "duplicate" for v in verdicts)
    assert {v.duplicate_of for v in verdicts if v is not None} == {first["run_id"]}
    happened = {
        "queued": "is queued",
        "running": "is running",
        "succeeded": "succeeded as version 1.0 on 2026-12-07 09:30:00",
        "failed": "failed: the trainer ran out of memory",
        "cancelled": "was cancelled",
    }[state]
    assert again["problems"] == [
        f"duplicate of request #{first['id']}: run {first['run_id']} {happened}; the same "
        "request_id ('civic-7') is always this request: give a new `request_id` to train it again"
    ]
    con = sqlite3.connect(config.home.db_file)
    assert con.execute("SELECT COUNT(*) FROM runs").fetchone() == (1,)


def test_refused_files_and_rows_are_logged_as_warnings(drops: tuple) -> None:
    """A refused file or row is news no one saw coming: it is in the journal at any level.
    submit's refusal is told on the terminal at once, so its CLI does not repeat it."""
    config, engine, folder = drops
    saved = structlog.get_config()
    stream = io.StringIO()
    configure_logging("info", stream)  # the daemon's own output, as the journal gets it
    try:
        dropped(config, folder, "a.json", request())
        dropped(config, folder, "b.json", request())
        dropped(config, folder, "typo.json", request(epoch=2))
        take_row(Intake(engine, config.home), insert(config, "{"))
        take(Intake(engine, config.home), request(epochs=0))
    finally:
        structlog.configure(**saved)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    verdicts = [
        (e["event"], e["level"], e["source"]) for e in lines if e["event"].startswith("request_")
    ]
    assert verdicts == [
        ("request_accepted", "info", "file"),
        ("request_duplicate", "warning", "file"),
        ("request_rejected", "warning", "file"),
        ("request_rejected", "warning", "database"),
        ("request_rejected", "info", "submit"),
    ]
