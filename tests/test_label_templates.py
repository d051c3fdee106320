"""Labels under the real chat templates of six families (tests/chattemplates.py): every labelled
span is exactly an assistant turn's content and its end-of-turn token, and a template that
does not say where a turn is refuses the record instead of labelling a guess (issue 27,
findings 1 and 3)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from chattemplates import FAMILIES, MISTRAL_V0_3, Family
from test_labels import spans

from oneseekd.trainer.data import DataError, load_records
from oneseekd.trainer.labels import Encoder, encode_records

SYSTEM = {"role": "system", "content": "Du svarar kort."}
TURNS = [
    {"role": "user", "content": "Vem stiftar lagar?"},
    {"role": "assistant", "content": "Riksdagen stiftar lagar."},
    {"role": "user", "content": "Och kommunerna?"},
    {"role": "assistant", "content": "Kommunerna ansvarar för skolan."},
]
ANSWERS = ["Riksdagen stiftar lagar.", "Kommunerna ansvarar för skolan."]


def _cases() -> list[tuple[Family, list[dict[str, str]]]]:
    cases = []
    for family in FAMILIES:
        cases.append((family, TURNS))
        cases.append((family, TURNS[:2]))
        if family.system:
            cases.append((family, [SYSTEM, *TURNS]))
    return cases


@pytest.mark.parametrize(
    ("family", "messages"),
    _cases(),
    ids=lambda v: v.name if isinstance(v, Family) else f"{len(v)} messages",
)
def test_every_labelled_span_is_an_assistant_turn_and_its_end_of_turn_token(
    family: Family, messages: list[dict[str, str]]
) -> None:
    tok = family.tokenizer()
    got = Encoder(tok, 1024).encode({"messages": messages})
    rendered = tok.apply_chat_template(messages, tokenize=False)
    assert got.ids == tok(rendered, add_special_tokens=False)["input_ids"]  # tokenized once
    labelled = [tok.decode(run) for run in spans(got.ids, got.mask)]
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    assert labelled == [family.answer.format(content=a) for a in answers]


def _dataset(tmp_path: Path, records: list[dict]) -> Path:
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.mark.parametrize("name", ["mistral-v0.3", "mistral-nemo"])
def test_a_mistral_template_with_a_system_message_refuses_the_record_and_names_why(
    tmp_path: Path, name: str
) -> None:
    """These templates put the system message into the last user message: rendered up to the
    first answer it sits in the first user turn, rendered whole it is gone. The old labels
    took everything after the common prefix, the user's question and [/INST] included."""
    [family] = [f for f in FAMILIES if f.name == name]
    records = [{"messages": TURNS}, {"messages": [SYSTEM, *TURNS[:2]]}]
    loaded = load_records(_dataset(tmp_path, records))
    with pytest.raises(DataError) as err:
        encode_records(Encoder(family.tokenizer(), 1024), loaded, "d.jsonl", name)
    assert str(err.value) == (
        f"dataset d.jsonl has 1 record(s) {name} cannot train on\n"
        "  - line 2: its chat template renders the conversation up to assistant turn 1 "
        "differently from the start of the whole conversation (it moves the system message "
        "into the last user message, as Mistral's templates do) and has no {% generation %} "
        "markers, so which tokens are the answer cannot be told: drop the system message "
        "from this record, or give the model a chat template that renders each turn the same "
        "whatever follows it"
    )


def test_generation_markers_name_the_answer_where_the_prefix_does_not_hold() -> None:
    [family] = [f for f in FAMILIES if f.name == "mistral-v0.3"]
    tok = family.tokenizer()
    tok.chat_template = MISTRAL_V0_3.replace(
        '{{- " " + message["content"]|trim + eos_token}}',
        '{%- generation %}{{- " " + message["content"]|trim + eos_token}}{%- endgeneration %}',
    )
    got = Encoder(tok, 1024).encode({"messages": [SYSTEM, *TURNS]})
    rendered = tok.apply_chat_template([SYSTEM, *TURNS], tokenize=False)
    assert got.ids == tok(rendered, add_special_tokens=False)["input_ids"]
    assert [tok.decode(run) for run in spans(got.ids, got.mask)] == [f" {a}</s>" for a in ANSWERS]


def test_a_template_that_raises_refuses_the_record_with_its_words(tmp_path: Path) -> None:
    [family] = [f for f in FAMILIES if f.name == "gemma-2"]
    records = [{"messages": TURNS}, {"messages": [SYSTEM, *TURNS]}]
    loaded = load_records(_dataset(tmp_path, records))
    with pytest.raises(DataError) as err:
        encode_records(Encoder(family.tokenizer(), 1024), loaded, "d.jsonl", "gemma")
    assert str(err.value) == (
        "dataset d.jsonl has 1 record(s) gemma cannot train on\n"
        "  - line 2: its chat template refuses it: System role not supported"
    )


def test_train_on_prompt_takes_a_mistral_record_with_a_system_message_whole() -> None:
    [family] = [f for f in FAMILIES if f.name == "mistral-v0.3"]
    tok = family.tokenizer()
    got = Encoder(tok, 1024, train_on_prompt=True).encode({"messages": [SYSTEM, *TURNS]})
    rendered = tok.apply_chat_template([SYSTEM, *TURNS], tokenize=False)
    assert got.ids == tok(rendered, add_special_tokens=False)["input_ids"] and all(got.mask)
