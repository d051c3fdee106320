"""Crash tests (issue 6, item 1): SIGKILL the daemon and the trainer child of a real home with
tiny models, restart, and check that the home is whole (crashharness.check_invariants).

Plain `pytest` runs a seeded subset; `pytest -m slow` runs the rest of the full set (ten seeds
of ten kill points, and the other crash points inside the trainer, each both ways)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from cases import slow_but
from crashharness import (
    CRASH_POINTS,
    DOWNLOAD_FOLDER,
    DOWNLOAD_POINTS,
    DOWNLOAD_REPO,
    PHASES,
    WEIGHTS,
    CrashRun,
    WholeModels,
    check_download_done,
    check_download_killed,
    check_invariants,
    check_outputs,
    crash_command,
    crash_home,
    download_command,
    download_home,
    drop,
    insert_download,
    schedule,
    small_request,
    unexpected_failures,
    whole_model_problems,
)
from daemon import DaemonProcess, model_state, query, run_until_idle, wait_for
from homes import request, training_home
from hubserver import HubServer
from modelfactory import make_model

# the supervisor's JSON line that starts a run's second attempt (the run log is JSON lines)
ATTEMPT_2 = '"attempt": 2, "argv"'


def _runs(home: Path) -> list[tuple[str, str, str | None, int]]:
    con = sqlite3.connect(home / "oneseek.db")
    try:
        return con.execute(
            "SELECT run_id, state, outcome, attempts FROM runs ORDER BY id"
        ).fetchall()
    finally:
        con.close()


# --- SIGKILLs from outside, at seeded random points ---------------------------------------------
def _survive_schedule(root: Path, seed: int, points: int) -> None:
    home = crash_home(root / "home", root / "cache")
    plan = schedule(seed, points)
    crash = CrashRun(home, seed)
    try:
        crash.run(plan)
        done = crash.finish()
    finally:
        crash.cleanup()
    assert done.returncode == 0, done.stderr[-3000:] + crash.story()
    assert {p.phase for p in plan} == set(PHASES)
    problems = check_invariants(home, crash.dropped) + unexpected_failures(home)
    assert problems == [], "\n".join(problems) + crash.story()
    # the last request, dropped after every kill, was trained and certified
    assert _runs(home)[-1][1] == "succeeded", f"{_runs(home)}{crash.story()}"


@pytest.mark.timeout(400)
@pytest.mark.parametrize("seed", [1])
def test_seeded_sigkills_of_daemon_and_trainer_leave_a_whole_home(
    tmp_path: Path, seed: int
) -> None:
    # one kill in each phase (intake, training, checkpointing, certification); ten seeds of
    # ten kills run with -m slow
    _survive_schedule(tmp_path, seed, points=len(PHASES))


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("seed", range(1, 11))
def test_ten_seeds_of_ten_sigkills_leave_a_whole_home(tmp_path: Path, seed: int) -> None:
    _survive_schedule(tmp_path, seed, points=10)


# --- SIGKILLs from inside the trainer, at exact points ------------------------------------------
# The exact points that found bugs (docs/reliability.md, "Bugs found"), each the regression
# test of its fix; the rest, and every `both`, run with -m slow:
# - outputs_unrecorded: a model's outputs were renamed into place before their transaction
#   committed, so a kill in between left outputs no artifact records
# - certify_staged: weights/oneseek-7b-zero-v<version>.json, with a DNA, was written under its
#   final name before the completion committed
# - certify_committed: a kill between the completion commit and publish() failed the run and
#   left its certified folder staged, so `ledger verify` found its artifacts missing
# - published: a kill after publish(), before the trainer exited, failed a certified run
# - checkpoint_lost (a power cut): `latest` named a folder that was gone, and the next attempt
#   started over at step 0 although an older checkpoint was kept
DEFAULT_CASES = [
    ("checkpoint_lost", "both"),
    ("outputs_unrecorded", "self"),
    ("certify_staged", "self"),
    ("certify_committed", "self"),
    ("published", "self"),
    ("current_linked", "self"),
]
# the points after the completion event committed: the run is certified whatever follows
COMMITTED_POINTS = frozenset(
    {
        "certify_committed",
        "published",
        "certified_named",
        "run_linked",
        "current_linked",
        "current_settled",
    }
)


def _crash_inside(root: Path, point: str, kill: str) -> None:
    """A run whose first attempt SIGKILLs its trainer (kill=self) or its daemon and then
    itself (kill=both, a power cut) at `point`; then the home must be whole. A resumed run
    trains two models, so that one trained before the crash is not trained again."""
    home = crash_home(root / "home", root / "cache", trainer_command=crash_command(point, kill))
    models = ["tiny-llama", "tiny-qwen"] if kill == "both" else ["tiny-llama"]
    drop(home, "crash.json", small_request(7, models))
    first = run_until_idle(home, timeout=300)
    if kill == "both":
        assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
        again = run_until_idle(home, timeout=300)
        assert again.returncode == 0, again.stderr[-3000:]
    else:
        assert first.returncode == 0, first.stderr[-3000:]
    [(run_id, state, outcome, attempts)] = _runs(home)
    log = (home / "logs" / f"{run_id}.log").read_text()
    assert f"crashharness: SIGKILL at {point} ({kill})" in log
    certified = point in COMMITTED_POINTS
    if kill == "self":  # a killed trainer fails its run, unless the ledger already certifies it
        expected = ("succeeded", "succeeded") if certified else ("failed", "signal")
        assert (state, outcome, attempts) == (*expected, 1), log[-3000:]
    if kill == "both" and certified:  # the next start ends it from what the ledger holds
        assert (state, outcome, attempts) == ("succeeded", "succeeded", 1), log[-3000:]
        assert ATTEMPT_2 not in log  # not trained, nor even started, again
    if kill == "both" and not certified:  # a power cut costs the attempt it hit, not the run
        assert (state, attempts) == ("succeeded", 2), log[-3000:]
        resumed = log.split(ATTEMPT_2)[1]
        if point.startswith("checkpoint"):  # from the checkpoint before the broken one
            assert '"event": "checkpoint_loaded"' in resumed
        if point == "model_committed":  # the committed model is not trained again
            assert '"model": "tiny-llama"' not in resumed and '"model": "tiny-qwen"' in resumed
    problems = check_invariants(home, ["crash.json"]) + check_outputs(home)
    assert problems == [], "\n".join(problems) + f"\nrun {run_id}: {state} ({outcome})"


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("point", "kill"),
    slow_but(DEFAULT_CASES, [(p, k) for p in CRASH_POINTS for k in ("self", "both")]),
)
def test_a_sigkill_at_an_exact_point_in_the_trainer_leaves_a_whole_home(
    tmp_path: Path, point: str, kill: str
) -> None:
    _crash_inside(tmp_path, point, kill)


@pytest.mark.timeout(300)
def test_a_stop_on_a_checkpoint_step_never_removes_the_checkpoint_latest_names(
    tmp_path: Path,
) -> None:
    """The trainer asks itself to stop right after a checkpoint step (every step is one
    here); it used to save that position again, removing the folder `latest` names first, so
    a crash in between left `latest` dangling. The harness kills it if it does."""
    home = crash_home(
        tmp_path / "home",
        tmp_path / "cache",
        trainer_command=crash_command("checkpoint_resaved", "self"),
    )
    drop(home, "crash.json", small_request(7))
    done = run_until_idle(home, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    [(run_id, state, outcome, attempts)] = _runs(home)
    log = (home / "logs" / f"{run_id}.log").read_text()
    assert "crashharness: SIGKILL" not in log, log[-3000:]
    assert "stopped on request after writing a checkpoint" in log
    assert (state, outcome, attempts) == ("failed", "stopped", 1)
    problems = check_invariants(home, ["crash.json"]) + check_outputs(home)
    assert problems == [], "\n".join(problems)


# --- the checks can fail ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def whole_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home that trained one two-model request to a certified end, untouched since."""
    root = tmp_path_factory.mktemp("whole")
    home = crash_home(root / "home", root / "cache")
    drop(home, "crash.json", small_request(3, ["tiny-llama", "tiny-qwen"]))
    done = run_until_idle(home, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return home


def _flip_a_byte(home: Path) -> None:
    [adapter] = (home / "models" / "oneseek-7b-zero" / "lora_adapters").glob(
        "*-tiny-llama/adapter_model.safetensors"
    )
    data = bytearray(adapter.read_bytes())
    data[len(data) // 2] ^= 0xFF
    adapter.write_bytes(bytes(data))


def _partial_certified(home: Path) -> None:
    [folder] = (home / "models" / "oneseek-certified").glob("OneSeek-7B-Zero.v*")
    (folder / "loss_curve.png").unlink()


def _dangling_current(home: Path) -> None:
    link = home / "models" / "oneseek-certified" / "OneSeek-7B-Zero-CURRENT"
    link.unlink()
    link.symlink_to("OneSeek-7B-Zero.v9.9.abcdef")


def _sql(statement: str) -> Callable[[Path], None]:
    def change(home: Path) -> None:
        con = sqlite3.connect(home / "oneseek.db")
        with con:
            con.execute(statement)
        con.close()

    return change


def _corrupt_an_index(home: Path) -> None:
    con = sqlite3.connect(home / "oneseek.db")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    (page,) = con.execute(
        "SELECT rootpage FROM sqlite_master WHERE type = 'index' AND tbl_name = 'ledger_events'"
    ).fetchone()
    (size,) = con.execute("PRAGMA page_size").fetchone()
    con.close()
    with (home / "oneseek.db").open("r+b") as fh:
        fh.seek((page - 1) * size + 8)
        fh.write(b"\x00" * 64)  # the cell pointers of one index page


def _left_in_requests(home: Path) -> None:
    drop(home, "late.json", small_request(4))


def _left_claimed(home: Path) -> None:
    (home / "requests" / ".claimed").mkdir(exist_ok=True)
    (home / "requests" / ".claimed" / "0123456789abcdef__crash.json").write_text("{}")


def _two_verdicts(home: Path) -> None:
    shutil.copy(
        home / "requests" / "accepted" / "crash.json",
        home / "requests" / "rejected" / "crash.json",
    )


def _unrecorded_output(home: Path) -> None:
    (home / "models" / "oneseek-7b-zero" / "weights" / "oneseek-7b-zero-v9.9.json").write_text(
        '{"dna": "OneSeek-7B-Zero.v9.9.abcdef"}'
    )


BREAKAGES: dict[str, tuple[Callable[[Path], None], str]] = {
    "artifact-byte-flipped": (_flip_a_byte, "adapter_model.safetensors differs from its recorded"),
    "certified-folder-partial": (_partial_certified, "is partial: missing ['loss_curve.png']"),
    "request-without-verdict": (_left_in_requests, "still in requests/: ['late.json']"),
    "claimed-never-finished": (_left_claimed, "claimed requests never finished"),
    "two-verdicts": (_two_verdicts, "crash.json is both accepted and rejected"),
    "request-pending": (_sql("UPDATE training_requests SET status = 'pending'"), "still pending"),
    "run-left-running": (_sql("UPDATE runs SET state = 'running'"), "ended running, not"),
    "failed-without-reason": (
        _sql("UPDATE runs SET state = 'failed', error = NULL"),
        "failed without a reason",
    ),
    "ledger-row-deleted": (
        _sql("DELETE FROM ledger_events WHERE seq = 2"),
        "ledger verify exits 1",
    ),
    "database-corrupt": (_corrupt_an_index, "integrity_check"),
    "unrecorded-output": (_unrecorded_output, "v9.9.json is visible but no artifact records it"),
    "current-dangling": (_dangling_current, "OneSeek-7B-Zero-CURRENT is a dangling link"),
}


def test_a_whole_home_passes_every_check(whole_home: Path) -> None:
    assert check_invariants(whole_home, ["crash.json"]) == []
    assert check_outputs(whole_home) == []


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_each_broken_guarantee_is_named(whole_home: Path, tmp_path: Path, breakage: str) -> None:
    home = tmp_path / "home"
    shutil.copytree(whole_home, home, symlinks=True)
    breaks, named = BREAKAGES[breakage]
    breaks(home)
    problems = check_invariants(home, ["crash.json"]) + check_outputs(home)
    assert any(named in p for p in problems), problems


def test_a_trainer_left_running_is_named(whole_home: Path) -> None:
    stray = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; time.sleep(60)",
            "oneseekd.trainer",
            "--home",
            str(whole_home),
        ]
    )
    try:
        problems = check_invariants(whole_home, ["crash.json"])
    finally:
        stray.kill()
        stray.wait()
    assert problems == [
        f"trainer processes still running after the daemon went idle: [{stray.pid}]"
    ]


