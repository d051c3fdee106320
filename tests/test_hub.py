"""Pulling a base model from the Hub (oneseekd/hub/), against a Hub on loopback
(tests/hubserver.py): pinned to a commit, only what training needs, every byte checked,
resumable, and installed in one rename only when whole."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hubserver import HubServer
from modelfactory import make_model

from oneseekd.errors import ConfigError
from oneseekd.hub.fetch import CHECKED, MANIFEST, fetch, staging_folder
from oneseekd.hub.pin import pin
from oneseekd.hub.pull import Where, pull_model
from oneseekd.hub.repo import HubError, RepoRef, parse

REPO = "tiny-org/Tiny-Llama"


def model_files(tmp_path: Path) -> dict[str, bytes]:
    """A real tiny model folder's files, plus what a pull must leave on the Hub."""
    folder = make_model(tmp_path / "built", "Tiny-Llama")
    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    files["pytorch_model.bin"] = b"\x80\x04pickle" * 200  # a pickle beside safetensors
    files["modeling_tiny.py"] = b"import os\nos.system('echo owned')\n"  # remote code
    files["README.md"] = b"# Tiny\n"
    return files


CHUNK = 4096  # what the test Hub sends at a time: a drop can lose one in flight


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubServer]:
    server = HubServer()
    server.add(REPO, model_files(tmp_path))
    with server.running():
        yield server


@pytest.fixture
def where(tmp_path: Path, hub: HubServer) -> Where:
    home = tmp_path / "home"
    return Where(
        base_models=home / "models" / "oneseek-7b-zero" / "base_models",
        incoming=home / "models" / ".incoming",
        token_file=home / "keys" / "hf_token",
        endpoint=hub.endpoint,
    )


def no_sleep(_: float) -> None:
    pass


def test_names_are_parsed_and_bad_ones_refused() -> None:
    assert parse("hf:Qwen/Qwen2.5-7B-Instruct@v1.0") == RepoRef("Qwen/Qwen2.5-7B-Instruct", "v1.0")
    assert parse("Qwen/Qwen2.5-7B-Instruct").revision == "main"
    assert parse("Qwen/Qwen2.5-7B-Instruct").folder == "Qwen2.5-7B-Instruct"
    for bad in ("qwen", "a/b/c", "../etc@main", "org/na--me", "org/x@../../x"):
        with pytest.raises(HubError):
            parse(bad)


def test_a_pull_installs_only_what_training_needs_pinned_and_checked(
    hub: HubServer, where: Where
) -> None:
    commit = hub.repos[REPO].branches["main"]
    pulled = pull_model(parse(REPO), where, sleep=no_sleep)
    assert pulled.fetched and pulled.commit == commit
    target = where.base_models / "Tiny-Llama"
    assert pulled.target == target
    names = {p.name for p in target.iterdir()}
    assert {"config.json", "model.safetensors", MANIFEST} <= names
    assert not names & {"pytorch_model.bin", "modeling_tiny.py", "README.md", CHECKED, ".cache"}
    assert "pytorch_model.bin" not in hub.served_bytes  # never even asked for
    assert "modeling_tiny.py" not in hub.served_bytes
    manifest = json.loads((target / MANIFEST).read_text())
    assert (manifest["repository"], manifest["commit"]) == (REPO, commit)
    assert set(manifest["files"]) == set(pulled.sha256s) == names - {MANIFEST}
    assert list(where.incoming.iterdir()) == []  # staging renamed away
    # every request for a file named the commit, never the branch
    assert all(commit in path for method, path in hub.requests if "/resolve/" in path)

    served = dict(hub.served_bytes)
    again = pull_model(parse(REPO), where, sleep=no_sleep)
    assert not again.fetched and hub.served_bytes == served  # the same pull fetches nothing
    assert pull_model(parse(f"{REPO}@{commit}"), where).fetched is False


