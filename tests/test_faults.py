"""Resource faults during real training (issue 6, item 2).

The artifact folder stops being writable, the dataset disappears, the base model folder is
deleted: each while a tiny model trains for real. The run must fail with a reason that names
what went wrong, nothing half-written may be left where an operator or a program would take it
for a result, and the daemon must keep serving the next request.

Tests run as root, where chmod does not stop a write; an artifact folder "becomes read-only"
here by being replaced with a regular file of the same name, which fails every write under it
for root too. Faults are injected at a chosen optimizer step: in-process through train_run's
should_stop hook (called after every step), and through the real daemon by freezing the trainer
child with SIGSTOP once its first checkpoint exists, changing the files, and letting it go on.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from daemon import DaemonProcess, model_state, wait_for
from homes import drop, training_home
from pausetrainer import arm, pause_command, paused, release
from trainhomes import FAST, tiny_home
from trainhomes import TinyHome as Home

from oneseekd.catalog.live import Catalog
from oneseekd.catalog.scan import model_roots
from oneseekd.certify.artifacts import sha256_file
from oneseekd.certify.layout import CERTIFIED_FILES
from oneseekd.cli import main as ctl
from oneseekd.errors import OneseekError
from oneseekd.trainer.context import RunRefused
from oneseekd.trainer.run import train_run

ZERO = Path("models") / "oneseek-7b-zero"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
FAULT_STEP = 3  # optimizer steps into the first model: past setup and the first checkpoint


def fault_after(step: int, fault: Callable[[], None]) -> Callable[[], bool]:
    """A should_stop hook that injects `fault` once, after the given optimizer step, and never
    asks the run to stop."""
    calls = {"n": 0}

    def should_stop() -> bool:
        calls["n"] += 1
        if calls["n"] == step:
            fault()
        return False

    return should_stop


def replace_with_file(folder: Path) -> None:
    """The closest thing to a read-only folder for root: a regular file where it was."""
    if folder.is_dir():
        shutil.rmtree(folder)
    folder.write_text("this is not a folder: every write below it fails\n")


def assert_nothing_half_written(root: Path, run_id: str, version: str = "1.0") -> None:
    """No certified folder for the run, no staging in a visible name, no adapter folder
    without its files, no metadata of the failed version, every recorded artifact whole."""
    certified = root / "models" / "oneseek-certified"
    # a failed run keeps only its live folder, where CivicAI's leaderboard polled its metrics
    live = certified / run_id
    assert not live.is_symlink()
    # (and the mark that the trainer made it, so only it is ever removed: issue 26, item 5)
    assert not live.exists() or {p.name for p in live.iterdir()} <= {
        "live_metrics.json",
        ".oneseekd-run",
    }
    assert [p.name for p in certified.iterdir() if not p.name.startswith(".")] in ([], [run_id])
    assert not (root / ZERO / "weights" / f"oneseek-7b-zero-v{version}.json").exists()
    for folder in (root / ZERO / "lora_adapters", root / ZERO / "weights", certified):
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            assert entry.name.startswith(".") or not entry.name.endswith(".tmp"), entry
            if folder.name == "lora_adapters" and entry.is_dir() and not entry.name.startswith("."):
                missing = [f for f in ADAPTER_FILES if not (entry / f).is_file()]
                assert missing == [], f"{entry.name} lacks {missing}"
    con = sqlite3.connect(root / "oneseek.db")
    try:
        artifacts = con.execute("SELECT path, sha256, bytes, kind FROM artifacts").fetchall()
    finally:
        con.close()
    for path, sha, size, kind in artifacts:
        assert kind != "certified" and kind != "metadata", path
        assert (root / path).stat().st_size == size, path
        assert sha256_file(root / path) == sha, path


# --- in-process: the raised error, and what is left on disk ------------------------------------


@pytest.mark.parametrize("folder", ["lora_adapters", "weights"])
def test_an_artifact_folder_that_stops_being_writable_mid_run_fails_the_run_naming_it(
    one: Home, folder: str
) -> None:
    run_id = one.start(["tiny-llama"], epochs=1)
    target = one.root / ZERO / folder
    with pytest.raises(OSError) as err:
        train_run(
            one.engine,
            one.config.home,
            run_id,
            should_stop=fault_after(FAULT_STEP, lambda: replace_with_file(target)),
        )
    assert err.value.filename == str(target)  # the error names the folder it could not write
    assert "File exists" in str(err.value)
    assert_nothing_half_written(one.root, run_id)
    # nothing of the model was recorded: no artifact, no `model_trained`, the row still open
    assert one.rows("SELECT count(*) FROM artifacts") == [(0,)]
    assert one.rows("SELECT count(*) FROM ledger_events WHERE event = 'model_trained'") == [(0,)]
    assert one.rows("SELECT state FROM model_trainings") == [("training",)]
    # and the checkpoint it trained to is still there to resume from once the folder is back
    assert (one.root / "checkpoints" / run_id / "tiny-llama" / "latest").is_file()


def test_a_dataset_that_disappears_mid_run_fails_the_run_naming_it(one: Home) -> None:
    run_id = one.start(["tiny-llama"], epochs=1)
    dataset = one.root / "datasets" / "civic.jsonl"
    with pytest.raises((OSError, OneseekError)) as err:
        train_run(
            one.engine,
            one.config.home,
            run_id,
            should_stop=fault_after(FAULT_STEP, dataset.unlink),
        )
    assert "civic.jsonl" in str(err.value)
    assert_nothing_half_written(one.root, run_id)
    assert one.rows("SELECT count(*) FROM ledger_events WHERE event = ?", COMPLETED) == [(0,)]


def test_a_base_model_deleted_mid_run_fails_the_run_naming_it(one: Home) -> None:
    run_id = one.start(["tiny-llama"], epochs=1)
    folder = one.root / ZERO / "base_models" / "Tiny-Llama"
    with pytest.raises((OSError, OneseekError)) as err:
        train_run(
            one.engine,
            one.config.home,
            run_id,
            should_stop=fault_after(FAULT_STEP, lambda: shutil.rmtree(folder)),
        )
    assert "Tiny-Llama" in str(err.value)
    assert_nothing_half_written(one.root, run_id)
    assert one.rows("SELECT count(*) FROM ledger_events WHERE event = ?", COMPLETED) == [(0,)]


COMPLETED = "dna_v2_training_completed"


def test_a_dataset_gone_before_the_run_starts_is_refused_with_its_name(one: Home) -> None:
    run_id = one.start(["tiny-llama"])
    (one.root / "datasets" / "civic.jsonl").unlink()
    with pytest.raises(RunRefused) as err:
        train_run(one.engine, one.config.home, run_id)
    assert str(err.value) == (
        f"run {run_id} cannot train\n  - dataset civic.jsonl is gone from {one.root / 'datasets'}/"
    )
    assert_nothing_half_written(one.root, run_id)
    assert one.rows("SELECT count(*) FROM model_trainings") == [(0,)]


def test_a_base_model_gone_before_the_run_starts_is_refused_with_its_name(one: Home) -> None:
    run_id = one.start(["tiny-llama"])
    shutil.rmtree(one.root / ZERO / "base_models" / "Tiny-Llama")
    one.scan()
    with pytest.raises(RunRefused) as err:
        train_run(one.engine, one.config.home, run_id)
    assert str(err.value) == (f"run {run_id} cannot train\n  - base model tiny-llama is missing")
    assert_nothing_half_written(one.root, run_id)


def test_a_dataset_replaced_mid_run_is_never_certified_under_the_new_contents(
    one: Home,
) -> None:
    run_id = one.start(["tiny-llama"], epochs=1)
    dataset = one.root / "datasets" / "civic.jsonl"
    trained_on = hashlib.sha256(dataset.read_bytes()).hexdigest()
    lines = dataset.read_text(encoding="utf-8").splitlines()

    def replace() -> None:
        dataset.write_text("\n".join(reversed(lines)) + "\n", encoding="utf-8")

    with pytest.raises(RunRefused) as err:
        train_run(
            one.engine,
            one.config.home,
            run_id,
            should_stop=fault_after(FAULT_STEP, replace),
        )
    now = hashlib.sha256(dataset.read_bytes()).hexdigest()
    assert now != trained_on
    assert str(err.value) == (
        f"run {run_id} cannot be certified\n"
        f"  - dataset civic.jsonl changed during training (sha256 {trained_on[:12]}… was "
        f"trained on, {now[:12]}… is there now); submit the request again to train on what it "
        "holds now"
    )
    assert_nothing_half_written(one.root, run_id)
    assert one.rows("SELECT count(*) FROM ledger_events WHERE event = ?", COMPLETED) == [(0,)]


def test_writing_run_outputs_leaves_the_base_models_in_the_catalog(one: Home) -> None:
    catalog = Catalog(one.engine, model_roots(one.config), settle=0)
    catalog.full_scan()
    catalog.touch(one.root / ZERO / "lora_adapters" / "oneseek-7b-zero-v1.0-x" / "a.json")
    catalog.touch(one.root / ZERO / "weights" / "oneseek-7b-zero-v1.0.json")
    catalog.process_due()
    assert one.rows("SELECT key, state FROM base_models") == [("tiny-llama", "ready")]


# --- through the real daemon -------------------------------------------------------------------


class Runs:
    """The daemon's runs table, read the way another program would."""

    def __init__(self, home: Path) -> None:
        self.db = home / "oneseek.db"

    def one(self, sql: str, *args: object) -> tuple[object, ...] | None:
        con = sqlite3.connect(self.db, timeout=30)
        try:
            row: tuple[object, ...] | None = con.execute(sql, args).fetchone()
            return row
        finally:
            con.close()

    def run_of(self, request_file: str) -> str | None:
        row = self.one(
            "SELECT r.run_id FROM runs r JOIN training_requests t ON t.run_id = r.id "
            "WHERE t.source_name = ?",
            f"{request_file}.json",
        )
        return None if row is None else str(row[0])

    def state(self, run_id: str) -> str:
        row = self.one("SELECT state FROM runs WHERE run_id = ?", run_id)
        return "" if row is None else str(row[0])

    def ended(self, run_id: str) -> tuple[str, str, str]:
        wait_for(
            lambda: self.state(run_id) in ("succeeded", "failed", "cancelled"),
            timeout=240,
            interval=0.1,
            what=f"run {run_id} to end",
        )
        row = self.one("SELECT state, outcome, error FROM runs WHERE run_id = ?", run_id)
        assert row is not None
        return str(row[0]), str(row[1]), str(row[2] or "")


