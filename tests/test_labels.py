"""What the trainer trains on: labels from each record's structure, under the tokenizer's own
chat template, special tokens once, truncation that keeps the answer, and the split."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizer, PreTrainedTokenizerFast

from oneseekd.home import HomePaths
from oneseekd.intake.checks import check_dataset
from oneseekd.trainer.data import (
    IGNORE_INDEX,
    DataError,
    Encoded,
    Records,
    collate,
    duplicates,
    load_records,
    split,
)
from oneseekd.trainer.labels import Encoder, encode_records
from oneseekd.trainer.loading import ModelRefused
from oneseekd.trainer.tiny import CORPUS, tiny_tokenizer

# The Llama 3 family's template (KB-Llama-3.1-8B-Swedish's among them), its date and tool
# branches left out: it begins with the BOS token itself and ends every turn with <|eot_id|>.
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' "
    "+ message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}"
)


def llama3_tokenizer() -> PreTrainedTokenizerFast:
    """The tiny BPE tokenizer dressed as Llama 3's: its special tokens, a post-processor that
    adds <|begin_of_text|> to every text (as Llama 3's does), and its chat template."""
    tok = tiny_tokenizer()
    tok.add_special_tokens(
        {
            "bos_token": "<|begin_of_text|>",
            "eos_token": "<|end_of_text|>",
            "additional_special_tokens": [
                "<|start_header_id|>",
                "<|end_header_id|>",
                "<|eot_id|>",
            ],
        }
    )
    bos = tok.convert_tokens_to_ids("<|begin_of_text|>")
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A",
        pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", bos)],
    )
    tok.chat_template = LLAMA3_TEMPLATE
    return tok


def spans(ids: list[int], mask: list[int]) -> list[list[int]]:
    """The runs of labelled ids."""
    runs: list[list[int]] = []
    for i, (token, label) in enumerate(zip(ids, mask, strict=True)):
        if label:
            if i == 0 or not mask[i - 1]:
                runs.append([])
            runs[-1].append(token)
    return runs


CHAT = {
    "messages": [
        {"role": "system", "content": "Du svarar kort."},
        {"role": "user", "content": "Vem stiftar lagar?"},
        {"role": "assistant", "content": "Riksdagen stiftar lagar."},
        {"role": "user", "content": "Och kommunerna?"},
        {"role": "assistant", "content": "Kommunerna ansvarar för skolan."},
    ]
}


def test_an_instruction_record_trains_on_its_output_and_eos_only() -> None:
    tok = tiny_tokenizer()
    record = {"instruction": "Sammanfatta", "input": "Kommun 1", "output": "Skolan."}
    got = Encoder(tok, 128).encode(record)
    output = tok("Skolan.", add_special_tokens=False)["input_ids"]
    assert spans(got.ids, got.mask) == [[*output, tok.eos_token_id]]
    assert got.ids[-len(output) - 1 :] == [*output, tok.eos_token_id]
    prompt = tok.decode(got.ids[: len(got.ids) - len(output) - 1])
    assert prompt == "### Instruction:\nSammanfatta\n\n### Input:\nKommun 1\n\n### Response:\n"


def test_a_two_turn_chat_trains_on_each_assistant_turn_and_its_end_of_turn_token() -> None:
    tok = llama3_tokenizer()
    got = Encoder(tok, 256).encode(CHAT)
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    answers = ["Riksdagen stiftar lagar.", "Kommunerna ansvarar för skolan."]
    assert spans(got.ids, got.mask) == [
        [*tok(a, add_special_tokens=False)["input_ids"], eot] for a in answers
    ]
    # the ids are the template's own rendering, tokenized once
    rendered = tok.apply_chat_template(CHAT["messages"], tokenize=False)
    assert got.ids == tok(rendered, add_special_tokens=False)["input_ids"]


def test_a_chat_without_a_template_trains_on_the_assistant_turns() -> None:
    tok = tiny_tokenizer()
    assert not tok.chat_template
    got = Encoder(tok, 256).encode(CHAT)
    assert [tok.decode(s) for s in spans(got.ids, got.mask)] == [
        "Riksdagen stiftar lagar.\n",
        "Kommunerna ansvarar för skolan.\n</s>",
    ]


