"""The drop folder against what its own crashes and odd files leave behind: one verdict file
per request, every rejection explained, links and FIFOs never followed or read."""

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


def test_a_crash_between_link_and_unlink_leaves_one_verdict_file(
    drops: tuple[Config, Engine, DropFolder],
) -> None:
    config, _, folder = drops
    path, pk = claimed_rejection(drops, "aaaa")
    rejected = config.home.requests / "rejected"
    os.link(path, rejected / "bad.json")  # the instant before os.unlink(claimed)
    assert folder.recover() == 1
    assert listing(rejected) == ["bad.error.json", "bad.json"]
    assert error_of(rejected, "bad.json")["request"] == pk
    assert listing(config.home.requests / ".claimed") == []


def test_a_crash_after_the_error_file_before_the_link_takes_the_same_name(
    drops: tuple[Config, Engine, DropFolder],
) -> None:
    config, _, folder = drops
    path, pk = claimed_rejection(drops, "bbbb")
    rejected = config.home.requests / "rejected"
    # the error file is written first: a crash before the link leaves it and the claim
    write_error(rejected / "bad.json", Verdict("rejected", pk, problems=[NO_MODEL]), "bad.json")
    assert folder.recover() == 1
    assert listing(rejected) == ["bad.error.json", "bad.json"]  # not bad.2.json
    assert error_of(rejected, "bad.json")["problems"] == [NO_MODEL]
    assert not path.exists()


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
