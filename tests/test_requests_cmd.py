"""oneseekctl requests: what came in by every door and its verdict; and `status`'s line for
the newest refusal (oneseekd/cli/requests.py last_refusal and refusal_line)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from homes import ctl, drop, open_home, request, take, training_home

from oneseekd.cli.context import Context
from oneseekd.cli.read import open_reader
from oneseekd.cli.requests import last_refusal, refusal_line
from oneseekd.intake.accept import Intake
from oneseekd.intake.dropfolder import DropFolder
from oneseekd.times import read_time


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    """A home where a file was queued, a typo refused, the first file repeated, and a
    request submitted on a dataset that is not there."""
    root = training_home(tmp_path / "home")
    config, engine = open_home(root)
    intake = Intake(engine, config.home)
    folder = DropFolder(intake, config.home, settle=0)
    drop(root, "nightly.json", json.dumps(request()))
    folder.poll()
    drop(root, "typo.json", json.dumps(request(epoch=2)))
    folder.poll()
    drop(root, "nightly.json", json.dumps(request()))
    folder.poll()
    take(intake, request(dataset="civc.jsonl"))
    engine.dispose()
    yield root


def listed(home: Path, *args: str) -> list[dict[str, object]]:
    result = ctl(home, "requests", "--json", *args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert isinstance(data, list)
    return data


def test_requests_lists_every_door_s_verdicts_newest_first(home: Path) -> None:
    data = listed(home)
    run_id = data[3]["run_id"]
    assert isinstance(run_id, str) and run_id.startswith("run-")
    assert [
        (d["request"], d["door"], d["name"], d["status"], d["run_id"], d["duplicate_of_run"])
        for d in data
    ] == [
        (4, "submit", None, "rejected", None, None),
        (3, "file", "nightly.json", "duplicate", None, run_id),
        (2, "file", "typo.json", "rejected", None, None),
        (1, "file", "nightly.json", "queued", run_id, None),
    ]
    assert data[2]["problem"] == "unknown field 'epoch' (did you mean 'epochs'?)"
    assert data[2]["problems"][0] == data[2]["problem"]  # type: ignore[index]
    assert str(data[1]["problem"]).startswith(f"duplicate of request #1: run {run_id} is queued")
    assert all(read_time(str(d["decided_at"])) for d in data)
    # the refused ones alone, and a limit
    assert [d["request"] for d in listed(home, "--status", "rejected")] == [4, 2]
    assert [d["request"] for d in listed(home, "--limit", "1")] == [4]


def test_requests_prints_a_table_a_person_reads(home: Path) -> None:
    result = ctl(home, "requests")
    assert result.exit_code == 0, result.output
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["#", "WHEN", "AGE", "DOOR", "NAME", "VERDICT", "RUN", "PROBLEM"]
    cells = [re.split(r"\s{2,}", row) for row in rows]  # columns: two spaces or more
    for _, when, age, *_ in cells:
        assert read_time(when.replace(" ", "T") + "Z")  # the one human time format
        assert re.fullmatch(r"\d+s ago|\d+ min ago", age), age
    run_id = cells[3][6]
    assert [[c[0], *c[3:]] for c in cells[:3]] == [
        ["4", "submit", "submit #4", "rejected", "-", cells[0][7]],
        ["3", "file", "nightly.json", "duplicate", "-", cells[1][7]],
        [
            "2",
            "file",
            "typo.json",
            "rejected",
            "-",
            "unknown field 'epoch' (did you mean 'epochs'?)",
        ],
    ]
    assert cells[3] == [*cells[3][:3], "file", "nightly.json", "queued", run_id, "-"]
    assert run_id.startswith("run-")
    assert cells[0][7].startswith("dataset 'civc.jsonl' does not exist in ")
    assert cells[0][7].endswith("…")  # a long problem is cut; --json has it whole


def test_an_empty_home_says_how_to_send_a_request(tmp_path: Path) -> None:
    root = training_home(tmp_path / "home")
    _, engine = open_home(root)
    engine.dispose()
    result = ctl(root, "requests")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("No requests yet. Drop a request file into ")


def test_status_line_names_the_newest_refusal_of_the_last_day(home: Path) -> None:
    obj = Context(home=str(home), db_url=None)
    reader = open_reader(obj)[0]
    try:
        found = last_refusal(reader)
        assert found is not None
        decided = read_time(str(found["decided_at"]))
        assert refusal_line(found, decided + timedelta(minutes=2)).startswith(
            "rejected: submit #4 2 min ago — dataset 'civc.jsonl' does not exist in "
        )
        assert last_refusal(reader, decided + timedelta(hours=25)) is None
    finally:
        reader.close()
    typo = listed(home, "--status", "rejected")[1]
    later = read_time(str(typo["decided_at"])) + timedelta(minutes=2)
    assert (
        refusal_line(typo, later)
        == "rejected: typo.json 2 min ago — unknown field 'epoch' (did you mean 'epochs'?)"
    )


def test_no_refusal_no_line(tmp_path: Path) -> None:
    root = training_home(tmp_path / "home")
    config, engine = open_home(root)
    take(Intake(engine, config.home), request())
    engine.dispose()
    reader = open_reader(Context(home=str(root), db_url=None))[0]
    try:
        assert last_refusal(reader) is None
    finally:
        reader.close()


def test_requests_is_a_light_read(home: Path) -> None:
    """Like `runs`, it answers without SQLAlchemy, pydantic or structlog on a SQLite home."""
    heavy = ("sqlalchemy", "sqlalchemy.orm", "pydantic", "structlog", "torch", "alembic")
    script = textwrap.dedent(
        f"""
        import io, json, sys, contextlib
        from oneseekd.cli import main
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            try:
                main(["--home", {str(home)!r}, "requests"])
            except SystemExit as exc:
                assert not exc.code, exc.code
        print(json.dumps([[m for m in {heavy!r} if m in sys.modules], out.getvalue()]))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    imported, output = json.loads(done.stdout.splitlines()[-1])
    assert "typo.json" in output
    assert imported == []