def fault_in_flight(
    daemon: DaemonProcess,
    runs: Runs,
    request_file: str,
    key: str,
    fault: Callable[[], None],
    body: dict[str, object],
) -> str:
    """Drop the request, let its trainer pause right after its first checkpoint (a hook in
    tests/pausetrainer.py: never a race with a run that may end before a poll sees it), apply
    the fault, let it go on; returns the run id. The run has written no output yet."""
    pauses = daemon.home / "pauses"
    arm(pauses)
    drop(daemon.home, f"{request_file}.json", body)
    run_id = wait_for(lambda: runs.run_of(request_file), timeout=30, what="the run")
    wait_for(lambda: paused(pauses, run_id), timeout=180, what="the trainer paused")
    try:
        assert runs.state(run_id) == "running"
        assert (daemon.home / "checkpoints" / run_id / key / "latest").exists()
        outputs = daemon.home / ZERO / "lora_adapters"
        assert not outputs.is_dir() or not any(outputs.glob(f"*{key}*"))
        fault()
    finally:
        release(pauses, run_id)
    return run_id


def quiet(daemon: DaemonProcess, seconds: float = 1.5, timeout: float = 30.0) -> None:
    """Wait until the daemon has logged nothing new for `seconds`: the watch events of a change
    just made, and any rescan they lead to, have been dealt with."""
    seen = {"lines": -1, "since": 0.0}

    def still() -> bool:
        lines = len(daemon.log_path.read_bytes().splitlines())
        now = time.monotonic()
        if lines != seen["lines"]:
            seen["lines"], seen["since"] = lines, now
        return now - seen["since"] >= seconds

    wait_for(still, timeout=timeout, interval=0.05, what="the daemon to go quiet")