def test_train_on_prompt_labels_every_token_but_padding() -> None:
    tok = llama3_tokenizer()
    encoder = Encoder(tok, 256, train_on_prompt=True)
    rows = [encoder.encode(CHAT), encoder.encode({"instruction": "A", "output": "B"})]
    assert all(all(r.mask) for r in rows)
    batch = collate(Encoded([r.ids for r in rows], [r.mask for r in rows]), [0, 1], 0)
    real = batch["attention_mask"] == 1
    assert (batch["labels"][real] == batch["input_ids"][real]).all()
    assert (batch["labels"][~real] == IGNORE_INDEX).all() and (~real).any()
    # and by default the prompt's positions are not labels
    plain = Encoder(tok, 256).encode(CHAT)
    default = collate(Encoded([plain.ids], [plain.mask]), [0], 0)["labels"][0]
    assert int((default != IGNORE_INDEX).sum()) == sum(plain.mask) < len(plain.ids)


@pytest.mark.parametrize(
    "record",
    [CHAT, {"instruction": "Sammanfatta", "output": "Kort."}, {"text": "Riksdagen beslutar."}],
    ids=["chat", "instruction", "text"],
)
def test_a_bos_adding_tokenizer_with_a_llama3_template_gives_one_bos(record: dict) -> None:
    tok = llama3_tokenizer()
    bos = tok.convert_tokens_to_ids("<|begin_of_text|>")
    assert tok("x")["input_ids"][0] == bos  # the tokenizer adds it of its own accord
    got = Encoder(tok, 256).encode(record)
    assert got.ids[0] == bos and got.ids.count(bos) == 1


def _dataset(tmp_path: Path, records: list[dict]) -> Path:
    path = tmp_path / "datasets" / "d.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_a_record_whose_response_would_be_cut_off_is_refused_with_its_line(
    tmp_path: Path,
) -> None:
    long_prompt = " ".join(["Riksdagen beslutar om lagar"] * 20)
    records = [
        {"instruction": "Sammanfatta", "output": "Kort."},
        {"instruction": long_prompt, "output": "Kort."},
        {"text": "Riksdagen beslutar om lagar och budget."},
    ]
    loaded = load_records(_dataset(tmp_path, records))
    with pytest.raises(DataError) as err:
        encode_records(Encoder(tiny_tokenizer(), 32), loaded, "d.jsonl", "tiny-llama")
    assert str(err.value) == (
        "dataset d.jsonl has 1 record(s) tiny-llama cannot train on\n"
        "  - line 2: its response would be cut off entirely at max_seq_len 32: shorten the "
        'prompt, raise max_seq_len, or set truncation_side: "left" to cut the prompt instead'
    )
    # cut from the prompt's side, the answer stays whole, and the record is counted
    encoded, truncated = encode_records(
        Encoder(tiny_tokenizer(), 32, truncation_side="left"), loaded, "d.jsonl", "tiny-llama"
    )
    assert truncated == 1 and len(encoded.ids[1]) == 32
    tok = tiny_tokenizer()
    answer = [*tok("Kort.", add_special_tokens=False)["input_ids"], tok.eos_token_id]
    assert spans(encoded.ids[1], encoded.mask(1)) == [answer]


def test_a_chat_without_an_assistant_turn_is_refused_unless_training_on_prompts(
    tmp_path: Path,
) -> None:
    records = [CHAT, {"messages": [{"role": "user", "content": "Hej"}]}]
    loaded = load_records(_dataset(tmp_path, records))
    with pytest.raises(DataError) as err:
        encode_records(Encoder(tiny_tokenizer(), 64), loaded, "d.jsonl", "tiny-llama")
    assert str(err.value).endswith(
        "  - line 2: has no assistant turn to train on: add one, or set train_on_prompt: true "
        "to train on the whole conversation"
    )
    encode_records(Encoder(tiny_tokenizer(), 64, train_on_prompt=True), loaded, "d", "k")


def test_an_empty_text_is_refused_by_line_at_intake_and_before_training(tmp_path: Path) -> None:
    records = [{"text": "Riksdagen."}, {"text": "Regeringen."}, {"text": ""}, {"text": "Ja."}]
    path = _dataset(tmp_path, records)
    with pytest.raises(DataError) as err:
        load_records(path)
    assert str(err.value) == (
        "dataset d.jsonl has 1 bad records\n  - line 3: has an empty text: nothing to train on"
    )
    _, problems = check_dataset("d.jsonl", HomePaths(tmp_path))
    assert problems == ["dataset 'd.jsonl' line 3 has an empty text: nothing to train on"]