# --- bugs the harness found, each at its exact instant -------------------------------------------
def test_a_run_s_outputs_leave_the_base_models_ready(tmp_path: Path) -> None:
    home = training_home(tmp_path / "home")
    daemon = DaemonProcess(home)
    try:
        daemon.wait_event("daemon_ready")
        # what save_model_outputs does: a versioned file renamed into weights/
        weights = home / "models" / "oneseek-7b-zero" / "weights"
        weights.mkdir(exist_ok=True)
        (weights / ".oneseek-7b-zero-v1.0.json.tmp").write_text("{}")
        os.rename(weights / ".oneseek-7b-zero-v1.0.json.tmp", weights / "oneseek-7b-zero-v1.0.json")
        # a model copied in afterwards: once it is ready, the event before it was handled too
        make_model(home / "models" / "oneseek-7b-zero" / "base_models", "Barrier-Model")
        wait_for(lambda: model_state(home, "barrier-model") == "ready", what="barrier-model")
        assert model_state(home, "kb-llama-3-1-8b-swedish") == "ready"
    finally:
        daemon.kill()


def _rejected_request(home: Path) -> str:
    """Drop a request the daemon rejects, run until idle; returns its claim token."""
    (home / "requests").mkdir(exist_ok=True)
    drop(home, "bad.json", request(base_models=["no-such-model"]))
    done = run_until_idle(home, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    con = sqlite3.connect(home / "oneseek.db")
    [(token, status)] = con.execute("SELECT claim, status FROM training_requests").fetchall()
    con.close()
    assert status == "rejected"
    return str(token)


def test_a_sigkill_between_link_and_unlink_leaves_one_verdict_file(tmp_path: Path) -> None:
    home = training_home(tmp_path / "home")
    token = _rejected_request(home)
    rejected = home / "requests" / "rejected"
    # the instant after os.link(claimed, rejected/bad.json), before os.unlink(claimed)
    (rejected / "bad.error.json").unlink()
    os.link(rejected / "bad.json", home / "requests" / ".claimed" / f"{token}__bad.json")
    done = run_until_idle(home, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert check_invariants(home, ["bad.json"]) + check_outputs(home) == []


def test_a_sigkill_before_the_error_file_still_explains_the_rejection(tmp_path: Path) -> None:
    home = training_home(tmp_path / "home")
    _rejected_request(home)
    # the instant after place() returned, before write_error()
    (home / "requests" / "rejected" / "bad.error.json").unlink()
    done = run_until_idle(home, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert check_invariants(home, ["bad.json"]) + check_outputs(home) == []


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_harness_trainer_passes_through_when_not_crashing(tmp_path: Path) -> None:
    """crashharness as [trainer] command crashes only in the attempt it is told to."""
    home = crash_home(
        tmp_path / "home", tmp_path / "cache", trainer_command=crash_command("published", "self", 2)
    )
    drop(home, "one.json", small_request(5))
    done = run_until_idle(home, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [(state, attempts) for _, state, _, attempts in _runs(home)] == [("succeeded", 1)]
    assert check_invariants(home, ["one.json"]) + check_outputs(home) == []
    assert json.loads((home / "requests" / "accepted" / "one.json").read_text())["seed"] == 5


# --- SIGKILLs of the daemon while it pulls a model from the Hub (issue 28) ---------------------
# What the restart asks the Hub for, after each kill: only what was not on disk. config.json,
# model.safetensors and tokenizer.json arrive in that order.
REFETCHED = {
    "mid_file": [WEIGHTS, "tokenizer.json"],  # the weights from the byte the kill left
    "file_placed": ["tokenizer.json"],  # the weights checked again from disk
    "file_recorded": ["tokenizer.json"],
    "installing": [],  # every file checked again from disk, then the rename
    "installed": [],  # the model is in place: the row ends from it
}


def part_size(home: Path, commit: str) -> int:
    """The bytes of the weights in their part file (0: none), as a pull left them."""
    staging = home / "models" / ".incoming" / f"{DOWNLOAD_FOLDER}@{commit}"
    part = staging / ".parts" / f"{WEIGHTS}.part"
    return part.stat().st_size if part.is_file() else 0


@pytest.mark.timeout(120)
@pytest.mark.parametrize("point", sorted(DOWNLOAD_POINTS))
def test_a_daemon_killed_while_it_pulls_a_model_never_catalogs_half_a_model(
    tmp_path: Path, point: str
) -> None:
    """The daemon SIGKILLed during a download (mid-file, between two files) and at the rename
    into base_models/ (just before and just after): at every instant base_models/ and the
    catalog hold nothing but the whole model, and after a restart the pull ends from the bytes
    on disk, each file's sha256 the Hub's."""
    built = make_model(tmp_path / "built", DOWNLOAD_FOLDER)
    files = {p.name: p.read_bytes() for p in built.iterdir() if p.is_file()}
    expected = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    home = download_home(tmp_path / "home")
    hub = HubServer()
    with hub.running(), WholeModels(home, expected) as watcher:
        commit = hub.add(DOWNLOAD_REPO, files)
        env = {"HF_ENDPOINT": hub.endpoint}
        if point == "mid_file":
            hub.hold_after(DOWNLOAD_REPO, WEIGHTS, 64 * 1024)
            first = DaemonProcess(home, env=env)
        else:
            first = DaemonProcess(home, env=env, command=download_command(point))
        try:
            first.wait_event("daemon_ready", timeout=60)
            row_id = insert_download(home)
            if point == "mid_file":  # the Hub sent 64 KiB of the weights and holds the rest
                assert hub.holding.wait(30), first.log_path.read_text()[-3000:]
                wait_for(lambda: part_size(home, commit), 30, what="the weights' first bytes")
                first.proc.kill()
            assert first.proc.wait(60) == -signal.SIGKILL
        finally:
            first.kill()
            hub.release()
        log = first.log_path.read_text()
        first.log_path.rename(home / "daemon-killed.log")
        if point != "mid_file":
            assert f"crashharness: SIGKILL at {point}" in log, log[-3000:]
        assert query(home, "SELECT status FROM model_downloads") == [("running",)]
        assert check_download_killed(home, commit, expected) == []
        installed = home / "models" / "oneseek-7b-zero" / "base_models" / DOWNLOAD_FOLDER
        assert installed.exists() == (point == "installed")
        on_disk = part_size(home, commit)  # where the restart asks the weights from
        assert (on_disk > 0) == (point == "mid_file")
        before = len(hub.gets)
        second = DaemonProcess(home, env=env)
        try:
            wait_for(
                lambda: (
                    query(home, "SELECT status FROM model_downloads")[0][0]
                    in ("succeeded", "failed", "cancelled")
                ),
                60,
                what="the download's end after the restart",
            )
            assert second.stop(signal.SIGTERM, timeout=30) == 0
        finally:
            second.kill()
        assert watcher.looks > 0
    restart = second.log_path.read_text()
    problems = watcher.problems + check_download_done(home, row_id, commit, expected)
    assert problems == [], "\n".join(problems) + restart[-3000:]
    assert [e for e in second.events() if e.get("event") == "download_requeued"]
    refetched = hub.gets[before:]
    assert [name for name, _, _ in refetched] == REFETCHED[point], refetched
    # each asked from the bytes on disk, and sent only the rest
    for name, start, sent in refetched:
        assert start == (on_disk if name == WEIGHTS else 0), refetched
        assert sent == len(files[name]) - start, refetched


def test_the_download_checks_can_fail(tmp_path: Path) -> None:
    """whole_model_problems names a partial model, a file that is not the Hub's, and a model
    whose manifest is missing: the checks the download crash tests rely on."""
    built = make_model(tmp_path / "base", DOWNLOAD_FOLDER)
    expected = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in built.iterdir()}
    assert whole_model_problems(built, expected) == [
        f"{DOWNLOAD_FOLDER} is half a model: .oneseek-pull.json is missing"
    ]
    manifest = {"files": {name: {"sha256": sha} for name, sha in expected.items()}}
    (built / ".oneseek-pull.json").write_text(json.dumps(manifest))
    assert whole_model_problems(built, expected) == []
    (built / "tokenizer.json").unlink()
    (built / WEIGHTS).write_bytes(b"not the weights")
    assert whole_model_problems(built, expected) == [
        f"{DOWNLOAD_FOLDER} is half a model: missing ['tokenizer.json'], unexpected []",
        f"{DOWNLOAD_FOLDER}/{WEIGHTS} differs from the Hub's sha256",
    ]