def test_pickles_only_with_allow_pickle_and_only_without_safetensors(
    tmp_path: Path, hub: HubServer, where: Where
) -> None:
    files = model_files(tmp_path)
    pickled = {k: v for k, v in files.items() if not k.endswith(".safetensors")}
    hub.add("tiny-org/Pickled", pickled)
    with pytest.raises(HubError, match=r"no safetensors weights.*--allow-pickle"):
        pull_model(parse("tiny-org/Pickled"), where, sleep=no_sleep)
    pulled = pull_model(parse("tiny-org/Pickled"), where, allow_pickle=True, sleep=no_sleep)
    names = {p.name for p in pulled.target.iterdir()}
    assert "pytorch_model.bin" in names and "modeling_tiny.py" not in names


def test_a_file_served_corrupted_is_refused_and_never_installed(
    hub: HubServer, where: Where
) -> None:
    hub.corrupt(REPO, "model.safetensors")
    with pytest.raises(HubError, match=r"model\.safetensors arrived damaged: sha256"):
        pull_model(parse(REPO), where, sleep=no_sleep)
    assert not (where.base_models / "Tiny-Llama").exists()
    [staging] = list(where.incoming.iterdir())
    assert not (staging / "model.safetensors").exists()  # deleted, not trusted next time
    hub.corrupted.clear()  # the mirror serves a good copy again: the next pull completes
    assert pull_model(parse(REPO), where, sleep=no_sleep).fetched


def test_files_in_place_but_unrecorded_are_checked_from_disk_not_fetched_again(
    hub: HubServer, where: Where
) -> None:
    """What a kill just before the rename into base_models/ leaves (install() cleared the
    record of checked files), with one file since damaged: only that one is fetched again."""
    ref = parse(REPO)
    commit = hub.repos[REPO].branches["main"]
    pinned = pin(ref, endpoint=hub.endpoint, token=None, token_file=where.token_file)
    staging = staging_folder(where.incoming, pinned, ref.folder)
    fetch(pinned, staging, endpoint=hub.endpoint, token=None, token_file=where.token_file)
    (staging / CHECKED).unlink()
    (staging / "tokenizer.json").write_bytes(b"{}")  # the same name, not the Hub's bytes
    before = len(hub.gets)
    pulled = pull_model(ref, where, sleep=no_sleep)
    assert [name for name, _, _ in hub.gets[before:]] == ["tokenizer.json"]
    files = hub.repos[REPO].commits[commit]
    assert all((pulled.target / f.name).read_bytes() == files[f.name] for f in pinned.files)
    assert list(where.incoming.iterdir()) == []


