"""The supervisor with a fake trainer: every way a child can end becomes the right outcome.
Each test runs on SQLite and on PostgreSQL (`db_url`)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from homes import fake_behaviour, fake_starts, request
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from structlog.testing import capture_logs
from world import World, close

from oneseekd import queue
from oneseekd.daemon.procs import Child
from oneseekd.daemon.supervisor import Supervisor
from oneseekd.db.engine import write_session
from oneseekd.logs import one_line_reason
from oneseekd.trainer.data import refuse


@pytest.fixture
def world(tmp_path: Path, db_url: str | None) -> Iterator[World]:
    w = World(tmp_path / "home", db_url)
    yield w
    close(w)


@pytest.fixture
def make_world(tmp_path: Path, db_url: str | None) -> Iterator[Callable[..., World]]:
    made: list[World] = []

    def make(**home_options: object) -> World:
        made.append(World(tmp_path / "home", db_url, **home_options))
        return made[-1]

    yield make
    for w in made:
        close(w)


def test_a_clean_exit_is_success(world: World) -> None:
    run_id = world.submit("1.0")
    world.drive(lambda: world.finished(run_id))
    run = world.run(run_id)
    assert (run["state"], run["outcome"], run["exit_code"], run["attempts"]) == (
        "succeeded",
        "succeeded",
        0,
        1,
    )
    [start] = fake_starts(world.home)
    assert (start["run_id"], start["attempt"], start["resume"]) == (run_id, "1", "0")


def test_an_error_exit_fails_with_the_tail_of_stderr(world: World) -> None:
    run_id = world.submit("1.0", exit=3, stderr="Traceback ...\nValueError: tokenizer exploded")
    world.drive(lambda: world.finished(run_id))
    run = world.run(run_id)
    assert (run["state"], run["outcome"], run["exit_code"]) == ("failed", "error", 3)
    error = str(run["error"])
    assert error.startswith("the trainer exited with status 3\n")
    assert error.endswith("ValueError: tokenizer exploded")


CUT = (
    "its response would be cut off entirely at max_seq_len 16: shorten the prompt, raise "
    'max_seq_len, or set truncation_side: "left" to cut the prompt instead'
)


def test_a_refused_run_fails_with_the_trainers_reason_in_one_line(world: World) -> None:
    """The trainer's reason is the error's first line (not "exited with status 65"), the same
    problem at 20 lines reads once as `lines 1-20`, library noise and the argv stay out, and
    `run_failed` is an error."""
    refused = refuse("civic.jsonl", [f"line {n}: {CUT}" for n in range(1, 21)], "record(s) x")
    noise = {"level": "warning", "event": "python_warning", "category": "FutureWarning"}
    said = {"level": "error", "event": "trainer_refused", "error": f"Error: {refused}"}
    said["reason"] = one_line_reason(refused.message, refused.problems)
    lines = [json.dumps(noise | {"message": "peft asks something"}), json.dumps(said)]
    run_id = world.submit("1.0", exit=65, stderr="\n".join(lines))
    with capture_logs() as logged:
        world.drive(lambda: world.finished(run_id))
    run = world.run(run_id)
    assert (run["state"], run["outcome"], run["exit_code"]) == ("failed", "error", 65)
    error = str(run["error"])
    cause = f"dataset civic.jsonl has 20 record(s) x: lines 1\u201320: {CUT}"
    assert error.splitlines()[0] == cause
    assert error.count(CUT) == 2  # the cause, and the log's refusal grouped once
    assert "line 2:" not in error and "peft asks" not in error and "argv" not in error
    [failed] = [e for e in logged if e["event"] == "run_failed"]
    assert (failed["log_level"], failed["error"]) == ("error", cause)


def test_killed_by_a_signal(world: World) -> None:
    run_id = world.submit("1.0", kill_self="SIGKILL")
    world.drive(lambda: world.finished(run_id))
    run = world.run(run_id)
    assert (run["state"], run["outcome"], run["exit_code"]) == ("failed", "signal", -9)
    assert str(run["error"]).startswith(
        "the trainer was killed by SIGKILL (the kernel's out-of-memory killer sends SIGKILL"
    )


def test_out_of_memory(world: World) -> None:
    run_id = world.submit("1.0", exit=76, stderr="torch.OutOfMemoryError: CUDA out of memory.")
    world.drive(lambda: world.finished(run_id))
    run = world.run(run_id)
    assert (run["state"], run["outcome"]) == ("failed", "oom")
    assert str(run["error"]).startswith("out of memory: lower batch_size or max_seq_len")


def test_a_trainer_that_cannot_start_fails_the_run_with_the_fix(
    make_world: Callable[..., World],
) -> None:
    w = make_world(command=["/nonexistent/trainer"])
    run_id = w.submit("1.0")
    w.supervisor.tick()
    run = w.run(run_id)
    assert (run["state"], run["outcome"]) == ("failed", "error")
    assert run["error"] == (
        "cannot start the trainer '/nonexistent/trainer': No such file or "
        "directory; check [trainer] command in oneseekd.toml"
    )


def test_cancel_while_queued_and_while_running(world: World) -> None:
    running = world.submit("1.0", sleep=30)
    waiting = world.submit("1.1")
    world.drive(lambda: world.started(running))
    assert queue.request_cancel(world.engine, waiting).immediate is True
    assert world.run(waiting)["state"] == "cancelled"
    started = time.monotonic()
    assert queue.request_cancel(world.engine, running).immediate is False
    world.drive(lambda: world.finished(running))
    assert time.monotonic() - started < 5
    assert (world.run(running)["state"], world.run(running)["outcome"]) == (
        "cancelled",
        "cancelled",
    )
    # the child was asked first (SIGTERM), and checkpointed before it stopped
    assert (world.home / "fake" / f"checkpoint-{running}").exists()
    assert [s["run_id"] for s in fake_starts(world.home)] == [running]


def test_a_child_ignoring_the_cancel_is_killed_after_the_grace(
    make_world: Callable[..., World],
) -> None:
    w = make_world(cancel_grace=0.3)
    run_id = w.submit("1.0", sleep=60, ignore_term=True)
    w.drive(lambda: w.started(run_id))
    queue.request_cancel(w.engine, run_id)
    started = time.monotonic()
    w.drive(lambda: w.finished(run_id))
    assert 0.3 <= time.monotonic() - started < 5
    assert w.run(run_id)["state"] == "cancelled"


def test_runs_go_one_at_a_time_by_priority_then_first_in(world: World) -> None:
    ids = [world.submit(f"1.{i}", sleep=0.1) for i in range(3)]
    fake_behaviour(world.home, "2.0", sleep=0.1)
    urgent = world.intake.take_bytes(
        json.dumps(request(version="2.0", priority=5)).encode(), source="submit"
    ).run_id
    world.drive(lambda: all(world.finished(r) for r in [*ids, str(urgent)]), timeout=20)
    starts = fake_starts(world.home)
    assert [s["run_id"] for s in starts] == [urgent, *ids]
    for earlier, later in itertools.pairwise(starts):
        assert float(later["start"]) >= float(earlier["end"])  # never overlapping


def test_the_database_refuses_a_second_running_run(world: World) -> None:
    first = world.submit("1.0")
    second = world.submit("1.1")
    assert queue.claim_next(world.engine, None) is not None
    assert queue.claim_next(world.engine, None) is None
    refused = (
        r'duplicate key value violates unique constraint "uq_runs_one_running"'
        if world.db.postgresql
        else r"UNIQUE constraint failed: runs\.host"
    )
    with pytest.raises(Exception, match=refused):
        world.db.execute(
            "UPDATE runs SET state = 'running', host = ? WHERE run_id = ?",
            world.run(first)["host"],
            second,
        )
    assert world.run(first)["state"] == "running"


def test_shutdown_leaves_the_run_running_and_the_next_start_resumes_it(world: World) -> None:
    run_id = world.submit("1.0", sleep=30)
    world.drive(lambda: world.started(run_id))
    world.supervisor.shutdown()
    assert world.run(run_id)["state"] == "running"
    assert (world.home / "fake" / f"checkpoint-{run_id}").exists()
    fake_behaviour(world.home, "1.0", sleep=0.05)
    world.restart()
    world.drive(lambda: world.finished(run_id))
    assert world.run(run_id)["state"] == "succeeded"
    assert [(s["attempt"], s["resume"]) for s in fake_starts(world.home)] == [
        ("1", "0"),
        ("2", "1"),
    ]


def test_a_run_interrupted_too_often_fails_with_the_reason(world: World) -> None:
    run_id = world.submit("1.0")
    queue.claim_next(world.engine, None)
    world.db.execute("UPDATE runs SET attempts = 3 WHERE run_id = ?", run_id)
    world.supervisor.recover()
    assert world.lost(run_id).startswith(
        "the trainer failed 3 times (trainer.max_attempts = 3): attempts 1, 2 and 3 ended "
        "without a checkpointed stop"
    )


# a trainer that stages a certified folder, records its file and (when told) commits the
# completion event, then SIGKILLs itself before moving the folder into place
KILLED_AFTER_STAGING = """
import argparse, os, signal, sys
from pathlib import Path
from sqlalchemy import select
from oneseekd.certify.artifacts import file_digest, record_artifact
from oneseekd.certify.ledger import Ledger
from oneseekd.home import HomePaths
from oneseekd.db.engine import make_engine, write_session
from oneseekd.db.models import Run

