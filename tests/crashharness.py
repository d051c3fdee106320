"""Crash harness: the real daemon and trainer on tiny models, SIGKILLed at seeded random points,
and the invariants a home must satisfy after any crash.

Two ways to kill:

- From outside (`CrashRun`): a seeded schedule of `KillPoint`s, each a trigger (a request
  dropped, a log event of the daemon or the trainer, a checkpoint or a certified folder being
  written) plus a delay, and a target (the daemon, the trainer child, or both at once like a
  power cut). After every daemon kill a new daemon is started at once.
- From inside (`python tests/crashharness.py --crash-at POINT ...` as `[trainer] command`): the
  trainer SIGKILLs itself (and its daemon, for `--crash-kill both`) at one exact instant that
  outside timing would hit only by luck, such as between a commit and the rename after it.

`check_invariants(home, dropped)` names every broken guarantee; an empty list means the home
is whole.

Downloads (issue 28): the daemon pulling a model from the tests' Hub (tests/hubserver.py) is
SIGKILLed mid-file from outside (the Hub holds the file's rest back) or, from inside
(`python tests/crashharness.py --download-crash-at POINT --home HOME` as the daemon), at one
of `DOWNLOAD_POINTS`: between two files, and just before and just after the rename into
base_models/. `WholeModels` watches the home all the while; `check_download_killed` and
`check_download_done` name what a kill or its restart broke.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon import DaemonProcess, cmdlines, run_until_idle
from homes import drop as drop  # test_crash and test_promote import it from here

HARNESS = Path(__file__).resolve()
DATASET = "crash.jsonl"
MODELS = {"Tiny-Llama": "llama", "Tiny-Qwen": "qwen2"}
CERTIFIED_FILES = frozenset(
    {
        "oneseek_dna.json",
        "training_results.json",
        "live_metrics.json",
        "loss_curve.png",
        "ledger_proof.json",
        "samples.json",
    }
)
VIEWS = frozenset({"metadata.json", "OneSeek-7B-Zero-CURRENT", "OneSeek-7B-Zero-CURRENT.txt"})
CURRENT = "OneSeek-7B-Zero-CURRENT"
DNA_PREFIX = "OneSeek-7B-Zero.v"
VERDICT_EVENTS = ("request_accepted", "request_rejected", "request_duplicate")
COMPLETED_EVENT = "dna_v2_training_completed"
# How a run may fail when the only faults are SIGKILLs: its trainer was killed ("signal"),
# or it was interrupted more than trainer.max_attempts times ("lost").
KILL_OUTCOMES = frozenset({"signal", "lost"})


# --- homes and requests ------------------------------------------------------------------------
def crash_home(
    root: Path,
    cache: Path,
    *,
    max_attempts: int = 25,
    trainer_command: list[str] | None = None,
) -> Path:
    """A tiny-model home with a small dataset, configured so that crashes are resumed rather
    than given up (trainer.max_attempts raised)."""
    from trainhomes import civic_dataset, tiny_home  # torch and the trainer: not for downloads

    home = tiny_home(root, cache, MODELS)
    civic_dataset(home / "datasets" / DATASET, n=16)
    (home / "requests").mkdir(exist_ok=True)
    trainer = f"heartbeat_seconds = 0.2\nstop_grace_seconds = 10\nmax_attempts = {max_attempts}\n"
    if trainer_command:
        trainer += f"command = {json.dumps(trainer_command)}\n"
    (home / "oneseekd.toml").write_text(
        "[catalog]\nsettle_seconds = 0\nrescan_interval_seconds = 3600\n"
        f"[intake]\nsettle_seconds = 0\n[trainer]\n{trainer}"
        # runs with other seeds split the data otherwise: the current model may have trained
        # on a later run's held-out records, and the gate would hold that run back
        "[certify]\ncompare_with_current = false\n"
        # 16 records hold out 4: too few for a verdict by default, and these runs must be
        # made current (crashes while CURRENT moves are among the points killed at)
        "min_held_out_records = 2\nmin_held_out_bytes = 1\n"
    )
    return home


def small_request(seed: int, models: list[str] | None = None) -> dict[str, Any]:
    """A request that trains in seconds and checkpoints after every step."""
    return {
        "base_models": models or ["tiny-llama"],
        "dataset": DATASET,
        "epochs": 2,
        "batch_size": 4,
        "learning_rate": 5e-3,
        "max_seq_len": 48,
        "val_fraction": 0.25,
        "checkpoint_every": 1,
        "seed": seed,
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
    }


# --- processes ---------------------------------------------------------------------------------
def trainer_pids(home: Path) -> list[int]:
    """Live trainer processes of this home, orphans included (zombies have no cmdline). The
    home must be one whole argument, so that another test's home is never taken for it."""
    homes = {str(home).encode(), str(home.resolve()).encode()}
    return [
        pid
        for pid, cmdline in cmdlines().items()
        if (b"oneseekd.trainer" in cmdline or HARNESS.name.encode() in cmdline)
        and homes & set(cmdline.split(b"\0"))
    ]


def sigkill(pid: int) -> bool:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