def next_request_succeeds(daemon: DaemonProcess, runs: Runs) -> str:
    """Once the fault is repaired: the model is ready again and a new request trains and is
    certified; its run id."""
    home = daemon.home
    quiet(daemon)
    wait_for(lambda: model_state(home, "tiny-llama") == "ready", timeout=30)
    drop(
        home, "next.json", {"base_models": ["llama"], "dataset": "civic.jsonl", **FAST, "epochs": 1}
    )
    next_id: str = wait_for(lambda: runs.run_of("next"), timeout=30, what="the next run")
    assert runs.ended(next_id)[:2] == ("succeeded", "succeeded")
    return next_id


def ledger_verifies(home: Path) -> None:
    result = CliRunner().invoke(ctl, ["--home", str(home), "ledger", "verify"])
    assert result.exit_code == 0, result.output


def daemon_home(tmp_path: Path, cache: Path, models: dict[str, str]) -> Path:
    home = tiny_home(tmp_path / "home", cache, models)
    # a rescan every second: the catalog forgets the base models whenever run outputs change
    # (test_writing_run_outputs_leaves_the_base_models_in_the_catalog); the periodic scan is
    # what brings them back until that is fixed
    config = home / "oneseekd.toml"
    config.write_text(
        config.read_text().replace("rescan_interval_seconds = 3600", "rescan_interval_seconds = 1")
        # a run started by fault_in_flight pauses after its first checkpoint
        + f"command = {json.dumps(pause_command(home / 'pauses', 1, armed=True))}\n"
    )
    return home