parser = argparse.ArgumentParser()
for flag in ("--home", "--db-url", "--run-id", "--commit"):
    parser.add_argument(flag)
args = parser.parse_args()
paths = HomePaths(Path(args.home))
engine = make_engine(args.db_url)
ledger = Ledger.for_home(engine, paths)
dna = "OneSeek-7B-Zero.v1.0.abcdef"  # the certified folder is named by the DNA
staged = paths.certified / f".{dna}.tmp"
staged.mkdir(parents=True)
(staged / "oneseek_dna.json").write_text("{}")
with write_session(engine) as session:
    run = session.scalars(select(Run).where(Run.run_id == args.run_id)).one()
    final = paths.certified / dna / "oneseek_dna.json"
    digest = file_digest(staged / "oneseek_dna.json")
    record_artifact(session, ledger, paths, final, "certified", run.id, None, digest=digest)
    payload = {"dna": dna, "run_id": args.run_id}
    ledger.append(session, "dna_v2_training_completed", payload, run.id)
    if args.commit != "yes":
        os.kill(os.getpid(), signal.SIGKILL)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("committed", [True, False], ids=["committed", "not-committed"])
def test_a_trainer_killed_before_publishing_is_ended_by_what_the_ledger_holds(
    tmp_path: Path, committed: bool
) -> None:
    script = tmp_path / "killed_after_staging.py"
    script.write_text(KILLED_AFTER_STAGING)
    commit = ["--commit", "yes" if committed else "no"]
    w = World(tmp_path / "home", command=[sys.executable, str(script), *commit])
    try:
        run_id = w.submit("1.0")
        w.drive(lambda: w.finished(run_id), timeout=30)
        run = w.run(run_id)
        certified = w.config.home.certified
        assert not (certified / ".OneSeek-7B-Zero.v1.0.abcdef.tmp").exists()  # published, or gone
        current = w.config.home.models / "OneSeek-7B-Zero-CURRENT"
        if committed:
            assert (run["state"], run["outcome"], run["exit_code"]) == (
                "succeeded",
                "succeeded",
                -9,
            )
            assert (certified / run_id).readlink() == Path("OneSeek-7B-Zero.v1.0.abcdef")
            assert (certified / run_id / "oneseek_dna.json").read_text() == "{}"
            assert current.readlink() == Path("oneseek-7b-zero")
        else:
            assert (run["state"], run["outcome"], run["exit_code"]) == ("failed", "signal", -9)
            assert not (certified / run_id).exists() and not current.is_symlink()
    finally:
        w.engine.dispose()