def _query(home: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(home / "oneseek.db", timeout=30)
    try:
        return con.execute(sql, args).fetchall()
    except sqlite3.OperationalError:
        return []  # not migrated yet: the first daemon is still starting
    finally:
        con.close()


# --- the invariants ----------------------------------------------------------------------------
def check_invariants(home: Path, dropped: list[str] | None = None) -> list[str]:
    """What a home keeps through any crash (issue 6); returns what is broken (empty: none).

    Every request has exactly one verdict, every run ended `succeeded` or `failed` with a
    reason (`succeeded` when the ledger certifies it), no certified folder is partial, no
    artifact differs from its recorded sha256, every visible output is a recorded artifact,
    `PRAGMA integrity_check` is ok, `oneseekctl ledger verify` passes, and no trainer is left
    running. `dropped` names the files dropped into requests/ (unique names), when known."""
    db = home / "oneseek.db"
    if not db.is_file():
        return [f"{db} does not exist"]
    con = sqlite3.connect(db, timeout=30)
    try:
        problems = _check_database(con)
        if not any(p.startswith("PRAGMA integrity_check") for p in problems):
            problems += _check_requests(home, con, dropped)
            problems += _check_runs(con)
            problems += _check_certified(home, con)
            problems += _check_artifacts(home, con)
            problems += _check_outputs(home, con)
    except sqlite3.DatabaseError as exc:
        problems = [f"the database cannot be read: {exc}"]
    finally:
        con.close()
    problems += _check_ledger_verify(home)
    alive = trainer_pids(home)
    if alive:
        problems.append(f"trainer processes still running after the daemon went idle: {alive}")
    return problems


def check_outputs(home: Path) -> list[str]:
    """Every rejected request has its .error.json.

    Kept apart from check_invariants because the package breaks it today when the daemon is
    killed between moving a rejected file and writing its .error.json (see
    test_a_sigkill_before_the_error_file_still_explains_the_rejection, a strict xfail in
    test_crash.py); fold it in once that passes."""
    problems = []
    rejected = home / "requests" / "rejected"
    for name in _verdict_files(rejected):
        if not (rejected / f"{name.removesuffix('.json')}.error.json").is_file():
            problems.append(f"rejected request {name} has no .error.json saying why")
    return problems


def _check_outputs(home: Path, con: sqlite3.Connection) -> list[str]:
    """What is visible agrees with the ledger: a run the ledger certifies did not end failed,
    and every output under lora_adapters/, weights/ and oneseek-certified/ (dot-names, the
    staging places, aside) is a recorded artifact; <key>-adapter names a recorded folder."""
    recorded = {path for (path,) in con.execute("SELECT path FROM artifacts")}
    states = dict(con.execute("SELECT id, state FROM runs"))
    names = dict(con.execute("SELECT id, run_id FROM runs"))
    certified = [
        pk
        for (pk,) in con.execute(
            "SELECT run_id FROM ledger_events WHERE event = ?", (COMPLETED_EVENT,)
        )
    ]
    problems = [
        f"run {names[pk]} ended {states[pk]} although the ledger certifies it ({COMPLETED_EVENT})"
        for pk in certified
        if states.get(pk) != "succeeded"
    ]
    zero = home / "models" / "oneseek-7b-zero"
    for folder in (zero / "lora_adapters", zero / "weights", home / "models" / "oneseek-certified"):
        for path in _visible_files(folder):
            rel = path.relative_to(home).as_posix()
            if path.parent == home / "models" / "oneseek-certified" and path.is_symlink():
                continue  # <run_id> and CURRENT: _check_certified judges them
            if path.is_symlink():  # <key>-adapter: must name a recorded adapter folder
                target = path.resolve()
                if not any(
                    r.startswith(target.relative_to(home).as_posix() + "/") for r in recorded
                ):
                    problems.append(f"{rel} points at {target.name}, which no artifact records")
            elif rel not in recorded and path.name not in VIEWS | {"ledger_proof.json"}:
                problems.append(f"{rel} is visible but no artifact records it")
    return problems


def _visible_files(folder: Path) -> list[Path]:
    """Files and links under folder, less anything inside a dot-named (staging) entry."""
    if not folder.is_dir():
        return []
    out = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_symlink() or entry.is_file():
            out.append(entry)
        elif entry.is_dir():
            out += [p for p in sorted(entry.rglob("*")) if p.is_file()]
    return out


def _check_database(con: sqlite3.Connection) -> list[str]:
    result = [row[0] for row in con.execute("PRAGMA integrity_check")]
    problems = [] if result == ["ok"] else [f"PRAGMA integrity_check: {result[:5]}"]
    broken = con.execute("PRAGMA foreign_key_check").fetchall()
    if broken:
        problems.append(f"PRAGMA foreign_key_check: {broken[:5]}")
    return problems


def _verdict_files(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(
        p.name
        for p in folder.iterdir()
        if p.name.endswith(".json")
        and not p.name.endswith(".error.json")
        and not p.name.startswith(".")
    )


def _check_requests(home: Path, con: sqlite3.Connection, dropped: list[str] | None) -> list[str]:
    problems = []
    requests = home / "requests"
    left = _verdict_files(requests)
    if left:
        problems.append(f"requests without a verdict, still in requests/: {left}")
    claimed = requests / ".claimed"
    if claimed.is_dir() and any(claimed.iterdir()):
        problems.append(f"claimed requests never finished: {sorted(os.listdir(claimed))}")
    accepted = _verdict_files(requests / "accepted")
    rejected = _verdict_files(requests / "rejected")
    for name in sorted(set(accepted) & set(rejected)):
        problems.append(f"request {name} is both accepted and rejected")
    files = {**{n: "accepted" for n in accepted}, **{n: "rejected" for n in rejected}}
    if dropped is not None:
        for name in dropped:
            if name not in files:
                problems.append(f"dropped request {name} is in neither accepted/ nor rejected/")
        extra = sorted(set(files) - set(dropped))
        if extra:
            problems.append(f"verdict files for requests never dropped (moved twice?): {extra}")
    rows = con.execute(
        "SELECT id, source_name, status, run_id FROM training_requests WHERE source = 'file'"
    ).fetchall()
    by_name: dict[str, list[tuple[int, str, int | None]]] = {}
    for pk, name, status, run_pk in rows:
        by_name.setdefault(name, []).append((pk, status, run_pk))
    for name, decided in sorted(by_name.items()):
        if len(decided) != 1:
            problems.append(f"request {name} has {len(decided)} training_requests rows")
        for pk, status, run_pk in decided:
            folder = files.get(name)
            expect = "accepted" if status == "queued" else "rejected"
            if status == "pending":
                problems.append(f"request {name} (#{pk}) is still pending")
            elif status == "queued" and run_pk is None:
                problems.append(f"request {name} (#{pk}) is queued but has no run")
            elif folder is not None and folder != expect:
                problems.append(f"request {name} is {status} in the database but in {folder}/")
    for name in sorted(set(files) | set(dropped or [])):
        if name not in by_name:
            problems.append(f"request {name} has no training_requests row")
    verdicts: dict[int, int] = {}
    for (payload,) in con.execute(
        "SELECT payload FROM ledger_events WHERE event IN (?, ?, ?)", VERDICT_EVENTS
    ):
        request = json.loads(payload)["request"]
        verdicts[request] = verdicts.get(request, 0) + 1
    for (pk,) in con.execute("SELECT id FROM training_requests WHERE status != 'pending'"):
        if verdicts.get(pk, 0) != 1:
            problems.append(f"request #{pk} has {verdicts.get(pk, 0)} verdict events in the ledger")
    return problems


def _check_runs(con: sqlite3.Connection) -> list[str]:
    problems = []
    ended: dict[int, list[str]] = {}
    for run_pk, event in con.execute(
        "SELECT run_id, event FROM ledger_events WHERE run_id IS NOT NULL ORDER BY seq"
    ):
        ended.setdefault(run_pk, []).append(event)
    for pk, run_id, state, outcome, error in con.execute(
        "SELECT id, run_id, state, outcome, error FROM runs ORDER BY id"
    ):
        events = ended.get(pk, [])
        if state not in ("succeeded", "failed"):
            problems.append(f"run {run_id} ended {state}, not succeeded or failed")
        elif state == "failed":
            if not (error or "").strip() or not outcome:
                problems.append(f"run {run_id} failed without a reason")
            if "run_failed" not in events:
                problems.append(f"run {run_id} failed but the ledger has no run_failed event")
        elif events.count(COMPLETED_EVENT) != 1:
            problems.append(
                f"run {run_id} succeeded with {events.count(COMPLETED_EVENT)} "
                f"{COMPLETED_EVENT} events"
            )
    return problems


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _check_certified(home: Path, con: sqlite3.Connection) -> list[str]:
    """The certified layout: each folder named by a DNA is whole (its files, metadata.json,
    its adapter and base model links resolving) and belongs to a succeeded run; each run link
    and CURRENT name such a folder (never dangling); a succeeded run has its run link; a live
    folder is left by no ended run."""
    problems = []
    root = home / "models" / "oneseek-certified"
    entries = (
        {p.name: p for p in root.iterdir() if not p.name.startswith(".")} if root.is_dir() else {}
    )
    states = dict(con.execute("SELECT run_id, state FROM runs"))
    recorded = {
        path for (path,) in con.execute("SELECT path FROM artifacts WHERE kind = 'certified'")
    }
    dnas = {}
    for (payload,) in con.execute(
        "SELECT payload FROM ledger_events WHERE event = ?", (COMPLETED_EVENT,)
    ):
        data = json.loads(payload)
        dnas[data["dna"]] = data["run_id"]
    for name, entry in sorted(entries.items()):
        if name == f"{CURRENT}.txt":
            target = Path(entry.read_text().strip())
            if target.parent.resolve() != root.resolve() or target.name not in dnas:
                problems.append(f"{name} names {target}, which is not a certified folder")
        elif entry.is_symlink():
            target = entry.resolve()
            if not target.is_dir() or target.parent != root.resolve():
                problems.append(f"{name} is a dangling link (to {os.readlink(entry)})")
            elif target.name not in dnas:
                problems.append(f"{name} points at {target.name}, which the ledger never certified")
            elif name != CURRENT and dnas[target.name] != name:
                problems.append(f"{name} points at the certified folder of {dnas[target.name]}")
        elif name.startswith(DNA_PREFIX):
            problems += _check_dna_folder(home, entry, recorded)
            if name not in dnas:
                problems.append(f"certified folder {name} is not certified by the ledger")
            elif dnas[name] not in states:
                problems.append(f"certified folder {name} belongs to no run")
        elif name in states and states[name] not in ("succeeded", "failed", "cancelled"):
            continue  # the live folder of a run still going
        else:
            problems.append(f"{name} in oneseek-certified/ is neither certified nor live")
    for run_id, state in sorted(states.items()):
        if state == "succeeded" and not (root / run_id).is_symlink():
            problems.append(f"run {run_id} succeeded but has no certified folder")
    return problems


def _check_dna_folder(home: Path, folder: Path, recorded: set[str]) -> list[str]:
    name = folder.name
    problems = []
    files = {p.name for p in folder.iterdir() if p.is_file() and not p.is_symlink()}
    expected = CERTIFIED_FILES | {"metadata.json"}
    if files != expected:
        problems.append(
            f"certified folder {name} is partial: missing {sorted(expected - files)}, "
            f"unexpected {sorted(files - expected)}"
        )
    for file in sorted(files & CERTIFIED_FILES - {"ledger_proof.json"}):  # verify checks it
        if f"models/oneseek-certified/{name}/{file}" not in recorded:
            problems.append(f"certified file {name}/{file} is not a recorded artifact")
    links = [p for p in folder.iterdir() if p.is_symlink()]
    links += (
        [p for p in (folder / "base_models").iterdir()] if (folder / "base_models").is_dir() else []
    )
    if len(links) != 2:
        problems.append(
            f"certified folder {name} links {len(links)} folders, not its adapter and base"
        )
    for link in links:
        if not link.is_symlink() or not link.resolve().is_dir() or os.path.isabs(os.readlink(link)):
            problems.append(f"{name}/{link.relative_to(folder)} is not a relative link to a folder")
    return problems


def _check_artifacts(home: Path, con: sqlite3.Connection) -> list[str]:
    problems = []
    for path, sha, size in con.execute("SELECT path, sha256, bytes FROM artifacts ORDER BY id"):
        full = home / path
        if not full.is_file():
            problems.append(f"artifact {path} is missing")
        elif _sha256(full) != sha:
            problems.append(f"artifact {path} differs from its recorded sha256")
        elif full.stat().st_size != size:
            problems.append(f"artifact {path} differs from its recorded size")
    return problems


def _check_ledger_verify(home: Path) -> list[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONESEEK_")}
    done = subprocess.run(
        [sys.executable, "-m", "oneseekd.cli", "--home", str(home), "ledger", "verify"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    if done.returncode != 0:
        return [f"oneseekctl ledger verify exits {done.returncode}: {done.stdout}{done.stderr}"]
    return []


def unexpected_failures(home: Path) -> list[str]:
    """Runs that failed for a reason other than a SIGKILL: a crash cost more than its attempt."""
    rows = _query(home, "SELECT run_id, outcome, error FROM runs WHERE state = 'failed'")
    return [
        f"run {run_id} failed with outcome {outcome}: {(error or '').splitlines()[:1]}"
        for run_id, outcome, error in rows
        if outcome not in KILL_OUTCOMES
    ]


# --- a seeded schedule of kills ----------------------------------------------------------------
@dataclass(frozen=True)
class KillPoint:
    phase: str  # intake | training | checkpointing | certification
    trigger: str  # what is waited for: FILE_TRIGGERS, a trainer log event, or an intake step
    target: str  # daemon | trainer | both
    delay: float  # seconds between the trigger and the kill

    def __str__(self) -> str:
        return f"{self.phase}/{self.trigger}+{self.delay:.2f}s -> {self.target}"


# triggers that are files appearing (globs under the home); the others are trainer log events
FILE_TRIGGERS = {
    "checkpoint": [
        "checkpoints/*/*/.step-*.tmp",  # being written
        "checkpoints/*/*/step-*",
        "checkpoints/*/*/latest",  # replaced: a new inode
    ],
    "certified_staged": ["models/oneseek-certified/.*.tmp"],
}
PHASES: dict[str, list[tuple[str, float]]] = {
    # trigger, longest random delay after it
    "intake": [("dropped", 0.4), ("decided", 0.0)],
    "training": [("model_training", 2.0), ("epoch_finished", 0.6)],
    "checkpointing": [("checkpoint", 0.0)],
    "certification": [("model_trained", 0.8), ("certified_staged", 0.0)],
}


def schedule(seed: int, n: int) -> list[KillPoint]:
    """n kill points; points 1-4, 5-8, ... each cover every phase."""
    rng = random.Random(seed)
    phases: list[str] = []
    while len(phases) < n:
        block = list(PHASES)
        rng.shuffle(block)
        phases += block
    points = []
    for phase in phases[:n]:
        trigger, longest = rng.choice(PHASES[phase])
        target = (
            "daemon"
            if phase == "intake"
            else rng.choices(["daemon", "trainer", "both"], weights=[2, 1, 1])[0]
        )
        points.append(KillPoint(phase, trigger, target, round(rng.uniform(0, longest), 3)))
    return points


@dataclass
class CrashRun:
    """One home, one daemon at a time, kills as scheduled; `finish` lets everything end."""

    home: Path
    seed: int
    dropped: list[str] = field(default_factory=list)
    journal: list[str] = field(default_factory=list)
    daemon: DaemonProcess | None = None
    starts: int = 0
    refills: int = 0
    trigger_timeout: float = 120.0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed * 7919 + 1)
        self._offsets: dict[Path, int] = {}
        self._seen: dict[str, set[tuple[str, int, int]]] = {}

    # the daemon
    def start(self) -> None:
        log = self.home / "daemon-test.log"
        if log.exists():
            log.rename(self.home / f"daemon-test.{self.starts}.log")
        self.starts += 1
        self.daemon = DaemonProcess(self.home)

    def _check_daemon(self) -> None:
        assert self.daemon is not None
        code = self.daemon.proc.poll()
        if code is not None:
            raise AssertionError(
                f"the daemon exited {code} by itself:\n{self.daemon.log_path.read_text()[-3000:]}"
                + self.story()
            )

    # requests
    def drop_request(self, kind: str = "valid") -> str:
        n = len(self.dropped)
        name = f"req-{n:03d}.json"
        models = self.rng.choice([["tiny-llama"], ["tiny-qwen"], ["tiny-llama", "tiny-qwen"]])
        if kind == "valid":
            body = small_request(self.seed * 1000 + n, models)
        elif kind == "duplicate":  # an accepted request again: a duplicate unless its run failed
            accepted = sorted((self.home / "requests" / "accepted").glob("*.json"))
            body = json.loads(accepted[0].read_text()) if accepted else small_request(n, models)
        else:
            body = small_request(self.seed * 1000 + n, ["no-such-model"])
        drop(self.home, name, body)
        self.dropped.append(name)
        return name

    def _active(self) -> bool:
        rows = _query(self.home, "SELECT count(*) FROM runs WHERE state IN ('queued', 'running')")
        return bool(rows and rows[0][0])

    def ensure_work(self) -> None:
        """A valid request when nothing is queued or running and none is waiting for intake."""
        waiting = any((self.home / "requests").glob("*.json"))
        if self._active() or waiting:
            return
        self.refills += 1
        if self.refills > 3 * max(len(self.journal), 1) + 10:
            raise AssertionError(
                f"the daemon trains none of {self.refills} valid requests" + self.story()
            )
        self.drop_request()

    # triggers: each fires only on what appeared after _mark(), never on what a killed
    # attempt left behind
    def _mark(self) -> None:
        for path in (self.home / "logs").glob("run-*.log"):
            self._offsets[path] = path.stat().st_size
        self._seen = {trigger: self._entries(trigger) for trigger in FILE_TRIGGERS}

    def _entries(self, trigger: str) -> set[tuple[str, int, int]]:
        out = set()
        for pattern in FILE_TRIGGERS[trigger]:
            for path in self._glob(pattern):
                try:
                    st = path.stat()
                except OSError:
                    continue  # renamed or removed meanwhile
                out.add((str(path), st.st_ino, st.st_mtime_ns))
        return out

    def _glob(self, pattern: str) -> list[Path]:
        """The matches of a pattern under the home; the trainer removes checkpoint folders
        while they are listed (pathlib's glob then raises), so a vanished folder means a
        fresh look."""
        for _ in range(20):
            try:
                return list(self.home.glob(pattern))
            except FileNotFoundError:
                continue
        return []

    def _trainer_events(self) -> list[str]:
        events = []
        for path in (self.home / "logs").glob("run-*.log"):
            start = self._offsets.get(path, 0)
            with path.open("rb") as fh:
                fh.seek(start)
                chunk = fh.read()
            for line in chunk.decode("utf-8", "replace").splitlines():
                if line.startswith("{"):
                    try:
                        events.append(str(json.loads(line).get("event")))
                    except json.JSONDecodeError:
                        continue
        return events

    def _fired(self, trigger: str) -> bool:
        if trigger in FILE_TRIGGERS:
            return bool(self._entries(trigger) - self._seen[trigger])
        return trigger in self._trainer_events()

    def _wait_decided(self, name: str) -> None:
        assert self.daemon is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            self._check_daemon()
            if any(
                e.get("event") in VERDICT_EVENTS and e.get("name") == name
                for e in self.daemon.events()
            ):
                return
            time.sleep(0.005)
        raise AssertionError(f"no verdict for {name} within 30s" + self.story())

    # kills
    def hit(self, point: KillPoint, tries: int = 5) -> None:
        """Wait for the point's trigger, then kill; again while nothing was there to kill."""
        for _ in range(tries):
            if point.phase == "intake":
                kind = self.rng.choices(["valid", "invalid", "duplicate"], weights=[4, 1, 1])[0]
                name = self.drop_request(kind)
                if point.trigger == "decided":
                    self._wait_decided(name)
                time.sleep(point.delay)
                what = f"{kind} {name}"
            else:
                self._wait_trigger(point)
                what = ""
            if self.kill(point, what):
                return
        raise AssertionError(f"{point}: nothing to kill in {tries} tries" + self.story())

    def _wait_trigger(self, point: KillPoint) -> None:
        self.ensure_work()
        self._mark()
        deadline = time.monotonic() + self.trigger_timeout
        last_look = time.monotonic()
        while not self._fired(point.trigger):
            now = time.monotonic()
            if now > deadline:
                raise AssertionError(f"{point}: the trigger never came" + self.story())
            if now - last_look > 0.5:  # the run ended before the trigger: give it more work
                last_look = now
                self._check_daemon()
                self.ensure_work()
            time.sleep(0.005)
        time.sleep(point.delay)

    def kill(self, point: KillPoint, what: str) -> bool:
        """SIGKILL the target; for `both`, the trainer and then the daemon back to back, so
        neither sees the other die (a power cut). False when there was no trainer to kill."""
        assert self.daemon is not None
        running = _query(self.home, "SELECT run_id, pid FROM runs WHERE state = 'running'")
        victims: list[tuple[str, int]] = []
        if point.target in ("trainer", "both"):
            recorded = {pid for _, pid in running if pid}
            alive = trainer_pids(self.home)
            # the daemon's own child first; else whatever trainer of this home is alive
            chosen = [p for p in alive if p in recorded] or alive
            victims += [
                ("trainer", pid) for pid in chosen[: 1 if point.target == "trainer" else None]
            ]
        if point.target in ("daemon", "both"):
            victims.append(("daemon", self.daemon.proc.pid))
        killed = [f"{who} {pid}" for who, pid in victims if sigkill(pid)]
        if point.target in ("daemon", "both"):
            self.daemon.kill()  # reaps it
        self.journal.append(
            f"{len(self.journal)}: {point} {what} [running: {running}] killed {killed}"
        )
        if point.target in ("daemon", "both"):
            self.start()
        return any(k.startswith("trainer") for k in killed) or point.target == "daemon"

    def run(self, points: list[KillPoint]) -> None:
        self.start()
        for point in points:
            self.hit(point)

    def finish(self, timeout: float = 400) -> subprocess.CompletedProcess[str]:
        """Kill the last daemon too, drop one more request, and run until idle: every run
        resumes or ends, and the daemon still trains what comes after the crashes."""
        if self.daemon is not None:
            self.daemon.kill()
        self.drop_request()
        done = run_until_idle(self.home, timeout=timeout)
        # an orphan that got SIGTERM when its daemon died may be finishing its step
        deadline = time.monotonic() + 10
        while trainer_pids(self.home) and time.monotonic() < deadline:
            time.sleep(0.1)
        return done

    def cleanup(self) -> None:
        if self.daemon is not None:
            self.daemon.kill()
        for pid in trainer_pids(self.home):
            sigkill(pid)

    def story(self) -> str:
        return f"\nseed {self.seed}, kills so far:\n" + "\n".join(self.journal)


# --- crashing from inside the trainer ----------------------------------------------------------
CRASH_POINTS = {
    "checkpoint_staged": "a checkpoint folder written under its .tmp name, not yet renamed",
    "checkpoint_named": "a checkpoint folder renamed into place, `latest` not yet updated",
    "checkpoint_lost": "the checkpoint folder `latest` names lost (as a crash between removing "
    "it and renaming its rewrite left it), an older one kept",
    "outputs_unrecorded": "a model's adapter and .pth staged, not yet recorded",
    "model_committed": "a model's outputs committed and published, its checkpoints not yet removed",
    "certify_staged": "the metadata JSON and the certified folder staged, nothing committed",
    "certify_committed": "the completion event committed, metadata and certified folder staged",
    "published": "the certified outputs renamed into place, the trainer not yet exited",
    "certified_named": "the certified folder renamed into place, <run_id> still the live folder",
    "run_linked": "<run_id> linked to the certified folder, CURRENT not yet moved",
    "current_linked": "CURRENT re-pointed, its .txt and the weights JSONs not yet",
    "current_settled": "CURRENT, its .txt and the weights JSONs moved, the intent note not removed",
}
# `oneseekctl promote` killed at each of its steps (python crashharness.py --promote-crash-at)
PROMOTE_POINTS = {
    "promote_noted": "the promotion event appended and its intent note written, not committed",
    "run_linked": "the promotion committed, nothing moved yet",
    "current_linked": CRASH_POINTS["current_linked"],
    "current_settled": CRASH_POINTS["current_settled"],
}


def promote_command(point: str) -> list[str]:
    """An argv that runs `oneseekctl` and SIGKILLs it at `point` of a promotion."""
    assert point in PROMOTE_POINTS
    return [sys.executable, str(HARNESS), "--promote-crash-at", point]


# Points that must never be reached: the trainer is brought to the brink and SIGKILLed only if
# it goes over it.
GUARD_POINTS = {
    "checkpoint_resaved": "a stop that lands on a checkpoint step: the trainer is killed if it "
    "removes the whole checkpoint folder `latest` names to write the same position again",
}


def crash_command(point: str, kill: str, attempt: int = 1) -> list[str]:
    """A `[trainer] command` that runs the real trainer and SIGKILLs it at `point` in attempt
    `attempt` (kill = "self": the trainer only; "both": its daemon first, then itself)."""
    assert point in {**CRASH_POINTS, **GUARD_POINTS} and kill in ("self", "both")
    return [
        sys.executable,
        str(HARNESS),
        "--crash-at",
        point,
        "--crash-kill",
        kill,
        "--crash-attempt",
        str(attempt),
    ]


def _install_crash(point: str, kill: str) -> None:
    import oneseekd.certify.certified as certified
    import oneseekd.certify.publish as published
    import oneseekd.trainer.outputs as outputs
    import oneseekd.trainer.run as run
    from oneseekd.trainer.checkpoint import Checkpoints

    def die() -> None:
        print(f"crashharness: SIGKILL at {point} ({kill})", file=sys.stderr, flush=True)
        if kill == "both":
            os.kill(os.getppid(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)

    if _install_pointer_crash(point, die):
        return

    def nth(count: int, test: Callable[..., bool]) -> Callable[..., bool]:
        seen = [0]

        def hit(*args: Any) -> bool:
            if test(*args):
                seen[0] += 1
                return seen[0] == count
            return False

        return hit

    def crash_moving(name: str, hit: Callable[..., bool]) -> None:
        """os.<name> (rename or replace) dies at the move `hit` says yes to."""
        move = getattr(os, name)

        def crash_move(src: Any, dst: Any, *a: Any, **k: Any) -> None:
            if hit(src, dst):
                die()
            move(src, dst, *a, **k)

        setattr(os, name, crash_move)

    if point == "checkpoint_staged":
        crash_moving("rename", nth(2, lambda src, dst: Path(src).name.startswith(".step-")))
    elif point == "checkpoint_named":
        crash_moving("replace", nth(2, lambda src, dst: Path(dst).name == "latest"))
    elif point == "checkpoint_lost":
        save, saves = Checkpoints.save, [0]

        def lose_latest(self: Checkpoints, *a: Any, **k: Any) -> Path:
            final = save(self, *a, **k)
            saves[0] += 1
            if saves[0] == 2:
                shutil.rmtree(final)
                die()
            return final

        Checkpoints.save = lose_latest  # type: ignore[method-assign]
    elif point == "checkpoint_resaved":
        save, saves, rmtree = Checkpoints.save, [0], shutil.rmtree

        def stop_after(self: Checkpoints, *a: Any, **k: Any) -> Path:
            final = save(self, *a, **k)
            saves[0] += 1
            if saves[0] == 2:  # checkpoint_every = 1: the stop lands on a checkpoint step
                os.kill(os.getpid(), signal.SIGTERM)
            return final

        def guard(path: Any, *a: Any, **k: Any) -> None:
            folder = Path(path)
            named = folder.parent / "latest"
            if (
                folder.name.startswith("step-")
                and (folder / "state.json").is_file()
                and named.is_file()
                and named.read_text().strip() == folder.name
            ):
                die()
            rmtree(path, *a, **k)

        Checkpoints.save = stop_after  # type: ignore[method-assign]
        shutil.rmtree = guard  # type: ignore[assignment]
    elif point == "outputs_unrecorded":
        original = outputs.record_artifact

        def crash_record(*a: Any, **k: Any) -> Any:
            die()
            return original(*a, **k)

        outputs.record_artifact = crash_record
    elif point == "model_committed":
        remove = Checkpoints.remove

        def crash_remove(self: Checkpoints) -> None:
            die()
            remove(self)

        Checkpoints.remove = crash_remove  # type: ignore[method-assign]
    elif point == "certify_staged":
        proof = certified.ledger_proof

        def crash_proof(*a: Any) -> Any:
            die()
            return proof(*a)

        certified.ledger_proof = crash_proof
    else:
        publish = run.publish

        # train_run publishes after every model too: only the publish of a certified run counts
        def crash_publish(engine: Any, paths: Any, run_pk: int) -> None:
            certified = published.certified_dna(engine, run_pk) is not None
            if certified and point == "certify_committed":
                die()
            publish(engine, paths, run_pk)
            if certified:
                die()

        run.publish = crash_publish


def _install_pointer_crash(point: str, die: Callable[[], None]) -> bool:
    """The steps after a certification's or a promotion's commit (certify/publish.py,
    certify/current.py); False for any other point."""
    import oneseekd.certify.current as current
    import oneseekd.certify.publish as published

    if point == "certified_named":
        link = published.replace_link

        def crash_link(path: Path, target: str) -> None:
            if path.parent.name == "oneseek-certified" and target.startswith(DNA_PREFIX):
                die()
            link(path, target)

        published.replace_link = crash_link
    elif point == "run_linked":  # the settle that finds a note: the pointer moves next
        settle = current.settle

        def crash_settle(engine: Any, paths: Any) -> Any:
            if current.note_path(paths).exists():
                die()
            return settle(engine, paths)

        current.settle = crash_settle
    elif point == "current_linked":
        replace = current.replace_link

        def crash_replace(path: Path, target: str) -> None:
            replace(path, target)
            if path.name == CURRENT:
                die()

        current.replace_link = crash_replace
    elif point == "current_settled":
        current._clear_note = lambda paths: die()
    elif point == "promote_noted":
        write = current._write_note

        def crash_note(paths: Any, note: Any) -> None:
            write(paths, note)
            die()

        current._write_note = crash_note
    else:
        return False
    return True


def promote_pause_command(folder: Path) -> list[str]:
    """An argv that runs `oneseekctl` with two marks in `folder` (see `_install_pointer_pause`)."""
    return [sys.executable, str(HARNESS), "--promote-pause", str(folder)]


def _install_pointer_pause(folder: Path) -> None:
    """`settle` marks `settling` before and `settled` after it ran; a pointer move, once its
    intent note is written and before its transaction commits, marks `noted` and waits for
    `release` (a minute at most): the instant another process's settle must not judge it."""
    import oneseekd.certify.current as current

    write, settle = current._write_note, current.settle

    def pause_after_note(paths: Any, note: Any) -> None:
        write(paths, note)
        (folder / "noted").write_text(str(os.getpid()))
        deadline = time.monotonic() + 60
        while not (folder / "release").exists() and time.monotonic() < deadline:
            time.sleep(0.01)

    def marked_settle(engine: Any, paths: Any) -> Any:
        (folder / "settling").write_text(str(os.getpid()))
        try:
            return settle(engine, paths)
        finally:
            (folder / "settled").write_text(str(os.getpid()))

    current._write_note = pause_after_note
    current.settle = marked_settle


# --- downloads: the daemon killed while it pulls a model from the Hub ----------------------------
DOWNLOAD_REPO = "tiny-org/Tiny-Llama"
DOWNLOAD_FOLDER = "Tiny-Llama"  # the repository's name: the folder a pull installs into
WEIGHTS = "model.safetensors"
DOWNLOAD_POINTS = {
    "mid_file": "the weights partly arrived, the Hub holding the rest back (killed from outside)",
    "file_placed": "the weights checked and moved out of .parts/, their check not yet recorded",
    "file_recorded": "the weights' check recorded, the next file not yet asked for",
    "installing": "every file checked, the staging folder not yet renamed into base_models/",
    "installed": "the staging folder renamed into base_models/, its row not yet succeeded",
}
PULL_MANIFEST = ".oneseek-pull.json"


def download_home(root: Path) -> Path:
    """A home with no model yet; the catalog takes a folder in at once (no settle wait)."""
    (root / "models" / "oneseek-7b-zero" / "base_models").mkdir(parents=True)
    (root / "oneseekd.toml").write_text(
        "[catalog]\nsettle_seconds = 0\nrescan_interval_seconds = 3600\n"
        "[intake]\nsettle_seconds = 0\n"
    )
    return root


def download_command(point: str) -> list[str]:
    """The daemon's argv (before `--home HOME`), SIGKILLing itself at `point` of a download."""
    assert point in DOWNLOAD_POINTS and point != "mid_file"
    return [sys.executable, str(HARNESS), "--download-crash-at", point]


def insert_download(home: Path, repository: str = DOWNLOAD_REPO) -> int:
    """The admin panel's door: one INSERT into model_downloads."""
    con = sqlite3.connect(home / "oneseek.db", timeout=30)
    try:
        with con:
            cur = con.execute("INSERT INTO model_downloads (repository) VALUES (?)", (repository,))
    finally:
        con.close()
    assert cur.lastrowid is not None
    return cur.lastrowid


def _install_download_crash(point: str) -> None:
    import oneseekd.hub.fetch as fetch

    def die() -> None:
        print(f"crashharness: SIGKILL at {point}", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    if point == "file_placed":  # fetch(): os.replace(.parts/<name>.part, <name>)
        replace = os.replace

        def crash_replace(src: Any, dst: Any, *a: Any, **k: Any) -> None:
            replace(src, dst, *a, **k)
            if Path(src).parent.name == fetch.PARTS and Path(dst).name == WEIGHTS:
                die()

        os.replace = crash_replace  # type: ignore[assignment]
    elif point == "file_recorded":  # fetch(): _write_json(.oneseek-checked.json, checked)
        write = fetch._write_json

        def crash_write(path: Path, data: Any) -> None:
            write(path, data)
            if path.name == fetch.CHECKED and WEIGHTS in data:
                die()

        fetch._write_json = crash_write
    else:  # install(): os.rename(staging, base_models/<folder>)
        rename = os.rename

        def crash_rename(src: Any, dst: Any, *a: Any, **k: Any) -> None:
            ours = Path(src).parent.name == ".incoming" and Path(dst).parent.name == "base_models"
            if ours and point == "installing":
                die()
            rename(src, dst, *a, **k)
            if ours and point == "installed":
                die()

        os.rename = crash_rename  # type: ignore[assignment]


def whole_model_problems(folder: Path, expected: dict[str, str]) -> list[str]:
    """What makes `folder` other than the whole pulled model: each of the Hub's files (name ->
    sha256) there with its bytes, no other file, and the manifest recording those sha256s."""
    name = folder.name
    try:
        files = {p.name: p for p in folder.iterdir() if p.is_file() and p.name[0] != "."}
        manifest = json.loads((folder / PULL_MANIFEST).read_text())
    except FileNotFoundError as exc:
        return [f"{name} is half a model: {Path(str(exc.filename)).name} is missing"]
    except ValueError:
        return [f"{name}/{PULL_MANIFEST} is not whole JSON"]
    problems = []
    if set(files) != set(expected):
        problems.append(
            f"{name} is half a model: missing {sorted(set(expected) - set(files))}, "
            f"unexpected {sorted(set(files) - set(expected))}"
        )
    for file in sorted(set(files) & set(expected)):
        if _sha256(files[file]) != expected[file]:
            problems.append(f"{name}/{file} differs from the Hub's sha256")
    recorded = {k: v.get("sha256") for k, v in (manifest.get("files") or {}).items()}
    if recorded != expected:
        problems.append(f"{name}/{PULL_MANIFEST} records other files or sha256s: {recorded}")
    return problems


def _catalog_problems(home: Path, expected: dict[str, str]) -> list[str]:
    """A catalog row `ready` now, or ever (its history), names a whole model."""
    problems = []
    rows = _query(home, "SELECT key, path FROM base_models WHERE state = 'ready'")
    rows += _query(
        home,
        "SELECT b.key, b.path FROM catalog_events e JOIN base_models b ON b.id = e.model_id "
        "WHERE e.new_state = 'ready'",
    )
    for key, path in sorted(set(rows)):
        folder = Path(path)
        if ".incoming" in folder.parts:
            problems.append(f"the catalog has {key} ready in the staging folder {path}")
            continue
        problems += [
            f"{key} is ready in the catalog but {p}" for p in whole_model_problems(folder, expected)
        ]
    return problems


def _base_folders(home: Path) -> list[Path]:
    base = home / "models" / "oneseek-7b-zero" / "base_models"
    return sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))


def _incoming(home: Path) -> list[str]:
    incoming = home / "models" / ".incoming"
    return sorted(p.name for p in incoming.iterdir()) if incoming.is_dir() else []


class WholeModels:
    """Looks at a home every few milliseconds while a pull and its kills go on: every folder
    in base_models/ and every `ready` catalog row must be the whole model at every look."""

    def __init__(self, home: Path, expected: dict[str, str]) -> None:
        self.home = home
        self.expected = expected
        self.problems: list[str] = []
        self.looks = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> WholeModels:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            found = []
            try:
                for folder in _base_folders(self.home):
                    found += whole_model_problems(folder, self.expected)
                found += _catalog_problems(self.home, self.expected)
            except OSError as exc:  # a file of base_models/ gone while it was read
                found.append(f"base_models/ changed under a look: {exc}")
            self.looks += 1
            self.problems += [p for p in found if p not in self.problems]


def check_download_killed(home: Path, commit: str, expected: dict[str, str]) -> list[str]:
    """Right after a kill: base_models/ holds nothing but the whole model, the catalog has
    nothing else ready, and `.incoming/` at most the staging folder of this unfinished pull."""
    problems = [p for f in _base_folders(home) for p in whole_model_problems(f, expected)]
    problems += _catalog_problems(home, expected)
    extra = [n for n in _incoming(home) if n != f"{DOWNLOAD_FOLDER}@{commit}"]
    if extra:
        problems.append(f".incoming/ holds {extra} besides the unfinished pull's staging folder")
    return problems


def check_download_done(
    home: Path, row_id: int, commit: str, expected: dict[str, str]
) -> list[str]:
    """After the restart: the row succeeded with the pinned commit; base_models/ holds the whole
    model, `ready` in the catalog (and never a partial one ready); `.incoming/` is empty; one
    signed `model_downloaded` event names every file's sha256; `ledger verify` passes."""
    problems = []
    row = _query(
        home, 'SELECT status, "commit", model_key, error FROM model_downloads WHERE id = ?', row_id
    )
    if row != [("succeeded", commit, "tiny-llama", None)]:
        problems.append(f"download #{row_id} ended {row}, not succeeded at {commit[:12]}")
    folder = home / "models" / "oneseek-7b-zero" / "base_models" / DOWNLOAD_FOLDER
    if _base_folders(home) != [folder]:
        problems.append(f"base_models/ holds {[f.name for f in _base_folders(home)]}")
    else:
        problems += whole_model_problems(folder, expected)
    catalog = _query(home, "SELECT key, state, path, source_commit FROM base_models")
    if catalog != [("tiny-llama", "ready", str(folder), commit)]:
        problems.append(f"the catalog holds {catalog}, not tiny-llama ready at {commit[:12]}")
    problems += _catalog_problems(home, expected)
    if _incoming(home):
        problems.append(f".incoming/ still holds {_incoming(home)} after the pull succeeded")
    events = [
        json.loads(payload)
        for (payload,) in _query(
            home, "SELECT payload FROM ledger_events WHERE event = 'model_downloaded'"
        )
    ]
    if [(e["commit"], e["files"]) for e in events] != [(commit, expected)]:
        problems.append(f"the ledger's model_downloaded events are {events}")
    return problems + _check_ledger_verify(home)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--download-crash-at"]:  # oneseekd ARGS..., killed at a download's step
        _install_download_crash(argv[1])
        from oneseekd.entry import main as daemon_main

        sys.argv = ["oneseekd", *argv[2:]]
        daemon_main()
        return 0
    import trainhomes  # noqa: F401  # first, as before: bitsandbytes before peft (trainhomes.py)

    if argv[:1] == ["--promote-pause"]:  # oneseekctl ARGS..., marked and paused
        _install_pointer_pause(Path(argv[1]))
        from oneseekd.cli import main as ctl

        return int(ctl.main(argv[2:], standalone_mode=False) or 0)
    if argv[:1] == ["--promote-crash-at"]:  # oneseekctl ARGS..., killed at one step
        point = argv[1]

        def die() -> None:
            print(f"crashharness: SIGKILL at {point}", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

        _install_pointer_crash(point, die)
        from oneseekd.cli import main as ctl

        return int(ctl.main(argv[2:], standalone_mode=False) or 0)
    parser = argparse.ArgumentParser(prog="crashharness")
    parser.add_argument(
        "--crash-at", choices=sorted({**CRASH_POINTS, **GUARD_POINTS}), required=True
    )
    parser.add_argument("--crash-kill", choices=("self", "both"), required=True)
    parser.add_argument("--crash-attempt", type=int, default=1)
    ours, rest = parser.parse_known_args(argv)
    if os.environ.get("ONESEEK_ATTEMPT") == str(ours.crash_attempt):
        _install_crash(ours.crash_at, ours.crash_kill)
    from oneseekd.trainer.__main__ import main as trainer_main

    return trainer_main(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