def test_a_record_of_fewer_than_two_tokens_is_refused() -> None:
    tok = tiny_tokenizer()
    tok.eos_token = None  # nothing appended: one character is one token
    with pytest.raises(Exception, match=r"encodes to 1 token\(s\); a record needs at least 2"):
        Encoder(tok, 64).encode({"text": "a"})


def test_copies_of_a_record_never_straddle_the_split() -> None:
    words = random.Random(0)
    unique = [{"text": f"record {i} " + str(words.random())} for i in range(100)]
    records = [r for r in unique for _ in range(3)]
    random.Random(1).shuffle(records)
    train, val = split(records, 0.1, seed=42)
    assert sorted(train + val) == list(range(300))
    assert 30 <= len(val) <= 32 and len(val) % 3 == 0
    seen = {json.dumps(records[i]) for i in train}
    assert not [i for i in val if json.dumps(records[i]) in seen]
    assert duplicates(records) == 200
    assert split(records, 0.1, seed=42) == (train, val)  # the same on every attempt
    # key order and fields render ignores do not make a copy look new
    a = {"instruction": "x", "output": "y"}
    b = {"output": "y", "instruction": "x", "input": "", "note": 1}
    assert duplicates([a, b]) == 1
    assert Records([a, b], ["line 1", "line 2"]).where == ["line 1", "line 2"]


def test_train_on_prompt_and_truncation_side_are_request_fields() -> None:
    from oneseekd.intake.schema import parse_request

    base = {"base_models": ["llama"], "dataset": "d.jsonl"}
    request, problems = parse_request(
        {**base, "trainOnPrompt": True, "perModel": {"llama": {"trainOnPrompt": False}}}
    )
    assert problems == [] and request is not None
    assert request.train_on_prompt and request.per_model["llama"].train_on_prompt is False
    assert request.truncation_side == "right"
    assert parse_request(base)[0].train_on_prompt is False  # type: ignore[union-attr]
    assert parse_request({**base, "truncation_side": "middle"})[1] == [
        "truncation_side: input should be 'right' or 'left' (got 'middle')"
    ]


