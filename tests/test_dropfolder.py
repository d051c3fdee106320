"""The drop folder: every file ends in accepted/ or rejected/, taken exactly once; and against
what its own crashes and odd files leave behind: one verdict file per request, every rejection
explained, links and FIFOs never followed or read."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from homes import drop, open_home, request, training_home
from sqlalchemy import Engine

from oneseekd.config import Config
from oneseekd.intake.accept import Intake
from oneseekd.intake.dropfolder import LINK, DropFolder, place, write_error
from oneseekd.intake.incoming import Verdict

NO_MODEL = (
    "base_models: model name 'no-such-model' matches no base model; available: "
    "kb-llama-3-1-8b-swedish, mistral-7b-instruct, qwen-2-5-7b"
)


@pytest.fixture
def drops(tmp_path: Path) -> Iterator[tuple[Config, Engine, DropFolder]]:
    config, engine = open_home(training_home(tmp_path / "home"))
    yield config, engine, DropFolder(Intake(engine, config.home), config.home, settle=0)
    engine.dispose()


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
            drop(config.home.root, name, bad_kinds[(i // 4) % len(bad_kinds)])
            expected[name] = "rejected"
        else:
            drop(config.home.root, name, json.dumps(request(seed=i)))
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
    drop(config.home.root, "civic.json", json.dumps(request(epochs=0)))
    folder.poll()
    error = json.loads((config.home.requests / "rejected" / "civic.error.json").read_text())
    assert error["status"] == "rejected"
    assert error["problems"] == ["epochs: input should be greater than or equal to 1 (got 0)"]
    assert error["fix"].startswith("correct every problem listed, then drop the file")


def test_same_named_files_never_overwrite_each_other(drops: tuple) -> None:
    config, _, folder = drops
    for epochs in (1, 2, 3):
        drop(config.home.root, "nightly.json", json.dumps(request(epochs=epochs)))
        folder.poll()
        drop(config.home.root, "broken.json", "{")
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
    drop(config.home.root, "a.json", body)
    folder.poll()
    drop(config.home.root, "b.json", body)
    folder.poll()
    error = json.loads((config.home.requests / "rejected" / "b.error.json").read_text())
    assert error["status"] == "duplicate"
    assert error["problems"][0].startswith("duplicate of request #1: run run-")
    assert error["problems"][0].endswith(" is queued; " + error["fix"])


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


def error_of(folder: Path, name: str) -> dict[str, object]:
    body = json.loads((folder / name.replace(".json", ".error.json")).read_text())
    assert isinstance(body, dict)
    return body


def claimed_rejection(drops: tuple[Config, Engine, DropFolder], token: str) -> tuple[Path, int]:
    """A request decided `rejected` whose file is still claimed (a daemon died after deciding)."""
    config, _, folder = drops
    raw = json.dumps(request(base_models=["no-such-model"])).encode()
    verdict = folder.intake.take_bytes(raw, source="file", source_name="bad.json", claim=token)
    assert verdict.status == "rejected"
    claimed = config.home.requests / ".claimed"
    claimed.mkdir(exist_ok=True)
    path = claimed / f"{token}__bad.json"
    path.write_bytes(raw)
    return path, verdict.request_pk


def test_a_link_and_a_fifo_are_rejected_without_being_followed_or_read(
    drops: tuple[Config, Engine, DropFolder], tmp_path: Path
) -> None:
    config, _, folder = drops
    requests = config.home.requests
    target = tmp_path / "outside.json"
    target.write_text(json.dumps(request()))
    (requests / "linked.json").symlink_to(target)
    (requests / "dangling.json").symlink_to(tmp_path / "nothing.json")
    os.mkfifo(requests / "pipe.json")  # opening it to read would block the daemon
    (requests / "folder.json").mkdir()  # not a request file: left alone
    assert folder.poll() == 3
    rejected = requests / "rejected"
    assert listing(rejected) == [
        "dangling.error.json",
        "dangling.json",
        "linked.error.json",
        "linked.json",
        "pipe.error.json",
        "pipe.json",
    ]
    assert (rejected / "linked.json").is_symlink()  # moved as a link, never copied
    assert os.readlink(rejected / "linked.json") == str(target)
    assert target.read_text() == json.dumps(request())
    assert error_of(rejected, "linked.json")["problems"] == [LINK]
    assert error_of(rejected, "dangling.json")["problems"] == [LINK]
    assert error_of(rejected, "pipe.json")["problems"] == [
        "the request file is not a regular file (a FIFO, socket or device); drop a file"
    ]
    assert listing(requests) == [".claimed", "accepted", "folder.json", "rejected"]
    assert folder.waiting() == 0


def _linked_not_unlinked(claimed: Path, rejected: Path, pk: int) -> None:
    os.link(claimed, rejected / "bad.json")  # the instant before os.unlink(claimed)


def _error_file_not_linked(claimed: Path, rejected: Path, pk: int) -> None:
    # the error file is written first: a crash before the link leaves it and the claim
    write_error(rejected / "bad.json", Verdict("rejected", pk, problems=[NO_MODEL]), "bad.json")


@pytest.mark.parametrize(
    "crash", [_linked_not_unlinked, _error_file_not_linked], ids=lambda f: f.__name__.strip("_")
)
def test_a_crash_while_placing_a_rejection_leaves_one_verdict_file_under_its_name(
    drops: tuple[Config, Engine, DropFolder], crash: Callable[[Path, Path, int], None]
) -> None:
    config, _, folder = drops
    path, pk = claimed_rejection(drops, "aaaa")
    rejected = config.home.requests / "rejected"
    crash(path, rejected, pk)
    assert folder.recover() == 1
    assert listing(rejected) == ["bad.error.json", "bad.json"]  # not bad.2.json
    assert error_of(rejected, "bad.json")["request"] == pk
    assert error_of(rejected, "bad.json")["problems"] == [NO_MODEL]
    assert listing(config.home.requests / ".claimed") == []


def test_a_name_whose_error_file_explains_another_request_is_passed_over(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "rejected"
    folder.mkdir()
    (folder / "x.error.json").write_text(json.dumps({"request": 1}))
    (folder / "x.2.error.json").write_text("{ not json")
    src = tmp_path / "claimed"
    src.write_text("{")
    target = place(src, folder, "x.json", (Verdict("rejected", 2, problems=["p"]), "x.json"))
    assert target == folder / "x.3.json"
    assert json.loads((folder / "x.3.error.json").read_text())["request"] == 2
    assert json.loads((folder / "x.error.json").read_text()) == {"request": 1}
    assert not src.exists()


def test_a_start_explains_rejected_files_an_older_daemon_left_without_error_file(
    drops: tuple[Config, Engine, DropFolder],
) -> None:
    config, _, folder = drops
    requests = config.home.requests
    bodies = [request(base_models=["no-such-model"]), request(epochs=0)]
    for body in bodies:
        (requests / "bad.json").write_text(json.dumps(body))
        folder.poll()
    rejected = requests / "rejected"
    assert listing(rejected) == ["bad.2.error.json", "bad.2.json", "bad.error.json", "bad.json"]
    first, second = error_of(rejected, "bad.json"), error_of(rejected, "bad.2.json")
    (rejected / "bad.error.json").unlink()  # killed between moving the file and explaining it
    (rejected / "bad.2.error.json").unlink()
    (rejected / "stray.json").write_text("{}")  # put there by hand: no request, left alone
    assert folder.recover() == 0
    assert error_of(rejected, "bad.json") == first
    assert error_of(rejected, "bad.2.json") == second
    assert not (rejected / "stray.error.json").exists()
    con = sqlite3.connect(config.home.db_file)
    assert con.execute("SELECT count(*) FROM training_requests").fetchone() == (2,)
    con.close()
