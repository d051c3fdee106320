"""Datasets are read one way at intake and in the trainer (oneseekd/intake/records.py), whole,
and refused at the door with the line that is wrong."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest
from homes import request, take

from oneseekd.trainer.data import DataError, load_records


def line(record: object) -> bytes:
    """One JSONL line with every non-ASCII character raw, as most writers leave them."""
    return json.dumps(record, ensure_ascii=False).encode() + b"\n"


def test_records_are_split_on_newlines_only_at_intake_and_in_the_trainer(setup: tuple) -> None:
    # issue 26, item 7: str.splitlines() also splits on these, which stand raw in JSON strings
    config, _, intake = setup
    texts = ["a\u2028b", "c\u2029d", "e\u0085f", "g\x1ch\x1di\x1ej", "k\x0bl\x0cm"]
    path = config.home.datasets / "separators.jsonl"
    # json.dumps escapes the control characters: write every one raw
    path.write_bytes(b"".join(b'{"text": "' + t.encode() + b'"}\n' for t in texts))
    assert b"\x1c" in path.read_bytes() and b"\xe2\x80\xa8" in path.read_bytes()
    assert take(intake, request(dataset="separators.jsonl")).status == "queued"
    loaded = load_records(path)
    assert [r["text"] for r in loaded.items] == texts
    assert loaded.where == ["line 1", "line 2", "line 3", "line 4", "line 5"]
    # a bad record after them is named by its own line, the same at both doors
    path.write_bytes(path.read_bytes() + b"\n" + line({"text": ""}))
    verdict = take(intake, request(dataset="separators.jsonl"))
    assert verdict.problems == [
        "dataset 'separators.jsonl' line 7 has an empty text: nothing to train on"
    ]
    with pytest.raises(DataError) as err:
        load_records(path)
    assert str(err.value) == (
        "dataset separators.jsonl has 1 bad records\n"
        "  - line 7: has an empty text: nothing to train on"
    )


def test_invalid_utf8_anywhere_is_refused_at_intake_with_its_line_and_offset(
    setup: tuple,
) -> None:
    # issue 26, item 8: only the first 64 KiB were sniffed; the run then failed with a raw
    # UnicodeDecodeError naming no line
    config, _, intake = setup
    good = line({"text": "Riksdagen beslutar om lagar och budget, år för år."})
    head = good * 4000  # well past any sniffed head
    path = config.home.datasets / "late.jsonl"
    path.write_bytes(head + b'{"text": "bad \xff byte"}\n' + good)
    offset = len(head) + len(b'{"text": "bad ')
    verdict = take(intake, request(dataset="late.jsonl"))
    assert verdict.problems == [
        f"dataset 'late.jsonl' line 4001 is not UTF-8 text (invalid byte at offset {offset})"
    ]
    with pytest.raises(DataError) as err:
        load_records(path)
    assert str(err.value) == (
        "dataset late.jsonl has 1 bad records\n"
        f"  - line 4001: is not UTF-8 text (invalid byte at offset {offset})"
    )


def test_a_dataset_is_checked_whole_in_little_memory(tmp_path: Path) -> None:
    from oneseekd.intake.records import scan  # the reader intake and the trainer share

    path = tmp_path / "big.jsonl"
    with path.open("wb") as fh:
        for n in range(40_000):
            fh.write(line({"text": f"record {n}: " + "ord " * 20}))
    assert path.stat().st_size > 4_000_000
    tracemalloc.start()
    found = scan(path, keep=False)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert (found.rows, found.problem_count, found.varied) == (40_000, 0, True)
    assert peak < 256 * 1024, peak


def test_chats_that_cannot_be_trained_are_refused_at_intake_with_their_line(
    setup: tuple,
) -> None:
    # issue 26, item 9: these were trained, certified and made current
    config, _, intake = setup

    def chat(*turns: tuple[str, str]) -> dict[str, object]:
        return {"messages": [{"role": r, "content": c} for r, c in turns]}

    records = [
        chat(("system", "Svara kort."), ("user", "Hej"), ("assistant", "Hej!")),
        chat(("user", "Hej"), ("assistant", "")),
        chat(("user", "Hej"), ("hacker", "rm -rf"), ("assistant", "Nej.")),
        chat(("user", "Väder?"), ("tool", "{}"), ("assistant", "Sol.")),
        chat(("system", "Svara kort."), ("assistant", "Hej!"), ("user", "Hej")),
        chat(("user", "Hej"), ("assistant", " \n")),
    ]
    path = config.home.datasets / "chats.jsonl"
    path.write_bytes(b"".join(line(r) for r in records))
    verdict = take(intake, request(dataset="chats.jsonl"))
    assert verdict.problems == [
        "dataset 'chats.jsonl' line 2 has an empty assistant turn (message 2): nothing to train on",
        "dataset 'chats.jsonl' line 3 has an unknown role 'hacker' (message 2); the roles are "
        "system, user and assistant",
        "dataset 'chats.jsonl' line 4 has a tool turn (message 2); oneseekd trains on system, "
        "user and assistant turns only: leave tool turns out",
        "dataset 'chats.jsonl' line 5 opens with the assistant (it speaks before any user "
        "turn); a chat starts with a user turn, after any system turn",
        "dataset 'chats.jsonl' line 6 has an empty assistant turn (message 2): nothing to train on",
    ]
    with pytest.raises(DataError) as err:
        load_records(path)
    assert str(err.value).startswith("dataset chats.jsonl has 5 bad records\n  - line 2: ")


def test_a_dataset_that_can_hold_no_record_out_is_refused_at_intake(setup: tuple) -> None:
    # issue 26, item 6: 40 copies of one record gave 0 validation rows at val_fraction 0.1,
    # and the run was scored on rows it trained on
    config, _, intake = setup
    (config.home.datasets / "same.jsonl").write_bytes(line({"text": "Riksdagen."}) * 40)
    verdict = take(intake, request(dataset="same.jsonl"))
    assert verdict.problems == [
        "dataset 'same.jsonl' holds 40 copies of one record: no record can be held out for "
        "validation (copies always fall on one side); add different records"
    ]
    # val_fraction 0 asks for no held-out rows: queued, and certified "not measured"
    assert take(intake, request(dataset="same.jsonl", val_fraction=0)).status == "queued"
    (config.home.datasets / "one.jsonl").write_bytes(line({"text": "Riksdagen."}))
    assert take(intake, request(dataset="one.jsonl")).problems == [
        "dataset 'one.jsonl' has 1 record; at least 2 are needed"
    ]


def test_a_json_array_is_read_by_the_same_reader_with_its_line_and_offset(setup: tuple) -> None:
    config, _, intake = setup
    path = config.home.datasets / "array.json"
    raw = b'[{"text": "a"},\n {"text": "b\xc3"}]'
    path.write_bytes(raw)
    assert take(intake, request(dataset="array.json")).problems == [
        f"dataset 'array.json' line 2 is not UTF-8 text (invalid byte at offset {raw.index(0xC3)})"
    ]
    path.write_bytes(b'[{"text": "a"},\n {"text": ]')
    assert take(intake, request(dataset="array.json")).problems == [
        "dataset 'array.json' is not a valid JSON array: Expecting value at line 2"
    ]
    path.write_bytes(b'[{"text": "a"},\n {"text": " "}]')
    assert take(intake, request(dataset="array.json")).problems == [
        "dataset 'array.json' record 1 has an empty text: nothing to train on"
    ]