def sentencepiece_tokenizer() -> PreTrainedTokenizerFast:
    """A tiny tokenizer of the SentencePiece kind (Llama 2's, Mistral's): Metaspace puts a word
    boundary "▁" in front of every text it is given, and a post-processor adds <s>."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    tok.train_from_iterator(
        CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"])
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


@pytest.mark.parametrize(
    ("record", "text", "answers"),
    [
        (
            {"instruction": "Summarize the text.", "output": "Riksdagen beslutar om lagar."},
            "### Instruction:\nSummarize the text.\n\n### Response:\nRiksdagen beslutar om lagar.",
            ["Riksdagen beslutar om lagar.</s>"],
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "Hello there"},
                    {"role": "assistant", "content": "Riksdagen beslutar om lagar."},
                ]
            },
            "<|user|>\nHello there\n<|assistant|>\nRiksdagen beslutar om lagar.\n",
            ["Riksdagen beslutar om lagar.\n</s>"],
        ),
    ],
    ids=["instruction", "chat without a template"],
)
def test_a_record_is_tokenized_whole_as_inference_sees_it(
    record: dict, text: str, answers: list[str]
) -> None:
    """Tokenized piece by piece, a SentencePiece tokenizer starts the answer with a word
    boundary it never has after the prompt at inference ("▁Riksdagen" for "R", "iksdagen")."""
    tok = sentencepiece_tokenizer()
    whole = tok(text)["input_ids"]
    assert tok.convert_ids_to_tokens(whole).count("▁Riksdagen") == 0  # the case in point
    got = Encoder(tok, 256).encode(record)
    assert got.ids == [*whole, tok.eos_token_id]
    labels = [tok.decode(s) for s in spans(got.ids, got.mask)]
    assert labels == answers


class _CharTokenizer(PreTrainedTokenizer):
    """A slow (pure Python) tokenizer, one id per character: it gives no offsets."""

    def __init__(self) -> None:
        self.vocab = {c: i for i, c in enumerate(["</s>", *sorted(set("".join(CORPUS)))])}
        super().__init__(eos_token="</s>")

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def get_vocab(self) -> dict[str, int]:
        return dict(self.vocab)

    def _tokenize(self, text: str, **kwargs: object) -> list[str]:
        return list(text)

    def _convert_token_to_id(self, token: str) -> int:
        return self.vocab[token]

    def _convert_id_to_token(self, index: int) -> str:
        return next(c for c, i in self.vocab.items() if i == index)


def test_a_slow_tokenizer_is_refused_with_the_fix() -> None:
    tok = _CharTokenizer()
    assert not tok.is_fast
    with pytest.raises(ModelRefused) as err:
        Encoder(tok, 64)
    assert str(err.value) == (
        "its tokenizer is a slow (Python) one, which gives no character offsets: oneseekd "
        "finds each answer's tokens by them\n"
        "  - set use_fast_tokenizer: true (the default)"
    )


# A Mistral-style template: the answer follows "[/INST]" after a space, and ends with eos
INST_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}"
    "{{ '[INST] ' + m['content'] + ' [/INST]' }}{% else %}{{ ' ' + m['content'] + eos_token }}"
    "{% endif %}{% endfor %}"
)
INST_CHAT = {
    "messages": [
        {"role": "user", "content": "Vem stiftar lagar?"},
        {"role": "assistant", "content": "Riksdagen stiftar lagar."},
        {"role": "user", "content": "Och kommunerna?"},
        {"role": "assistant", "content": "Kommunerna ansvarar för skolan, 5 €."},
    ]
}


def label_bytes(tok: PreTrainedTokenizerFast, record: dict, max_len: int = 256) -> int:
    """The bytes held-out bits per byte divides a record's loss by (trainer/evaluate.py)."""
    got = Encoder(tok, max_len).encode(record)
    return Encoded([got.ids], [got.mask], [got.nbytes]).label_bytes()[0]


@pytest.mark.parametrize(
    ("record", "template", "answers"),
    [
        (
            INST_CHAT,
            INST_TEMPLATE,
            [" Riksdagen stiftar lagar.", " Kommunerna ansvarar för skolan, 5 €."],
        ),
        (
            {"instruction": "Vem stiftar lagar?", "output": "Riksdagen stiftar lagar för 5 €."},
            None,
            ["Riksdagen stiftar lagar för 5 €."],
        ),
    ],
    ids=["chat", "instruction"],
)
def test_two_tokenizers_of_one_text_count_the_same_target_bytes(
    record: dict, template: str | None, answers: list[str]
) -> None:
    """Issue 27, finding 6: each answer was decoded on its own, so the SentencePiece kind
    dropped the word boundary in front of it (one byte short a turn: 59 bytes against the
    byte-level tokenizer's 65 for this chat), its <unk> for "€" decoded to nothing, and the
    end of a turn counted no bytes. Counted from the offsets of the whole rendered text, both
    hold every byte of each answer, and its end of turn one byte."""
    counts = []
    for tok in (tiny_tokenizer(), sentencepiece_tokenizer()):
        tok.chat_template = template
        counts.append(label_bytes(tok, record))
    assert counts == [sum(len(a.encode()) + 1 for a in answers)] * 2


def test_a_record_cut_inside_a_character_counts_the_bytes_its_kept_tokens_hold() -> None:
    """Issue 27, finding 6: a row cut after the first of the three byte tokens of "€" counted
    the U+FFFD its decoding ends with, 3 bytes for the one it holds."""
    tok = tiny_tokenizer()
    record = {"text": "Riksdagen beslutar, 5 €"}
    whole = Encoder(tok, 256).encode(record)
    tokens = tok.convert_ids_to_tokens(whole.ids)
    assert tokens[-4:] == ["â", "Ĥ", "¬", "</s>"]  # "€" in three byte tokens, then eos
    cut = len(tokens) - 3  # keeps the first of them
    first = tok.decode(whole.ids[:1])  # predicted from nothing: not counted
    assert label_bytes(tok, record, cut) == len(b"Riksdagen beslutar, 5 ") - len(first) + 1
    assert label_bytes(tok, record) == len(record["text"].encode()) - len(first) + 1  # and eos
