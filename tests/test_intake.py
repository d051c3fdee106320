"""One validator for every door: what is accepted, what is refused, and exactly why."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest
from homes import request, take, take_row

from oneseekd import queue
from oneseekd.intake.incoming import Incoming, Verdict
from oneseekd.intake.schema import TrainingRequestModel
from oneseekd.spec.request import load


def test_a_valid_request_is_queued_with_resolved_keys_and_fingerprints(setup: tuple) -> None:
    config, _, intake = setup
    verdict = take(
        intake,
        request(
            base_models=["kb-llama", "Qwen2.5-7B"],
            epochs=2,
            per_model={"qwen": {"learning_rate": 5e-5, "lora": {"r": 16}}},
        ),
    )
    assert verdict.status == "queued", verdict.problems
    con = sqlite3.connect(config.home.db_file)
    state, version, models, prints, cfg = con.execute(
        "SELECT state, version, base_models, fingerprints, config FROM runs"
    ).fetchone()
    assert (state, version) == ("queued", "1.0")
    assert json.loads(models) == ["kb-llama-3-1-8b-swedish", "qwen-2-5-7b"]
    fingerprints = json.loads(prints)
    assert set(fingerprints) == {"kb-llama-3-1-8b-swedish", "qwen-2-5-7b"}
    assert all(len(v) == 64 for v in fingerprints.values())
    spec = load(json.loads(cfg))  # the typed run spec, each model's options resolved once
    llama, qwen = spec.for_model("kb-llama-3-1-8b-swedish"), spec.for_model("qwen-2-5-7b")
    assert (llama.epochs, llama.learning_rate, llama.lora.r) == (2, 1e-4, 8)
    assert (qwen.epochs, qwen.learning_rate, qwen.lora.r, qwen.lora.alpha) == (2, 5e-5, 16, 32)
    assert con.execute("SELECT status, run_id IS NOT NULL FROM training_requests").fetchone() == (
        "queued",
        1,
    )


def test_camel_case_spellings_are_accepted(setup: tuple) -> None:
    _, _, intake = setup
    camel = {"baseModels": ["mistral"], "learningRate": 2e-4, "batchSize": 4, "maxSeqLen": 256}
    verdict = take(intake, {**camel, "dataset": "civic.jsonl"})
    assert verdict.status == "queued", verdict.problems


def test_every_problem_is_reported_at_once(setup: tuple) -> None:
    _, _, intake = setup
    verdict = take(intake, request(epochs=0, learning_rate="fast", lora={"r": 0}, colour="blue"))
    assert verdict.status == "rejected"
    assert verdict.problems[:3] == [
        "epochs: input should be greater than or equal to 1 (got 0)",
        "learning_rate: input should be a valid number (got 'fast')",
        "lora.r: input should be greater than or equal to 1 (got 0)",
    ]
    assert verdict.problems[3] == "unknown field 'colour'"
    assert verdict.problems[4].startswith("known fields: auto_stop, base_models, batch_size,")
    assert len(verdict.problems) == 5


def test_unknown_fields_get_a_close_match_and_the_known_fields_once(setup: tuple) -> None:
    _, _, intake = setup
    verdict = take(
        intake,
        {
            "base_model": ["KB-Llama-3.1-8B-Swedish"],
            "dataset": "civic.jsonl",
            "epoch": 2,
            "learningRat": 1e-4,
            "lora": {"rank": 8},
        },
    )
    assert verdict.status == "rejected"
    known = ", ".join(sorted(TrainingRequestModel.model_fields))
    assert verdict.problems == [
        "base_models is required",
        "unknown field 'rank' in lora",
        "unknown field 'base_model' (did you mean 'base_models'?)",
        "unknown field 'epoch' (did you mean 'epochs'?)",
        "unknown field 'learningRat' (did you mean 'learning_rate'?)",
        f"known fields: {known}",
        "known fields of lora: alpha, dropout, r, target_modules, use_rslora",
    ]


def test_one_verdict_lists_the_schema_the_model_and_the_dataset_problems(
    setup: tuple,
) -> None:
    """The schema stage failing (epochs) does not stop the model and dataset checks."""
    _, _, intake = setup
    verdict = take(
        intake, {"base_models": ["no-such-model"], "dataset": "../oneseekd.toml", "epochs": 0}
    )
    assert verdict.status == "rejected"
    assert verdict.problems[0] == "epochs: input should be greater than or equal to 1 (got 0)"
    assert verdict.problems[1].startswith(
        "dataset '../oneseekd.toml' climbs out of the datasets folder with '..'"
    )
    assert verdict.problems[2] == (
        "base_models: model name 'no-such-model' matches no base model; available: "
        "kb-llama-3-1-8b-swedish, mistral-7b-instruct, qwen-2-5-7b"
    )
    assert len(verdict.problems) == 3


def test_an_unknown_model_close_to_a_key_gets_a_did_you_mean(setup: tuple) -> None:
    _, _, intake = setup
    verdict = take(intake, request(base_models=["mistral-7b-instrukt-v2"]))
    assert verdict.problems == [
        "base_models: model name 'mistral-7b-instrukt-v2' matches no base model (did you mean "
        "'mistral-7b-instruct'?); available: kb-llama-3-1-8b-swedish, mistral-7b-instruct, "
        "qwen-2-5-7b"
    ]


def test_a_request_is_created_before_it_is_decided(setup: tuple) -> None:
    """created_at <= decided_at, and both in the one time format (microseconds, Z)."""
    config, _, intake = setup
    take(intake, request())
    take(intake, request(epochs=0))
    con = sqlite3.connect(config.home.db_file)
    rows = con.execute("SELECT created_at, decided_at FROM training_requests").fetchall()
    assert len(rows) == 2
    for created, decided in rows:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", created)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", decided)
        assert created <= decided
    queued = con.execute(
        "SELECT r.created_at, u.queued_at FROM training_requests r "
        "JOIN runs u ON u.request_id = r.id"
    ).fetchone()
    assert queued[0] <= queued[1]


def test_unknown_and_ambiguous_models_name_the_candidates(setup: tuple) -> None:
    _, _, intake = setup
    verdict = take(intake, request(base_models=["falcon", "7b"]))
    assert verdict.problems == [
        "base_models: model name 'falcon' matches no base model; available: "
        "kb-llama-3-1-8b-swedish, mistral-7b-instruct, qwen-2-5-7b",
        "base_models: model name '7b' is ambiguous (containment match): it matches "
        "mistral-7b-instruct, qwen-2-5-7b; use the full key of one of them",
    ]


@pytest.mark.parametrize(
    ("dataset", "problem"),
    [
        ("nope.jsonl", "dataset 'nope.jsonl' does not exist in {d}/"),
        ("../oneseek.db", "dataset '../oneseek.db' climbs out of the datasets folder with '..'"),
        ("/etc/passwd", "dataset '/etc/passwd' is an absolute path"),
        ("escape.jsonl", "dataset 'escape.jsonl' is a link leading outside {d}/"),
        ("bad.jsonl", "dataset 'bad.jsonl' line 2 is not JSON: Expecting value"),
        ("shape.jsonl", "dataset 'shape.jsonl' line 1 has none of the supported shapes"),
        ("empty.jsonl", "dataset 'empty.jsonl' is empty"),
        ("notes.txt", "dataset 'notes.txt' must be JSONL (.jsonl) or a JSON array (.json)"),
    ],
)
def test_dataset_problems(setup: tuple, tmp_path: Path, dataset: str, problem: str) -> None:
    config, _, intake = setup
    d = config.home.datasets
    (tmp_path / "outside.jsonl").write_text('{"text": "x"}\n')
    (d / "escape.jsonl").symlink_to(tmp_path / "outside.jsonl")
    (d / "bad.jsonl").write_text('{"text": "ok"}\nnot json\n')
    (d / "shape.jsonl").write_text('{"prompt": "x"}\n')
    (d / "empty.jsonl").write_text("\n\n")
    (d / "notes.txt").write_text("hello")
    verdict = take(intake, request(dataset=dataset))
    assert verdict.status == "rejected"
    assert len(verdict.problems) == 1
    assert verdict.problems[0].startswith(problem.format(d=d)), verdict.problems


def test_a_missing_dataset_lists_the_files_there_closest_first(setup: tuple) -> None:
    config, _, intake = setup
    d = config.home.datasets
    (d / "sub").mkdir()
    (d / "sub" / "civic-2025.jsonl").write_text('{"text": "x"}\n')
    (d / "notes.json").write_text("[]")
    (d / "notes.txt").write_text("not a dataset")  # neither listed
    (d / ".civic.jsonl.tmp").write_text("")
    fix = f"put the file under {d}/ and name it relative to that folder"
    verdict = take(intake, request(dataset="civc.jsonl"))
    assert verdict.problems == [
        f"dataset 'civc.jsonl' does not exist in {d}/; the dataset files there, closest "
        f"first: civic.jsonl, sub/civic-2025.jsonl, notes.json; {fix}"
    ]
    for name in ("civic.jsonl", "notes.json", "sub/civic-2025.jsonl"):
        (d / name).unlink()
    verdict = take(intake, request(dataset="civc.jsonl"))
    assert verdict.problems == [
        f"dataset 'civc.jsonl' does not exist in {d}/; the folder holds no .jsonl or .json "
        f"file; {fix}"
    ]


def test_a_json_array_dataset_is_accepted(setup: tuple) -> None:
    config, _, intake = setup
    (config.home.datasets / "chat.json").write_text(
        json.dumps([{"messages": [{"role": "user", "content": "hej"}]}, {"text": "x"}])
    )
    assert take(intake, request(dataset="chat.json")).status == "queued"


def test_versions_next_free_and_existing_refused(setup: tuple) -> None:
    config, _, intake = setup
    (config.home.zero / "weights" / "oneseek-7b-zero-v1.4.json").write_text("{}")
    first = take(intake, request())
    assert first.status == "queued"
    con = sqlite3.connect(config.home.db_file)
    assert con.execute("SELECT version FROM runs").fetchone() == ("1.5",)
    again = take(intake, request(version="v1.5"))
    assert again.problems == [
        "version 1.5 already exists; omit version to take the next free "
        "one (1.6), or name a new one"
    ]
    old = take(intake, request(version="1.4"))
    assert old.status == "rejected"
    assert take(intake, request(version="2.0")).status == "queued"


def test_per_model_must_name_a_requested_model(setup: tuple) -> None:
    _, _, intake = setup
    verdict = take(intake, request(per_model={"mistral": {"epochs": 1}}))
    assert verdict.problems == [
        "per_model: 'mistral' is not one of the requested models (kb-llama-3-1-8b-swedish)"
    ]


def test_same_request_id_is_a_duplicate_of_the_first(setup: tuple) -> None:
    config, _, intake = setup
    first = take(intake, request(request_id="nightly-42"))
    second = take(intake, request(request_id="nightly-42", epochs=9))
    assert first.status == "queued"
    assert second.status == "duplicate"
    assert second.duplicate_of == first.run_id
    assert second.problems == [
        f"duplicate of request #{first.request_pk}: run {first.run_id} is queued; the same "
        "request_id ('nightly-42') is always this request: give a new `request_id` to train "
        "it again"
    ]
    con = sqlite3.connect(config.home.db_file)
    assert con.execute("SELECT COUNT(*) FROM runs").fetchone() == (1,)


def test_the_same_request_twice_is_a_duplicate_at_every_door(setup: tuple) -> None:
    _, _, intake = setup
    raw = json.dumps(request()).encode()
    assert intake.take_bytes(raw, source="file", source_name="a.json").status == "queued"
    assert intake.take_bytes(raw, source="file", source_name="b.json").status == "duplicate"
    # submitted content is judged the same way (tests/test_duplicates.py has the whole rule)
    assert intake.take_bytes(raw, source="submit").status == "duplicate"


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"\xff\xfe{}", "the request is not UTF-8 text (invalid byte at offset 0)"),
        (
            b'{"base_models": [',
            "the request is not valid JSON: Expecting value at line 1 column 18",
        ),
        (b"[1, 2]", "a request is a JSON object ({...}), got list"),
        (b" " * (1024 * 1024 + 1), "the request is 1048577 bytes; a request is at most 1048576"),
        (b'{"base_models": ["\\ud800"], "dataset": "x"}', "the request holds invalid Unicode"),
        (b"[" * 100000, "the request is nested too deeply"),
    ],
)
def test_unreadable_requests_are_rejected(setup: tuple, raw: bytes, problem: str) -> None:
    _, _, intake = setup
    verdict = intake.take_bytes(raw, source="file", source_name="x.json")
    assert verdict.status == "rejected"
    assert verdict.problems[0].startswith(problem)


def test_a_pending_row_gets_its_verdict_written_back(setup: tuple) -> None:
    config, _, intake = setup
    con = sqlite3.connect(config.home.db_file)
    good = con.execute(
        "INSERT INTO training_requests (payload) VALUES (?)", (json.dumps(request()),)
    ).lastrowid
    bad = con.execute(
        "INSERT INTO training_requests (payload) VALUES (?)", ('{"base_models": []}',)
    ).lastrowid
    con.commit()
    assert good is not None and bad is not None
    assert take_row(intake, good) == Verdict("queued", good, run_id=intake_run(con, good))
    verdict = take_row(intake, bad)
    assert verdict is not None and verdict.status == "rejected"
    status, error = con.execute(
        "SELECT status, error FROM training_requests WHERE id = ?", (bad,)
    ).fetchone()
    assert status == "rejected"
    assert error == (
        "base_models: list should have at least 1 item after validation, not 0 "
        "(got [])\ndataset is required"
    )
    assert take_row(intake, bad) is None  # decided rows are never taken twice


def test_a_row_with_a_column_that_cannot_be_read_is_rejected_saying_which(setup: tuple) -> None:
    """Not skipped forever and not queued looking fine: refused, with the column named."""
    config, _, intake = setup
    con = sqlite3.connect(config.home.db_file)
    body = json.dumps(request())
    row = con.execute(
        "INSERT INTO training_requests (payload, created_at, problems) VALUES (?, 'now', 'none')",
        (body,),
    ).lastrowid
    con.commit()
    assert row is not None
    verdict = take_row(intake, row)
    assert verdict is not None and verdict.status == "rejected"
    assert verdict.problems == [
        "the row's problems column is not JSON; leave problems out of the INSERT "
        "(only payload is needed)",
        "the row's created_at column is not an ISO-8601 time; leave created_at out of the "
        "INSERT (only payload is needed)",
    ]
    status, problems = con.execute(
        "SELECT status, problems FROM training_requests WHERE id = ?", (row,)
    ).fetchone()
    assert (status, json.loads(problems)) == ("rejected", verdict.problems)
    assert con.execute("SELECT count(*) FROM runs").fetchone() == (0,)


def test_a_payload_stored_as_a_blob_is_read_as_utf8_text(setup: tuple) -> None:
    config, _, intake = setup
    con = sqlite3.connect(config.home.db_file)
    raw = json.dumps(request(request_id="blob-\u00e5")).encode()
    row = con.execute("INSERT INTO training_requests (payload) VALUES (?)", (raw,)).lastrowid
    con.commit()
    assert row is not None
    verdict = take_row(intake, row)
    assert verdict is not None and verdict.status == "queued", verdict.problems
    assert con.execute("SELECT request_key FROM runs").fetchone() == ("blob-\u00e5",)
    assert Incoming.of_row(7, raw).payload == raw.decode("utf-8")


def intake_run(con: sqlite3.Connection, request_pk: int) -> str:
    (run_id,) = con.execute(
        "SELECT r.run_id FROM runs r JOIN training_requests t ON t.run_id = r.id WHERE t.id = ?",
        (request_pk,),
    ).fetchone()
    return str(run_id)


def test_versions_within_one_batch_never_collide(setup: tuple) -> None:
    config, _, intake = setup
    (config.home.zero / "weights" / "oneseek-7b-zero-v1.4.json").write_text("{}")
    items = [
        Incoming.of_bytes(json.dumps(request(seed=i, **extra)).encode(), "file", f"{i}.json")
        for i, extra in enumerate([{}, {"version": "1.2"}, {}, {"version": "1.6"}, {}])
    ]
    verdicts = intake.take_batch(items)
    assert [v.status for v in verdicts if v] == ["queued", "queued", "queued", "rejected", "queued"]
    con = sqlite3.connect(config.home.db_file)
    assert [v for (v,) in con.execute("SELECT version FROM runs ORDER BY id")] == [
        "1.5",
        "1.2",
        "1.6",
        "1.7",
    ]


def test_a_cancelled_run_keeps_its_version_unless_named_again_and_it_left_nothing(
    setup: tuple,
) -> None:
    """`runs` never shows one version twice unless the operator asked for it by name, and a
    version that left a file is never given again."""
    config, engine, intake = setup
    first = take(intake, request())
    assert first.status == "queued"
    queue.request_cancel(engine, str(first.run_id))
    con = sqlite3.connect(config.home.db_file)
    assert con.execute("SELECT version, state FROM runs").fetchall() == [("1.0", "cancelled")]
    # without a version: the next one, not the cancelled run's again
    second = take(intake, request(epochs=2))
    assert second.status == "queued", second.problems
    assert con.execute(
        "SELECT version FROM runs WHERE run_id = ?", (second.run_id,)
    ).fetchone() == ("1.1",)
    # named explicitly: the cancelled run produced nothing, so 1.0 may be taken again
    queue.request_cancel(engine, str(second.run_id))
    con.execute(
        "INSERT INTO artifacts (run_id, path, kind, bytes, sha256, created_at) "
        "SELECT id, 'models/x.pth', 'weights', 1, ?, '2026-01-01T00:00:00.000000Z' FROM runs "
        "WHERE run_id = ?",
        ("0" * 64, second.run_id),
    )
    con.commit()
    again = take(intake, request(version="1.0", epochs=3))
    assert again.status == "queued", again.problems
    # 1.1 left a file: it stays taken, even when named
    refused = take(intake, request(version="1.1", epochs=4))
    assert refused.problems == [
        "version 1.1 already exists; omit version to take the next free "
        "one (1.2), or name a new one"
    ]


def test_impossible_options_are_refused_with_their_fix_at_once(
    setup: tuple,
) -> None:
    _, _, intake = setup
    verdict = take(
        intake,
        request(
            precision="fp16",
            packingEnabled=True,
            optimizer="paged_adamw_8bit",
            per_model={"kb-llama": {"loraRank": 16, "useRslora": True}},
        ),
    )
    assert verdict.status == "rejected"
    assert verdict.problems == [
        'precision "fp16" needs a CUDA GPU, and this host has none; ask for "auto", '
        '"bf16" or "fp32"',
        'optimizer "paged_adamw_8bit" pages through CUDA memory, and this host has no GPU; '
        'ask for "adamw_8bit" (the same 8-bit state, unpaged) or "adamw_torch"',
    ]
    queued = take(intake, request(lr_scheduler="linear", warmupSteps=5, loraRank=16))
    assert queued.status == "queued", queued.problems
