"""Hostile input (issue 6, item 3): the corpus in tests/hostile/, fed to the real daemon.

Bad requests come in through both doors (dropped files and rows another program INSERTs), bad
catalog rows are written with sqlite3 the way any other program could, and model folders carry
custom code or pickles. Every item gets a clear verdict, the daemon stays up and decides
everything, and nothing is ever executed: each payload would leave a marker file if it ran.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import socket
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from daemon import DaemonProcess, model_state, query, run_until_idle, wait_for
from homes import drop, open_home, take_row, training_home
from modelfactory import make_model
from trainhomes import FAST, tiny_home

from oneseekd import queue
from oneseekd.cli import main as ctl
from oneseekd.intake.accept import Intake
from oneseekd.intake.incoming import MAX_REQUEST_BYTES
from oneseekd.naming import normalize_model_name
from oneseekd.trainer.loading import ModelRefused
from oneseekd.trainer.run import train_run

CORPUS = Path(__file__).with_name("hostile")
VERDICTS: dict[str, dict[str, Any]] = json.loads(
    (CORPUS / "verdicts.json").read_text(encoding="utf-8")
)
CATALOG_ROWS: dict[str, list[dict[str, Any]]] = json.loads(
    (CORPUS / "catalog_rows.json").read_text(encoding="utf-8")
)
MODELS = "kb-llama-3-1-8b-swedish, mistral-7b-instruct, qwen-2-5-7b"
TABLES = [
    "alembic_version",
    "artifacts",
    "base_models",
    "catalog_events",
    "daemons",
    "ledger_events",
    "ledger_keys",
    "model_downloads",
    "model_trainings",
    "run_events",
    "runs",
    "training_requests",
]
GOOD = {"base_models": ["qwen"], "dataset": "civic.jsonl"}
TOO_DEEP = "the request is nested too deeply to be a training request"
TOO_BIG = (
    f" bytes; a request is at most {MAX_REQUEST_BYTES} bytes (1 MiB): put data in datasets/, "
    "not here"
)


# --- helpers ----------------------------------------------------------------------------------


def decided(home: Path, name: str | bytes) -> str | None:
    """`accepted` once the file is in accepted/; `rejected` once it is in rejected/ with its
    NAME.error.json (the daemon writes the error file first, then moves the file in)."""
    name = os.fsencode(name)
    if os.path.exists(os.path.join(os.fsencode(home / "requests" / "accepted"), name)):
        return "accepted"
    rejected = os.fsencode(home / "requests" / "rejected")
    error = name[: -len(b".json")] + b".error.json"
    if os.path.exists(os.path.join(rejected, name)) and os.path.exists(
        os.path.join(rejected, error)
    ):
        return "rejected"
    return None


def expected(entry: dict[str, Any], home: Path) -> list[str]:
    datasets = str(home / "datasets")
    return [
        p.replace("{datasets}", datasets).replace("{available}", MODELS) for p in entry["problems"]
    ]


def insert(home: Path, sql: str, params: dict[str, Any] | tuple[Any, ...] = ()) -> int:
    con = sqlite3.connect(home / "oneseek.db", timeout=30)
    try:
        con.execute("PRAGMA busy_timeout = 30000")
        cursor = con.execute(sql, params)
        con.commit()
        return int(cursor.lastrowid or 0)
    finally:
        con.close()


def assert_database_whole(home: Path) -> None:
    names = query(home, "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
    assert [n for (n,) in names] == TABLES
    assert query(home, "PRAGMA integrity_check") == [("ok",)]


def generated() -> dict[str, bytes]:
    """Corpus items too large to keep as files."""
    nested = b"[" * 100_000 + b"]" * 100_000
    return {
        "nested-100k-levels.json": (
            b'{"base_models": ["qwen"], "dataset": "civic.jsonl", "lora": ' + nested + b"}"
        ),
        "over-1-mib.json": json.dumps(
            {**GOOD, "request_id": "x" * (2 * MAX_REQUEST_BYTES)}
        ).encode(),
    }


# names that are themselves hostile; their requests are valid and must be taken in
HOSTILE_NAMES: dict[bytes, str] = {
    b"'; DROP TABLE runs; --.json": "named with SQL",
    b"evil\x1b[2J\r\nname.json": "named with control characters",
    b"bad-\xff\xfe-name.json": "named with invalid UTF-8",
}


def check_generated(name: str, status: str, problems: list[str]) -> None:
    assert status == "rejected"
    if name == "nested-100k-levels.json":
        assert problems == [TOO_DEEP]
    else:
        [problem] = problems
        assert problem.startswith("the request is ") and problem.endswith(TOO_BIG)
        assert int(problem.split()[3]) > MAX_REQUEST_BYTES


# --- requests: files and rows -----------------------------------------------------------------


@pytest.mark.timeout(120)
def test_every_hostile_request_gets_its_verdict_through_both_doors(tmp_path: Path) -> None:
    home = training_home(tmp_path / "home")
    (home / "requests").mkdir()
    corpus = {p.name: p.read_bytes() for p in sorted((CORPUS / "requests").iterdir())}
    assert sorted(corpus) == sorted(VERDICTS)
    big = generated()
    daemon = DaemonProcess(home)
    try:
        daemon.wait_event("daemon_ready", timeout=30)
        for name, raw in {**corpus, **big}.items():
            drop(home, name, raw)
        for name, request_id in HOSTILE_NAMES.items():
            drop(home, name, json.dumps({**GOOD, "request_id": request_id}).encode())
        every = [*corpus, *big, *HOSTILE_NAMES]
        wait_for(lambda: all(decided(home, n) for n in every), timeout=60, what="every verdict")

        # files: each ends in accepted/ or rejected/, a rejected one with its problems
        for name, entry in VERDICTS.items():
            verdict = decided(home, name)
            assert verdict == ("accepted" if entry["status"] == "queued" else "rejected"), name
            if verdict == "rejected":
                error = home / "requests" / "rejected" / name.replace(".json", ".error.json")
                body = json.loads(error.read_text(encoding="utf-8"))
                assert (body["status"], body["problems"]) == ("rejected", expected(entry, home))
        for name in big:
            error = home / "requests" / "rejected" / name.replace(".json", ".error.json")
            body = json.loads(error.read_text(encoding="utf-8"))
            check_generated(name, body["status"], body["problems"])
        for name in HOSTILE_NAMES:
            assert decided(home, name) == "accepted", name
        names = {n for (n,) in query(home, "SELECT source_name FROM training_requests")}
        assert "'; DROP TABLE runs; --.json" in names
        assert "evil\x1b[2J\r\nname.json" in names
        assert "bad-\\udcff\\udcfe-name.json" in names  # undecodable bytes, kept visible

        # rows: the same request INSERTed by another program gets the same verdict; one that
        # was queued from its file is recognised as the same request (its request_id)
        ids = {}
        for name, raw in {**corpus, **big}.items():
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                continue  # as TEXT it cannot be written; see the BLOB test below
            ids[name] = insert(home, "INSERT INTO training_requests (payload) VALUES (?)", (text,))
        wait_for(
            lambda: not query(home, "SELECT id FROM training_requests WHERE status = 'pending'"),
            timeout=30,
            what="every row decided",
        )
        queued = dict(
            query(
                home,
                "SELECT t.source_name, r.run_id FROM training_requests t "
                "JOIN runs r ON r.id = t.run_id WHERE t.source = 'file'",
            )
        )
        for name, row_id in ids.items():
            [(status, problems)] = query(
                home, "SELECT status, problems FROM training_requests WHERE id = ?", row_id
            )
            problems = json.loads(problems) if problems else []
            if name in big:
                check_generated(name, status, problems)
            elif VERDICTS[name]["status"] == "queued":
                assert status == "duplicate", name
                [(first,)] = query(
                    home, "SELECT id FROM training_requests WHERE source_name = ?", name
                )
                # what became of that run (queued, running, ended) is said in between
                assert len(problems) == 1, problems
                assert problems[0].startswith(f"duplicate of request #{first}: run {queued[name]} ")
                assert problems[0].endswith(
                    "is always this request: give a new `request_id` to train it again"
                )
            else:
                assert (status, problems) == ("rejected", expected(VERDICTS[name], home)), name
        assert daemon.proc.poll() is None
    finally:
        code = daemon.stop()
    assert code == 0
    assert_database_whole(home)
    # the SQL-looking request_id was stored as text, nothing more
    assert ("'; DROP TABLE runs; --",) in query(home, "SELECT request_key FROM runs")
    assert not [e for e in daemon.events() if e.get("event") == "unparsed"]


def test_a_row_whose_payload_is_not_utf8_is_rejected_as_such(tmp_path: Path) -> None:
    home = training_home(tmp_path / "home")
    _config, engine = open_home(home)
    try:
        raw = (CORPUS / "requests" / "invalid-utf8.json").read_bytes()
        row_id = insert(home, "INSERT INTO training_requests (payload) VALUES (?)", (raw,))
        verdict = take_row(Intake(engine, _config.home), row_id)
    finally:
        engine.dispose()
    assert verdict is not None and verdict.status == "rejected"
    assert verdict.problems == ["the request is not UTF-8 text (invalid byte at offset 20)"]


def test_a_text_payload_that_is_not_utf8_is_rejected_as_such(tmp_path: Path) -> None:
    """TEXT (not a BLOB) holding invalid UTF-8: sqlite3 would raise on every fetch of it."""
    home = training_home(tmp_path / "home")
    _config, engine = open_home(home)
    try:
        raw = (CORPUS / "requests" / "invalid-utf8.json").read_bytes()
        row_id = insert(
            home, "INSERT INTO training_requests (payload) VALUES (CAST(? AS TEXT))", (raw,)
        )
        assert query(home, "SELECT typeof(payload) FROM training_requests") == [("text",)]
        verdict = take_row(Intake(engine, _config.home), row_id)
    finally:
        engine.dispose()
    assert verdict is not None and verdict.status == "rejected"
    assert verdict.problems == ["the request is not UTF-8 text (invalid byte at offset 20)"]


# --- links out of the home --------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_links_out_of_the_home_are_refused(tmp_path: Path) -> None:
    home = training_home(tmp_path / "home")
    base = home / "models" / "oneseek-7b-zero" / "base_models"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "good.jsonl").write_text('{"text": "a"}\n{"text": "b"}\n')
    make_model(outside, "Outside-Model")
    datasets = home / "datasets"
    (datasets / "leak.jsonl").symlink_to("/etc/passwd")
    (datasets / "outside").symlink_to(outside)
    (datasets / "alias.jsonl").symlink_to("civic.jsonl")  # inside the folder: allowed
    (base / "Outside-Model").symlink_to(outside / "Outside-Model")
    linked = make_model(base, "Linked-Weights")
    (linked / "model.safetensors").unlink()
    (linked / "model.safetensors").symlink_to(outside / "Outside-Model" / "model.safetensors")
    (home / "requests").mkdir()
    requests = {
        "leak.json": {**GOOD, "dataset": "leak.jsonl"},
        "outside-folder.json": {**GOOD, "dataset": "outside/good.jsonl"},
        "outside-model.json": {"base_models": ["outside-model"], "dataset": "civic.jsonl"},
        "linked-weights.json": {"base_models": ["linked-weights"], "dataset": "civic.jsonl"},
        "alias.json": {**GOOD, "dataset": "alias.jsonl"},
    }
    fix = f"put the file under {datasets}/ and name it relative to that folder"
    available = "kb-llama-3-1-8b-swedish, linked-weights, mistral-7b-instruct, qwen-2-5-7b"
    want = {
        "leak.json": [f"dataset 'leak.jsonl' is a link leading outside {datasets}/; {fix}"],
        "outside-folder.json": [
            f"dataset 'outside/good.jsonl' is a link leading outside {datasets}/; {fix}"
        ],
        "outside-model.json": [
            f"base_models: model name 'outside-model' matches no base model; available: {available}"
        ],
        "linked-weights.json": [
            "base_models: 'linked-weights' resolves to linked-weights is incomplete: no weights "
            "yet (expected model.safetensors, a sharded model.safetensors.index.json, or "
            "pytorch_model.bin)"
        ],
    }
    daemon = DaemonProcess(home)
    try:
        daemon.wait_event("daemon_ready", timeout=30)
        for name, body in requests.items():
            drop(home, name, json.dumps(body).encode())
        wait_for(lambda: all(decided(home, n) for n in requests), timeout=30)
        for name, problems in want.items():
            body = json.loads(
                (home / "requests" / "rejected" / name.replace(".json", ".error.json")).read_text()
            )
            assert body["problems"] == problems, name
        assert decided(home, "alias.json") == "accepted"
        assert query(home, "SELECT dataset FROM runs") == [("civic.jsonl",)]
        skipped = [e for e in daemon.events() if e.get("event") == "symlink_outside_roots_skipped"]
        assert [e["path"] for e in skipped] == [str(base / "Outside-Model")]
        assert model_state(home, "outside-model") is None
        assert daemon.proc.poll() is None
    finally:
        code = daemon.stop()
    assert code == 0


@pytest.mark.timeout(60)
def test_a_request_file_that_is_a_link_is_rejected_without_being_followed(
    tmp_path: Path,
) -> None:
    home = training_home(tmp_path / "home")
    (home / "requests").mkdir()
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps(GOOD))
    (home / "requests" / "linked.json").symlink_to(outside)
    drop(home, "after.json", json.dumps({**GOOD, "request_id": "after"}).encode())
    daemon = DaemonProcess(home)
    try:
        daemon.wait_event("daemon_ready", timeout=30)
        wait_for(lambda: decided(home, "after.json"), timeout=30)
        wait_for(lambda: decided(home, "linked.json"), timeout=2, what="a verdict on the link")
        assert decided(home, "linked.json") == "rejected"
        assert outside.read_text() == json.dumps(GOOD)  # the target is neither moved nor read
    finally:
        daemon.stop()


# --- hostile catalog and request rows ---------------------------------------------------------


def bind(entry: dict[str, Any], outside: Path) -> dict[str, Any]:
    return {
        "outside": str(outside),
        "host": socket.gethostname(),  # the host whose catalog rows the daemon wrote
        "text": entry.get("text", ""),
        "request": json.dumps(entry.get("request", GOOD)),
    }


@pytest.mark.parametrize(
    "entry", CATALOG_ROWS["refused_by_the_database"], ids=lambda e: str(e["name"])
)
def test_the_schema_refuses_a_hostile_row(tmp_path: Path, entry: dict[str, Any]) -> None:
    home = training_home(tmp_path / "home")
    config, engine = open_home(home)
    try:
        verdict = Intake(engine, config.home).take_bytes(json.dumps(GOOD).encode(), source="submit")
        assert verdict.status == "queued"
    finally:
        engine.dispose()
    before = query(home, "SELECT * FROM base_models ORDER BY id")
    with pytest.raises(sqlite3.IntegrityError) as err:
        insert(home, entry["sql"], bind(entry, tmp_path / "outside"))
    assert str(err.value) == entry["error"]
    assert query(home, "SELECT * FROM base_models ORDER BY id") == before


SPY = '''"""A stand-in trainer that records what the real one would be handed: load_context, the
trainer's own first step, then the model folders and keys it would train from and write under."""
import argparse, json, sys
from pathlib import Path
from oneseekd.home import HomePaths
from oneseekd.db.engine import make_engine
from oneseekd.errors import OneseekError
from oneseekd.trainer.context import load_context
parser = argparse.ArgumentParser()
for flag in ("--home", "--db-url", "--run-id"):
    parser.add_argument(flag, required=True)