def test_trainer_threads_reach_the_child_s_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    script = (
        "import os, sys, pathlib; home = sys.argv[sys.argv.index('--home') + 1]; "
        "pathlib.Path(home, 'threads.txt').write_text(' '.join("
        "os.environ.get(v, '-') for v in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS')))"
    )
    w = World(tmp_path / "home", command=[sys.executable, "-c", script])
    seen = []
    try:
        for threads in (0, 3):
            trainer = dataclasses.replace(w.config.trainer, threads=threads)
            config = dataclasses.replace(w.config, trainer=trainer)
            w.supervisor = Supervisor(w.engine, config, None)
            run_id = w.submit(f"1.{threads}")
            w.drive(lambda run_id=run_id: w.finished(run_id))
            seen.append((w.home / "threads.txt").read_text())
    finally:
        w.engine.dispose()
    assert seen == ["- -", "3 3"]


def test_the_supervisor_and_certify_import_no_torch_nor_the_trainer() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, oneseekd.daemon.supervisor, oneseekd.certify.publish, "
            "oneseekd.certify.promote; "
            "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules), "
            "sorted(m for m in sys.modules if m.startswith('oneseekd.trainer')))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout == "[] []\n"


# --- errors inside the supervisor: nothing is left stuck, unwatched or trained twice --------------
def _db_down(*_args: object, **_kwargs: object) -> None:
    raise OperationalError("SELECT 1", {}, Exception("could not connect to server"))


def _training(world: World, **spec: object) -> tuple[str, Child]:
    """A run whose (fake) trainer is up: its id and the supervisor's child."""
    run_id = world.submit("1.0", **spec)
    world.drive(lambda: world.started(run_id))
    child = world.supervisor.child
    assert child is not None
    return run_id, child