@pytest.mark.slow  # two daemon trainings (15 s); the in-process test above breaks the folder in CI
@pytest.mark.timeout(300)
def test_the_daemon_fails_a_run_whose_adapter_folder_broke_and_serves_the_next(
    tmp_path: Path, cache: Path
) -> None:
    home = daemon_home(tmp_path, cache, {"Tiny-Llama": "llama"})
    adapters = home / ZERO / "lora_adapters"
    daemon = DaemonProcess(home)
    runs = Runs(home)
    try:
        daemon.wait_event("daemon_ready", timeout=30)
        body = {"base_models": ["llama"], "dataset": "civic.jsonl", **FAST, "epochs": 2}
        run_id = fault_in_flight(
            daemon, runs, "broken", "tiny-llama", lambda: replace_with_file(adapters), body
        )
        state, outcome, error = runs.ended(run_id)
        assert (state, outcome) == ("failed", "error")
        assert error.startswith("the trainer crashed: FileExistsError: [Errno 17] File exists")
        assert "\n(the trainer exited with status 1; the end of its log:)\n" in error
        assert f"FileExistsError: [Errno 17] File exists: '{adapters}'" in error
        assert_nothing_half_written(home, run_id)
        assert daemon.proc.poll() is None
        # the operator puts the folder back; the next request trains and is certified
        adapters.unlink()
        adapters.mkdir()
        next_id = next_request_succeeds(daemon, runs)
        certified = home / "models" / "oneseek-certified" / next_id  # a link to the DNA folder
        assert set(CERTIFIED_FILES) <= {p.name for p in certified.iterdir()}
        assert daemon.proc.poll() is None
    finally:
        daemon.stop()
    ledger_verifies(home)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_daemon_fails_runs_whose_dataset_or_base_model_vanished_and_serves_the_next(
    tmp_path: Path, cache: Path
) -> None:
    home = daemon_home(tmp_path, cache, {"Tiny-Llama": "llama", "Tiny-Qwen": "qwen2"})
    dataset = home / "datasets" / "civic.jsonl"
    original = dataset.read_bytes()
    (home / "datasets" / "other.jsonl").write_bytes(original)
    daemon = DaemonProcess(home)
    runs = Runs(home)
    try:
        daemon.wait_event("daemon_ready", timeout=30)
        body = {"base_models": ["llama"], "dataset": "civic.jsonl", **FAST, "epochs": 2}
        run_id = fault_in_flight(daemon, runs, "no-data", "tiny-llama", dataset.unlink, body)
        state, outcome, error = runs.ended(run_id)
        assert (state, outcome) == ("failed", "error")
        assert f"dataset civic.jsonl is gone from {dataset.parent}/ since it was read" in error
        assert_nothing_half_written(home, run_id)

        qwen = home / ZERO / "base_models" / "Tiny-Qwen"
        body = {"base_models": ["qwen"], "dataset": "other.jsonl", **FAST, "epochs": 2}
        run_id = fault_in_flight(
            daemon, runs, "no-model", "tiny-qwen", lambda: shutil.rmtree(qwen), body
        )
        state, outcome, error = runs.ended(run_id)
        assert (state, outcome) == ("failed", "error")
        assert f"No such file or directory: '{qwen}'" in error
        assert_nothing_half_written(home, run_id, version="1.1")
        wait_for(lambda: model_state(home, "tiny-qwen") == "missing", timeout=30)
        assert daemon.proc.poll() is None

        dataset.write_bytes(original)
        next_request_succeeds(daemon, runs)
        assert daemon.proc.poll() is None
    finally:
        daemon.stop()
    ledger_verifies(home)


def test_the_daemon_still_knows_its_models_after_run_outputs_appear(tmp_path: Path) -> None:
    home = training_home(tmp_path / "home")  # a rescan only every hour, as operators run it
    daemon = DaemonProcess(home)
    try:
        daemon.wait_event("daemon_ready", timeout=30)
        assert model_state(home, "qwen-2-5-7b") == "ready"
        # what the trainer does at the end of every run
        adapter = home / ZERO / "lora_adapters" / "oneseek-7b-zero-v1.0-qwen-2-5-7b"
        adapter.mkdir(parents=True)
        (adapter / "adapter_config.json").write_text("{}")
        quiet(daemon, seconds=1.0)
        drop(home, "next.json", {"base_models": ["qwen"], "dataset": "civic.jsonl"})
        wait_for(
            lambda: any(
                (home / "requests" / d / "next.json").exists() for d in ("accepted", "rejected")
            ),
            timeout=15,
        )
        rejected = home / "requests" / "rejected" / "next.error.json"
        assert not rejected.exists(), rejected.read_text()
        assert model_state(home, "qwen-2-5-7b") == "ready"
    finally:
        daemon.stop()
