"""oneseek-certified/<RUN_ID> is the run's own: a name another program holds there (files, a
link) is refused at intake, and the trainer re-checks it, never writes through a link there,
and never removes what it did not make (issue 26, item 5)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from homes import request
from trainhomes import TinyHome

from oneseekd.certify.publish import discard_staged
from oneseekd.errors import OneseekError
from oneseekd.trainer.run import train_run


def foreign(folder: Path, outside: Path, kind: str) -> None:
    """Another program's folder of files, or a link to a folder outside the home."""
    if kind == "folder":
        folder.mkdir()
        (folder / "theirs.txt").write_text("not oneseekd's\n")
    else:
        outside.mkdir()
        folder.symlink_to(outside)


@pytest.mark.parametrize(("kind", "shown"), [("folder", "a folder"), ("link", "a link")])
def test_a_run_id_whose_certified_folder_exists_is_refused_at_intake_naming_it(
    setup: tuple, tmp_path: Path, kind: str, shown: str
) -> None:
    config, _, intake = setup
    folder = config.home.certified / "run-civic"
    foreign(folder, tmp_path / "elsewhere", kind)
    body = json.dumps(request(run_id="run-civic")).encode()
    verdict = intake.take_bytes(body, source="submit")
    assert verdict.problems == [
        f"run id run-civic: {folder} already exists as {shown} oneseekd did not make; it "
        "would be the run's live folder, and another program's files are never written into "
        "or removed: choose another RUN_ID (or omit it to get a new one)"
    ]


@pytest.mark.parametrize(("kind", "shown"), [("folder", "a folder"), ("link", "a link")])
def test_the_trainer_never_writes_through_nor_removes_a_run_folder_it_did_not_make(
    one: TinyHome, tmp_path: Path, kind: str, shown: str
) -> None:
    run_id = one.start(["tiny-llama"], run_id="run-taken")
    # the name is taken after intake accepted it
    folder = one.config.home.certified / run_id
    outside = tmp_path / "elsewhere"
    foreign(folder, outside, kind)
    with pytest.raises(OneseekError) as err:
        train_run(one.engine, one.config.home, run_id)
    assert str(err.value) == (
        f"run {run_id} cannot write its live metrics\n"
        f"  - {folder} already exists as {shown} that oneseekd did not make for this run; it "
        "is left as it is: move it away, or submit the request again with another RUN_ID"
    )
    (pk,) = one.rows("SELECT id FROM runs WHERE run_id = ?", run_id)[0]
    discard_staged(one.engine, one.config.home, int(str(pk)))  # as the supervisor ends it
    if kind == "folder":
        assert sorted(p.name for p in folder.iterdir()) == ["theirs.txt"]
    else:
        assert folder.is_symlink() and list(outside.iterdir()) == []