args = parser.parse_args()
home = HomePaths(Path(args.home).resolve())
try:
    ctx = load_context(make_engine(args.db_url), home, args.run_id)
except OneseekError as exc:
    print(f"Error: {exc}", file=sys.stderr)
    sys.exit(65)
with (home.root / "spy.jsonl").open("a") as fh:
    models = [[m.key, str(m.path)] for m in ctx.models]
    fh.write(json.dumps({"run_id": args.run_id, "models": models}) + "\\n")
'''


def catalog_param(entry: dict[str, Any]) -> Any:
    marks = []
    if entry.get("known_bug"):
        marks.append(pytest.mark.xfail(strict=True, reason=f"package bug: {entry['known_bug']}"))
    return pytest.param(entry, id=str(entry["name"]), marks=marks)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("entry", [catalog_param(e) for e in CATALOG_ROWS["decided_by_the_daemon"]])
def test_a_hostile_row_is_decided_and_never_trains_from_a_folder_the_scan_did_not_find(
    tmp_path: Path, entry: dict[str, Any]
) -> None:
    spy = tmp_path / "spy_trainer.py"
    spy.write_text(SPY)
    home = training_home(tmp_path / "home", command=[sys.executable, str(spy)])
    outside = make_model(tmp_path / "outside", "Stolen-Model")
    daemon = DaemonProcess(home)
    try:
        daemon.wait_event("daemon_ready", timeout=30)
        params = bind(entry, outside)
        row_id = insert(home, entry["sql"], params)
        if not entry["sql"].startswith("INSERT INTO training_requests"):
            row_id = insert(
                home, "INSERT INTO training_requests (payload) VALUES (:request)", params
            )

        def verdict() -> tuple[str, list[str]] | None:
            assert daemon.proc.poll() is None, f"the daemon exited: {daemon.events()[-1]}"
            [(status, problems)] = query(
                home, "SELECT status, problems FROM training_requests WHERE id = ?", row_id
            )
            return None if status == "pending" else (status, json.loads(problems or "[]"))

        status, problems = wait_for(verdict, timeout=15, what="the row's verdict")
        wait_for(
            lambda: not query(home, "SELECT id FROM runs WHERE state IN ('queued', 'running')"),
            timeout=15,
            what="every run to end",
        )
        assert daemon.proc.poll() is None
        if "status" in entry:
            assert status == entry["status"]
        if "problems" in entry:
            assert problems == [p.replace(":outside", params["outside"]) for p in entry["problems"]]
        if "runs" in entry:
            assert query(home, "SELECT count(*) FROM runs") == [(entry["runs"],)]
        # whatever was queued, the trainer was only ever given discovered folders and keys
        spied = home / "spy.jsonl"
        handed = (
            [json.loads(line) for line in spied.read_text().splitlines()] if spied.exists() else []
        )
        models_root = (home / "models").resolve()
        for record in handed:
            for key, path in record["models"]:
                assert key == normalize_model_name(key), f"trainer handed key {key!r}"
                assert Path(path).resolve().is_relative_to(models_root), f"trainer handed {path}"
    finally:
        daemon.stop()
    assert_database_whole(home)


@pytest.mark.timeout(60)
def test_a_daemon_restarted_over_a_hostile_catalog_row_still_starts(tmp_path: Path) -> None:
    home = training_home(tmp_path / "home")
    _config, engine = open_home(home)
    engine.dispose()
    [entry] = [
        e for e in CATALOG_ROWS["decided_by_the_daemon"] if e["name"] == "architectures-not-json"
    ]
    insert(home, entry["sql"])
    drop(home, "after.json", json.dumps(GOOD).encode())
    done = run_until_idle(home, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert decided(home, "after.json") is not None


@pytest.fixture
def hostile_name(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """A scanned home whose qwen-2-5-7b row another program gave a hostile display name; the
    catalog entry that wrote it."""
    home = training_home(tmp_path / "home")
    _config, engine = open_home(home)
    engine.dispose()
    [entry] = [e for e in CATALOG_ROWS["decided_by_the_daemon"] if e["name"].startswith("display")]
    insert(home, entry["sql"], {"text": entry["text"]})
    return home, entry


def test_oneseekctl_models_shows_a_hostile_display_name_verbatim_in_json(
    hostile_name: tuple[Path, dict[str, Any]],
) -> None:
    home, entry = hostile_name
    result = CliRunner().invoke(ctl, ["--home", str(home), "models", "--json"])
    assert result.exit_code == 0, result.output
    shown = {m["key"]: m["display_name"] for m in json.loads(result.stdout)}
    assert shown["qwen-2-5-7b"] == entry["text"]
    assert_database_whole(home)


def test_oneseekctl_models_never_prints_control_characters_to_a_terminal(
    hostile_name: tuple[Path, dict[str, Any]],
) -> None:
    home, _ = hostile_name
    result = CliRunner().invoke(ctl, ["--home", str(home), "models"], color=True)
    assert result.exit_code == 0, result.output
    assert "Fake-Model" in result.stdout
    assert not any(c in result.stdout for c in "\x1b\x07\r")


# --- code in model folders and pickles: never executed ----------------------------------------


class Payload:
    """Pickles to a call of exec(): unpickling it writes the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({self.marker!r}, 'w').write('unpickled')",))


@pytest.fixture
def markers(tmp_path: Path) -> Iterator[Path]:
    """Where every payload would leave its marker; checked empty at the end of each test."""
    folder = tmp_path / "markers"
    folder.mkdir()
    yield folder
    assert sorted(p.name for p in folder.iterdir()) == []  # nothing ever ran


HOSTILE_MODELS = ("evil-remote", "evil-tokenizer", "pickled-base")
REMOTE_REFUSAL = (
    "Evil-Remote asks for custom code (modeling_evil.py); oneseekd never runs code from a model "
    "folder (trust_remote_code is off)"
)
TOKENIZER_REFUSAL = "Evil-Tokenizer has no usable tokenizer: The repository"
UNPICKLE_REFUSAL = "Weights only load failed"


def with_code(template: str, target: Path, marker: Path) -> None:
    text = (CORPUS / "remote_code" / template).read_text().replace("__MARKER__", str(marker))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)


def hostile_home(root: Path, cache: Path, markers: Path) -> Path:
    """A tiny home whose base_models/ also holds a folder whose config.json asks for custom
    code, one whose tokenizer_config.json does (from a sub-folder), one whose weights are a
    pickle that runs code when loaded, and a .pth pickle where the trainer writes its own."""
    home = tiny_home(root, cache, {"Tiny-Llama": "llama"})
    base = home / "models" / "oneseek-7b-zero" / "base_models"
    for name in ("Evil-Remote", "Evil-Tokenizer", "Pickled-Base"):
        shutil.copytree(base / "Tiny-Llama", base / name)
    remote = base / "Evil-Remote"
    with_code("modeling_evil.py.in", remote / "modeling_evil.py", markers / "modeling")
    config = json.loads((remote / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (remote / "config.json").write_text(json.dumps(config))
    tokenizer = base / "Evil-Tokenizer"
    with_code(
        "tokenization_evil.py.in", tokenizer / "code" / "tokenization_evil.py", markers / "tok"
    )
    settings = json.loads((tokenizer / "tokenizer_config.json").read_text())
    settings["auto_map"] = {"AutoTokenizer": ["code/tokenization_evil.EvilTokenizer", None]}
    settings["tokenizer_class"] = "EvilTokenizer"
    (tokenizer / "tokenizer_config.json").write_text(json.dumps(settings))
    pickled = base / "Pickled-Base"
    (pickled / "model.safetensors").unlink()
    torch.save(
        {"model.embed_tokens.weight": Payload(markers / "bin")}, pickled / "pytorch_model.bin"
    )
    weights = home / "models" / "oneseek-7b-zero" / "weights"
    weights.mkdir(parents=True)
    torch.save(
        {"lora_A": Payload(markers / "pth")}, weights / "oneseek-7b-zero-v0.9-tiny-llama.pth"
    )
    return home


def plant_checkpoint(home: Path, run_id: str, markers: Path) -> None:
    """A checkpoint of tiny-llama for the run, `latest` pointing at it, whose .pt files are
    pickles that run code when loaded: what resuming the run reads first."""
    step = home / "checkpoints" / run_id / "tiny-llama" / "step-00000002-e0b2"
    step.mkdir(parents=True)
    for name in ("adapter.pt", "optimizer.pt", "rng.pt"):
        torch.save({"state": Payload(markers / name)}, step / name)
    (step / "state.json").write_text(json.dumps({"epoch": 0, "batch": 2, "step": 2}))
    (step / "python_rng.json").write_text("[3, [], null]")
    (step.parent / "latest").write_text(step.name)


def queue_runs(home: Path, keys: tuple[str, ...]) -> dict[str, str]:
    """One queued run per model, as `oneseekctl submit` queues them; model key -> run id."""
    config, engine = open_home(home)
    try:
        intake = Intake(engine, config.home)
        runs = {}
        for key in keys:
            body = {"base_models": [key], "dataset": "civic.jsonl", **FAST, "epochs": 1}
            verdict = intake.take_bytes(json.dumps(body).encode(), source="submit")
            assert verdict.run_id, verdict.problems
            runs[key] = verdict.run_id
        return runs
    finally:
        engine.dispose()


@pytest.mark.timeout(60)
def test_the_catalog_scan_runs_no_code_and_loads_no_pickle(
    tmp_path: Path, cache: Path, markers: Path
) -> None:
    home = hostile_home(tmp_path / "home", cache, markers)
    scanned = run_until_idle(home, timeout=60)  # the daemon scans, finds nothing to do, exits
    assert scanned.returncode == 0, scanned.stderr[-2000:]
    for key in (*HOSTILE_MODELS, "tiny-llama"):
        assert model_state(home, key) == "ready", key
    result = CliRunner().invoke(ctl, ["--home", str(home), "models", "--json"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in markers.iterdir()) == []


def test_the_trainer_runs_no_code_and_loads_no_pickle(
    tmp_path: Path, cache: Path, markers: Path
) -> None:
    """The trainer's own code path, in this process: each run is refused before anything is
    executed or unpickled."""
    home = hostile_home(tmp_path / "home", cache, markers)
    runs = queue_runs(home, (*HOSTILE_MODELS, "tiny-llama"))
    plant_checkpoint(home, runs["tiny-llama"], markers)
    config, engine = open_home(home)
    errors: dict[str, str] = {}
    try:
        for key, run_id in runs.items():
            claimed = queue.claim_next(engine, None)
            assert claimed is not None and claimed.run_id == run_id
            with pytest.raises((ModelRefused, pickle.UnpicklingError)) as err:
                train_run(engine, config.home, run_id)
            errors[key] = f"{type(err.value).__name__}: {err.value}"
            queue.finish(engine, claimed.id, queue.Ending("failed", "error", errors[key]))
    finally:
        engine.dispose()
    assert errors["evil-remote"].startswith(f"ModelRefused: {REMOTE_REFUSAL}")
    assert errors["evil-tokenizer"].startswith(f"ModelRefused: {TOKENIZER_REFUSAL}")
    for key in ("pickled-base", "tiny-llama"):
        assert errors[key].startswith(f"UnpicklingError: {UNPICKLE_REFUSAL}"), key


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_the_daemon_fails_runs_of_code_and_pickles_without_running_them(
    tmp_path: Path, cache: Path, markers: Path
) -> None:
    home = hostile_home(tmp_path / "home", cache, markers)
    runs = queue_runs(home, (*HOSTILE_MODELS, "tiny-llama"))
    plant_checkpoint(home, runs["tiny-llama"], markers)
    done = run_until_idle(home, timeout=360)
    assert done.returncode == 0, done.stderr[-3000:]
    ended = {
        run_id: (state, outcome, error)
        for run_id, state, outcome, error in query(
            home, "SELECT run_id, state, outcome, error FROM runs"
        )
    }
    state, outcome, error = ended[runs["evil-remote"]]
    assert (state, outcome) == ("failed", "error")
    # the trainer's own reason is the cause line; how it exited and its log follow
    assert error.startswith(REMOTE_REFUSAL)
    assert "\n(the trainer exited with status 65; the end of its log:)\n" in error
    assert f"Error: {REMOTE_REFUSAL}" in error
    state, outcome, error = ended[runs["evil-tokenizer"]]
    assert (state, outcome) == ("failed", "error")
    assert f"Error: {TOKENIZER_REFUSAL}" in error
    for key in ("pickled-base", "tiny-llama"):
        state, outcome, error = ended[runs[key]]
        assert (state, outcome) == ("failed", "error"), key
        assert f"_pickle.UnpicklingError: {UNPICKLE_REFUSAL}" in error, key
    pth = home / "models" / "oneseek-7b-zero" / "weights" / "oneseek-7b-zero-v0.9-tiny-llama.pth"
    assert pth.is_file()  # never read, never moved
    verify = CliRunner().invoke(ctl, ["--home", str(home), "ledger", "verify"])
    assert verify.exit_code == 0, verify.output