def _run_row(w: World, run_id: str, sql: str) -> None:
    with write_session(w.engine) as session:
        session.execute(text(sql), {"r": run_id})


def test_a_start_that_fails_after_the_claim_is_resumed_once_the_cause_is_gone(
    world: World,
) -> None:
    first, second = world.submit("1.0"), world.submit("1.1")
    world.config.home.logs.mkdir(parents=True, exist_ok=True)
    (world.config.home.logs / f"{first}.log").mkdir()  # stands in for a full or read-only disk
    with pytest.raises(IsADirectoryError):
        world.supervisor.tick()
    (world.config.home.logs / f"{first}.log").rmdir()
    world.drive(lambda: world.finished(first) and world.finished(second))
    assert [world.run(r)["state"] for r in (first, second)] == ["succeeded", "succeeded"]


def test_a_reap_cut_short_by_a_database_error_is_finished_later(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = world.submit("1.0", exit=3), world.submit("1.1")
    world.supervisor.tick()
    child = world.supervisor.child
    assert child is not None
    child.proc.wait()
    real = queue.finish
    monkeypatch.setattr(queue, "finish", _db_down)  # one transient failure
    with pytest.raises(OperationalError):
        world.supervisor.tick()
    monkeypatch.setattr(queue, "finish", real)
    world.drive(lambda: world.finished(first) and world.finished(second))
    assert (world.run(first)["state"], world.run(second)["state"]) == ("failed", "succeeded")


def test_a_database_outage_stops_the_trainer_before_its_lease_can_expire(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    from oneseekd.daemon import supervisor as module

    _run_id, child = _training(world, sleep=30)
    monkeypatch.setattr(module, "_live_states", _db_down)  # every query fails
    monkeypatch.setattr(queue, "cancel_queued_flagged", _db_down)
    monkeypatch.setattr(queue, "heartbeat", _db_down)
    child.renewed_at -= world.config.trainer.lease_seconds  # past 80 % of the lease
    with pytest.raises(OperationalError):
        world.supervisor.tick()
    assert child.proc.poll() is not None and world.supervisor.child is None


def test_a_run_given_up_while_the_database_flapped_is_resumed_by_its_own_host(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id, child = _training(world, sleep=30)
    monkeypatch.setattr(queue, "heartbeat", _db_down)
    child.renewed_at -= world.config.trainer.lease_seconds
    world.supervisor.tick()
    assert child.proc.poll() is not None  # given up, the trainer stopped
    monkeypatch.undo()
    world.drive(lambda: world.supervisor.child not in (None, child))
    assert world.supervisor.child.attempt == 2 and world.run(run_id)["attempts"] == 2


def test_a_relaunch_after_the_run_was_taken_over_starts_nothing(world: World) -> None:
    run_id = world.submit("1.0", exit=77, sleep=0.5)
    world.drive(lambda: world.started(run_id))
    child = world.supervisor.child
    assert child is not None and child.attempt == 1
    child.world_size = 2  # as for a torchrun launch
    _run_row(world, run_id, "UPDATE runs SET attempts = 2, host = 'gpu-b' WHERE run_id = :r")
    child.proc.wait()
    world.supervisor.tick()  # reaps the relaunch request of a run that is no longer its own
    assert world.supervisor.child is None
    row = world.run(run_id)
    assert (row["state"], row["attempts"], row["host"]) == ("running", 2, "gpu-b")


def test_a_certified_run_taken_over_meanwhile_is_left_to_its_new_owner(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    from oneseekd.daemon import supervisor as module

    run_id, child = _training(world, sleep=0.3)
    _run_row(world, run_id, "UPDATE runs SET attempts = 2, host = 'gpu-b' WHERE run_id = :r")
    monkeypatch.setattr(module, "certified_dna", lambda _e, _pk: "OneSeek-7B-Zero.v1.0.abcdef")
    settled: list[str] = []
    monkeypatch.setattr(Supervisor, "_settle_outputs", lambda _s, _pk, rid: settled.append(rid))
    child.proc.wait()
    world.supervisor.tick()
    assert settled == []  # another host's staged outputs are not touched
    assert (world.run(run_id)["state"], world.run(run_id)["attempts"]) == ("running", 2)


def test_a_trainer_whose_start_cannot_be_recorded_is_stopped_and_the_run_resumed(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = world.submit("1.0", sleep=30)
    real = queue.set_child
    monkeypatch.setattr(queue, "set_child", _db_down)
    with pytest.raises(OperationalError):
        world.supervisor.tick()
    monkeypatch.setattr(queue, "set_child", real)
    started = world.home / "fake" / f"started-{run_id}"
    if started.exists():  # it got far enough to say so: it must not be running now
        assert not Path(f"/proc/{int(started.read_text())}").exists()
    world.drive(lambda: world.supervisor.child is not None)
    assert world.supervisor.child.attempt == 2


def _gpu_request(world: World, monkeypatch: pytest.MonkeyPatch) -> str:
    """A run asking for 8 GPUs, accepted on an 8-GPU host, then seen from a 1-GPU one."""
    from oneseekd import gpus

    monkeypatch.setattr(gpus, "host_gpus", lambda *_a, **_k: 8)
    verdict = world.intake.take_bytes(
        json.dumps(request(version="1.0", gpus=8)).encode(), source="submit"
    )
    assert verdict.run_id is not None, verdict.problems
    monkeypatch.setattr(gpus, "host_gpus", lambda *_a, **_k: 1)
    return verdict.run_id


def test_a_run_this_host_cannot_launch_is_left_to_a_live_host_that_can(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    from oneseekd.db.models import Daemon, utcnow

    run_id = _gpu_request(world, monkeypatch)
    with write_session(world.engine) as session:
        now = utcnow()
        session.add(Daemon(host="gpu-b", pid=1, version="x", started_at=now, heartbeat_at=now))
    world.supervisor.tick()
    assert world.supervisor.child is None
    row = world.run(run_id)
    assert (row["state"], row["attempts"]) == ("queued", 0)


def test_a_run_no_live_host_can_launch_fails_with_the_reason(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = _gpu_request(world, monkeypatch)
    world.supervisor.tick()
    row = world.run(run_id)
    assert (row["state"], row["outcome"]) == ("failed", "error")
    assert "asks for 8 GPUs, but this host has 1" in str(row["error"])


def test_a_finished_run_written_back_to_queued_is_never_run_again(world: World) -> None:
    """Issue 26, 4: `UPDATE runs SET state = 'queued'` on a succeeded run, a write
    docs/database.md allows no other program, is refused when the queue would claim it:
    logged, undone from the run's own history, and no trainer or `run_started` follows."""
    from structlog.testing import capture_logs

    run_id = world.submit("1.0")
    world.drive(lambda: world.finished(run_id))
    assert world.run(run_id)["state"] == "succeeded"
    events = world.db.mappings("SELECT seq, event FROM ledger_events ORDER BY seq")
    world.db.execute("UPDATE runs SET state = 'queued' WHERE run_id = ?", run_id)
    with capture_logs() as logs:
        world.drive(lambda: world.run(run_id)["state"] != "queued")
        for _ in range(5):
            world.supervisor.tick()
    assert (world.run(run_id)["state"], world.run(run_id)["attempts"]) == ("succeeded", 1)
    assert [s["run_id"] for s in fake_starts(world.home)] == [run_id]
    assert world.db.mappings("SELECT seq, event FROM ledger_events ORDER BY seq") == events
    refused = [e for e in logs if e["event"] == "run_state_refused"]
    assert refused == [
        {
            "event": "run_state_refused",
            "log_level": "warning",
            "run_id": run_id,
            "state": "queued",
            "history": "succeeded",
            "restored": "succeeded",
            "reason": "runs.state was written by another program; only oneseekd changes it",
        }
    ]
    [(_, states)] = world.db.execute(
        "SELECT run_id, COUNT(*) FROM run_events WHERE run_id = ? GROUP BY run_id",
        world.run(run_id)["id"],
    ).fetchall()
    assert states == 3  # queued, running, succeeded: nothing added


def test_a_failed_run_written_back_to_running_is_not_resumed(world: World) -> None:
    """The same for `running`: a failed run another program marks running is not resumed at
    the next start, however many attempts it has left; its history's state is written back."""
    from structlog.testing import capture_logs

    run_id = world.submit("1.0", exit=1)
    world.drive(lambda: world.finished(run_id))
    assert world.run(run_id)["state"] == "failed"
    world.db.execute("UPDATE runs SET state = 'running' WHERE run_id = ?", run_id)
    with capture_logs() as logs:
        world.restart()
        for _ in range(5):
            world.supervisor.tick()
    assert (world.run(run_id)["state"], world.run(run_id)["attempts"]) == ("failed", 1)
    assert [s["run_id"] for s in fake_starts(world.home)] == [run_id]
    assert [(e["state"], e["restored"]) for e in logs if e["event"] == "run_state_refused"] == [
        ("running", "failed")
    ]