def test_a_dropped_transfer_resumes_from_the_bytes_on_disk(hub: HubServer, where: Where) -> None:
    size = len(hub.repos[REPO].commits[hub.repos[REPO].branches["main"]]["model.safetensors"])
    hub.cut_after(REPO, "model.safetensors", size // 3)
    pull_model(parse(REPO), where, sleep=no_sleep)
    starts = [start for name, start, _ in hub.gets if name == "model.safetensors"]
    assert starts[0] == 0 and starts[-1] >= size // 3 - CHUNK, starts
    # only the missing bytes were fetched again (a chunk in flight at most)
    assert hub.served_bytes["model.safetensors"] <= size + CHUNK


PULL = """
import sys
from pathlib import Path
from oneseekd.hub.pull import Where, pull_model
from oneseekd.hub.repo import parse
home = Path(sys.argv[1])
where = Where(home / "b", home / "i", home / "t", sys.argv[2])
pull_model(parse(sys.argv[3]), where, progress=lambda t: print(t.done_bytes, flush=True))
"""


def test_a_pull_killed_mid_file_resumes_and_fetches_only_the_missing_bytes(
    tmp_path: Path, hub: HubServer
) -> None:
    big = os.urandom(3 * 2**20)
    files = model_files(tmp_path)
    files["model.safetensors"] = big  # the checks are of bytes; the header does not matter
    hub.add("tiny-org/Big", files)
    hub.bytes_per_second = 2 * 2**20
    home = tmp_path / "killed"
    args = [sys.executable, "-c", PULL, str(home), hub.endpoint]
    proc = subprocess.Popen([*args, "tiny-org/Big"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if int(line) > 2**20:  # a third of the big file is on disk
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(30)
    assert not (home / "b" / "Big").exists()
    hub.bytes_per_second = None
    done = subprocess.run([*args, "tiny-org/Big"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (home / "b" / "Big" / "model.safetensors").read_bytes() == big
    first, resumed = [g for g in hub.gets if g[0] == "model.safetensors"]
    assert resumed[1] > 2**19  # about a third of the file was on disk when it was killed
    # the resume asked only for what was not on disk; fetched twice: only what was in flight
    assert resumed[2] == len(big) - resumed[1]
    assert first[1] == 0 and resumed[1] <= first[2]


def test_a_revision_moved_after_pinning_still_downloads_the_pinned_commit(
    tmp_path: Path, hub: HubServer, where: Where
) -> None:
    ref = parse(REPO)
    pinned = pin(ref, endpoint=hub.endpoint, token=None, token_file=where.token_file)
    old = hub.repos[REPO].commits[pinned.commit]
    moved = dict(old, **{"config.json": b'{"model_type": "llama", "moved": true}'})
    new_commit = hub.move(REPO, moved)
    assert new_commit != pinned.commit
    staging = staging_folder(where.incoming, pinned, "Tiny-Llama")
    fetch(pinned, staging, endpoint=hub.endpoint, token=None, token_file=where.token_file)
    assert (staging / "config.json").read_bytes() == old["config.json"]


def test_private_repositories_need_the_token_file_and_a_safe_one(
    tmp_path: Path, hub: HubServer, where: Where
) -> None:
    hub.add("tiny-org/Private", model_files(tmp_path), token="hf_secret")
    with pytest.raises(HubError, match=r"refused access to tiny-org/Private \(401\)") as e:
        pull_model(parse("tiny-org/Private"), where, sleep=no_sleep)
    assert str(where.token_file) in str(e.value)
    where.token_file.parent.mkdir(parents=True)
    where.token_file.write_text("hf_secret\n")
    where.token_file.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        pull_model(parse("tiny-org/Private"), where, sleep=no_sleep)
    where.token_file.chmod(0o600)
    assert pull_model(parse("tiny-org/Private"), where, sleep=no_sleep).fetched


def test_unknown_repositories_and_revisions_are_refused_clearly(
    hub: HubServer, where: Where
) -> None:
    with pytest.raises(HubError, match="no repository tiny-org/Nope"):
        pull_model(parse("tiny-org/Nope"), where, sleep=no_sleep)
    with pytest.raises(HubError, match="has no revision 'v9'"):
        pull_model(parse(f"{REPO}@v9"), where, sleep=no_sleep)


def test_not_enough_disk_is_refused_with_the_numbers(hub: HubServer, where: Where) -> None:
    with pytest.raises(HubError, match=r"not enough disk space .* needs .* has 1.0 MiB free"):
        pull_model(parse(REPO), where, sleep=no_sleep, free_bytes=lambda _: 2**20)
    assert not (where.base_models / "Tiny-Llama").exists()


def test_offline_and_unreachable_say_what_to_copy_by_hand(tmp_path: Path, where: Where) -> None:
    offline = Where(where.base_models, where.incoming, where.token_file, where.endpoint, True)
    with pytest.raises(HubError, match=r"\[hub\] offline is set") as e:
        pull_model(parse(REPO), offline)
    assert f"{where.base_models / 'Tiny-Llama'}/" in str(e.value)

    unreachable = Where(where.base_models, where.incoming, where.token_file, "http://127.0.0.1:9")
    slept: list[float] = []
    started = time.monotonic()
    with pytest.raises(HubError, match=r"cannot reach http://127\.0\.0\.1:9") as e:
        pull_model(parse(REPO), unreachable, attempts=3, sleep=slept.append)
    assert slept == [2.0, 4.0]  # retried with backoff, then refused
    assert "copy the folder to" in str(e.value)
    assert time.monotonic() - started < 60
