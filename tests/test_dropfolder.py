"""The drop folder: every file ends in accepted/ or rejected/, taken exactly once."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from homes import open_home, request, training_home
from sqlalchemy import Engine

from oneseekd.config import Config
from oneseekd.intake.accept import Intake
from oneseekd.intake.dropfolder import DropFolder


@pytest.fixture
def drops(tmp_path: Path) -> Iterator[tuple[Config, Engine, DropFolder]]:
    config, engine = open_home(training_home(tmp_path / "home"))
    yield config, engine, DropFolder(Intake(engine, config.home), config.home, settle=0)
    engine.dispose()


def drop(folder: Path, name: str, content: bytes | str) -> None:
    raw = content.encode() if isinstance(content, str) else content
    tmp = folder / f"{name}.tmp"
    tmp.write_bytes(raw)
    os.rename(tmp, folder / name)


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_two_hundred_files_a_quarter_bad_all_end_with_the_right_verdict(drops: tuple) -> None:
    config, _, folder = drops
    requests = config.home.requests
    bad_kinds = [
        b"\xff\xfe not utf-8",
        b"{ not json",
        b"[1, 2, 3]",
        json.dumps(request(epochs=-1)).encode(),
        json.dumps(request(base_models=["no-such-model"])).encode(),
        json.dumps(request(dataset="../escape.jsonl")).encode(),
        json.dumps(request(surprise=True)).encode(),
        b" " * (1024 * 1024 + 10),
    ]
    expected: dict[str, str] = {}
    for i in range(200):
        name = f"req-{i:03d}.json"
        if i % 4 == 0:
            drop(requests, name, bad_kinds[(i // 4) % len(bad_kinds)])
            expected[name] = "rejected"
        else:
            drop(requests, name, json.dumps(request(seed=i)))
            expected[name] = "accepted"
    (requests / "half-written.json.tmp").write_text("{")
    (requests / ".hidden.json").write_text("{")
    taken = [folder.poll() for _ in range(5)]
    assert taken == [64, 64, 64, 8, 0]  # in batches of 64, one transaction each
    accepted = set(listing(requests / "accepted"))
    rejected = set(listing(requests / "rejected"))
    assert accepted == {n for n, v in expected.items() if v == "accepted"}
    assert {n for n in rejected if not n.endswith(".error.json")} == {
        n for n, v in expected.items() if v == "rejected"
    }
    assert {n.replace(".error.json", ".json") for n in rejected if n.endswith(".error.json")} == {
        n for n, v in expected.items() if v == "rejected"
    }
    # the .tmp and the dot-file were never touched
    assert listing(requests) == [
        ".claimed",
        ".hidden.json",
        "accepted",
        "half-written.json.tmp",
        "rejected",
    ]
    assert listing(requests / ".claimed") == []
    con = sqlite3.connect(config.home.db_file)
    assert con.execute("SELECT COUNT(*) FROM runs").fetchone() == (150,)
    assert con.execute(
        "SELECT status, COUNT(*) FROM training_requests GROUP BY status ORDER BY status"
    ).fetchall() == [("queued", 150), ("rejected", 50)]


def test_rejected_file_gets_an_error_file_with_problems_and_fix(drops: tuple) -> None:
    config, _, folder = drops
    drop(config.home.requests, "civic.json", json.dumps(request(epochs=0)))
    folder.poll()
    error = json.loads((config.home.requests / "rejected" / "civic.error.json").read_text())
    assert error["status"] == "rejected"
    assert error["problems"] == ["epochs: input should be greater than or equal to 1 (got 0)"]
    assert error["fix"].startswith("correct every problem listed, then drop the file")


def test_same_named_files_never_overwrite_each_other(drops: tuple) -> None:
    config, _, folder = drops
    for epochs in (1, 2, 3):
        drop(config.home.requests, "nightly.json", json.dumps(request(epochs=epochs)))
        folder.poll()
        drop(config.home.requests, "broken.json", "{")
        folder.poll()
    assert listing(config.home.requests / "accepted") == [
        "nightly.2.json",
        "nightly.3.json",
        "nightly.json",
    ]
    assert listing(config.home.requests / "rejected") == [
        "broken.2.error.json",
        "broken.2.json",
        "broken.3.error.json",
        "broken.3.json",
        "broken.error.json",
        "broken.json",
    ]
    epochs = sorted(
        json.loads(p.read_text())["epochs"] for p in (config.home.requests / "accepted").iterdir()
    )
    assert epochs == [1, 2, 3]


def test_the_same_file_twice_is_rejected_as_a_duplicate(drops: tuple) -> None:
    config, _, folder = drops
    body = json.dumps(request())
    drop(config.home.requests, "a.json", body)
    folder.poll()
    drop(config.home.requests, "b.json", body)
    folder.poll()
    error = json.loads((config.home.requests / "rejected" / "b.error.json").read_text())
    assert error["status"] == "duplicate"
    assert error["problems"][0].startswith("duplicate of request #1 (run run-")


def test_a_file_still_being_written_waits_for_the_settle_time(drops: tuple) -> None:
    config, _, folder = drops
    slow = DropFolder(folder.intake, config.home, settle=3600)
    (config.home.requests / "direct.json").write_text("{")  # written in place, not renamed
    assert slow.poll() == 0
    assert (config.home.requests / "direct.json").exists()


def test_a_claimed_file_left_by_a_crash_is_finished_once(drops: tuple) -> None:
    config, _, folder = drops
    claimed = config.home.requests / ".claimed"
    claimed.mkdir()
    # crashed after claiming, before deciding
    (claimed / "aaaa__fresh.json").write_text(json.dumps(request(seed=1)))
    # crashed after deciding, before moving: the verdict in the database is kept
    raw = json.dumps(request(seed=2)).encode()
    folder.intake.take_bytes(raw, source="file", source_name="decided.json", claim="bbbb")
    (claimed / "bbbb__decided.json").write_bytes(raw)
    assert folder.recover() == 2
    assert listing(config.home.requests / "accepted") == ["decided.json", "fresh.json"]
    con = sqlite3.connect(config.home.db_file)
    assert con.execute("SELECT COUNT(*) FROM runs").fetchone() == (2,)
