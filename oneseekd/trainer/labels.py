"""What a record trains on: its token ids and which of them are labels.

Instruction tuning trains the model on what it should say, not on the question it is asked
(LLaMA-Factory's `train_on_prompt: false`, axolotl's `train_on_inputs: false`, TRL's
completion-only loss), so by default:

- `{"text"}`: every token is a label;
- `{"instruction", "input"?, "output"}`: the output and the eos after it;
- `{"messages"}`: every assistant turn, with the end-of-turn token the template closes it
  with; system and user turns, role headers and what a template writes after the
  end-of-turn token are input only. With a chat template the turns are where the template
  itself says (trainer/turns.py); a record whose template does not say is refused.

Every record is rendered to one text and tokenized once, as inference will see it
(SentencePiece tokenizers put a word boundary in front of each piece tokenized alone); a token
is a label when its characters (the tokenizer's offsets) overlap a response's span.

Each token also carries the UTF-8 bytes of the rendered text it holds (`token_bytes`), counted
from the same offsets: what held-out bits per byte divide by (trainer/evaluate.py), the same
for any tokenizer of the same text.

`train_on_prompt: true` labels every token. Special tokens are added once: a templated text
already holds them (Llama 3's template begins with <|begin_of_text|>), so it is tokenized
without adding them again; plain templates get the tokenizer's own (its BOS) once, in front.

Truncation to `max_seq_len` cuts the end (`truncation_side: "right"`, the default) or the
start after the leading special tokens (`"left"`, which keeps the answer); a record left
without a single label is refused, named by its line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jinja2 import TemplateError

from oneseekd.trainer import turns
from oneseekd.trainer.data import Encoded, Records, refuse
from oneseekd.trainer.tokenizer import ModelRefused
from oneseekd.trainer.turns import Span

# ids, label mask, the bytes of each token, and how many leading ids left truncation keeps
Pieces = tuple[list[int], list[int], list[int], int]


class RecordProblem(Exception):
    """Why one record cannot be trained on, worded for the person who wrote it."""


# the bytes a special token counts for, whatever its spelling (`<|eot_id|>`, `<|im_end|>`,
# `</s>`): the end of a turn is one mark in every family, as a newline ends a line
SPECIAL_BYTES = 1


@dataclass(frozen=True)
class Encoding:
    ids: list[int]
    mask: list[int]  # 1: a label
    truncated: bool
    nbytes: list[int]  # the bytes of the text each token holds (token_bytes)


def token_bytes(text: str, offsets: list[Span], ids: list[int], specials: set[int]) -> list[int]:
    """The UTF-8 bytes of `text` each token holds, from its offsets: every character counts
    its bytes once, so the tokens of a text hold its bytes whatever the tokenizer. A character
    cut into several tokens (a byte-level tokenizer's pieces of "€", SentencePiece's "▁" in
    front of a text's first character) shares its bytes among them, evenly, the remainder to
    the first: a byte-level piece holds its one byte, and a cut after it counts what the kept
    tokens hold. A special token of `specials` (an end of turn, an eos: never <unk>, which
    stands for text) counts SPECIAL_BYTES and none of its characters."""
    plain = [
        (max(a, 0), min(b, len(text))) if token not in specials else (0, 0)
        for token, (a, b) in zip(ids, offsets, strict=True)
    ]
    holders = [0] * len(text)  # how many tokens hold each character
    for a, b in plain:
        for c in range(a, b):
            holders[c] += 1
    given = [0] * len(text)  # how many of them have had their share so far
    counts = []
    for token, (a, b) in zip(ids, plain, strict=True):
        if token in specials:
            counts.append(SPECIAL_BYTES)
            continue
        total = 0
        for c in range(a, b):
            size = len(text[c].encode("utf-8", "surrogatepass"))
            share, extra = divmod(size, holders[c])
            total += share + (given[c] < extra)
            given[c] += 1
        counts.append(total)
    return counts


def labelled(offsets: list[Span], spans: list[Span]) -> list[int]:
    """1 for each token whose characters overlap a labelled span (a token that begins in the
    prompt and ends in the answer is the answer's: the model has to say it)."""
    return [int(any(s < b and a < e for a, b in spans)) for s, e in offsets]


class Encoder:
    def __init__(
        self,
        tokenizer: Any,
        max_len: int,
        train_on_prompt: bool = False,
        truncation_side: str = "right",
    ) -> None:
        self.tok = tokenizer
        self.max_len = max_len
        self.train_on_prompt = train_on_prompt
        self.left = truncation_side == "left"
        self.eos = tokenizer.eos_token_id
        self.templated = bool(getattr(tokenizer, "chat_template", None))
        self.lead, self.trail = self._specials()
        self.specials = turns.special_ids(tokenizer)
        # the special tokens that mark (a turn's end, a bos): not <unk>, which stands for text
        self.marks = self.specials - {getattr(tokenizer, "unk_token_id", None)}
        if not getattr(tokenizer, "is_fast", False):
            raise ModelRefused(
                "its tokenizer is a slow (Python) one, which gives no character offsets: "
                "oneseekd finds each answer's tokens by them",
                ["set use_fast_tokenizer: true (the default)"],
            )

    def _specials(self) -> tuple[list[int], list[int]]:
        """The ids the tokenizer puts before and after a text of its own accord (a BOS)."""
        bare = self._ids("a")
        full = list(self.tok("a", add_special_tokens=True)["input_ids"])
        for start in range(len(full) - len(bare) + 1):
            if full[start : start + len(bare)] == bare:
                return full[:start], full[start + len(bare) :]
        return [], []

    def _ids(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def _tokens(self, text: str) -> tuple[list[int], list[Span]]:
        """The text tokenized once, as inference will see it, with each token's characters."""
        got = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(got["input_ids"]), [(int(a), int(b)) for a, b in got["offset_mapping"]]

    # --- the record's tokens and labels, before truncation ---------------------------------
    def _pieces(self, record: dict[str, Any]) -> Pieces:
        """ids, label mask, the bytes of each token, and how many leading ids left truncation
        keeps."""
        if isinstance(record.get("text"), str):
            got = self.tok(record["text"], add_special_tokens=True, return_offsets_mapping=True)
            ids = list(got["input_ids"])
            offsets = [(int(a), int(b)) for a, b in got["offset_mapping"]]
            nbytes = token_bytes(record["text"], offsets, ids, self.marks)
            return self._close(ids, [1] * len(ids), nbytes, True)
        if "messages" in record:
            if self.templated:
                return self._templated(record["messages"])
            text, spans = "", []
            for m in record["messages"]:
                text += f"<|{m['role']}|>\n"
                if m["role"] == "assistant":
                    spans.append((len(text), len(text) + len(m["content"]) + 1))
                text += f"{m['content']}\n"
            last = record["messages"][-1]["role"] == "assistant"
        else:
            text = f"### Instruction:\n{record['instruction']}\n\n"
            if record.get("input"):
                text += f"### Input:\n{record['input']}\n\n"
            text += "### Response:\n"
            spans = [(len(text), len(text) + len(str(record["output"])))]
            text += str(record["output"])
            last = True
        body, offsets = self._tokens(text)
        ids = [*self.lead, *body, *self.trail]
        mask = [0] * len(self.lead) + labelled(offsets, spans) + [int(last)] * len(self.trail)
        nbytes = [
            *self._added(self.lead),
            *token_bytes(text, offsets, body, self.marks),
            *self._added(self.trail),
        ]
        return self._close(ids, mask, nbytes, last)

    def _added(self, ids: list[int]) -> list[int]:
        """The bytes of tokens put in by the tokenizer, not found in the text (a BOS)."""
        return [SPECIAL_BYTES if token in self.marks else 0 for token in ids]

    def _close(self, ids: list[int], mask: list[int], nbytes: list[int], last: bool) -> Pieces:
        """eos appended (a label when the record ends with what the model says)."""
        if self.eos is not None and (not ids or ids[-1] != self.eos):
            ids, mask = [*ids, self.eos], [*mask, int(last)]
            nbytes = [*nbytes, *self._added([self.eos])]
        return ids, mask, nbytes, len(self.lead)

    def _templated(self, messages: list[dict[str, Any]]) -> Pieces:
        try:
            return self._turns(messages)
        except TemplateError as exc:  # the template's raise_exception: its own words
            raise RecordProblem(f"its chat template refuses it: {exc}") from exc

    def _turns(self, messages: list[dict[str, Any]]) -> Pieces:
        full = turns.render(self.tok, messages, prompt=False)
        ids, offsets = self._tokens(full)
        nbytes = token_bytes(full, offsets, ids, self.marks)
        try:
            if self.train_on_prompt:  # every token a label: where the turns are does not matter
                mask = [1] * len(ids)
            else:
                found = turns.assistant_spans(self.tok, messages, full, ids, offsets, self.specials)
                mask = labelled(offsets, found)
        except turns.TemplateProblem as exc:
            if not turns.has_generation_markers(self.tok):
                raise RecordProblem(str(exc)) from exc
            marked, mask = turns.marked_mask(self.tok, messages)
            if marked != ids:  # the same render, tokenized the same way: never seen to differ
                raise RecordProblem(
                    "its chat template's {% generation %} markers give other tokens than its "
                    "render does, so the bytes of the answer cannot be counted: give the model "
                    "a chat template that renders each turn the same whatever follows it"
                ) from exc
        bos = getattr(self.tok, "bos_token_id", None)
        return ids, mask, nbytes, int(bool(ids) and ids[0] == bos)

    # --- what the trainer calls -----------------------------------------------------------
    def encode(self, record: dict[str, Any]) -> Encoding:
        ids, mask, nbytes, keep = self._pieces(record)
        if self.train_on_prompt:
            mask = [1] * len(ids)
        truncated = len(ids) > self.max_len
        if truncated and self.left:
            cut = len(ids) - self.max_len
            ids, mask = ids[:keep] + ids[keep + cut :], mask[:keep] + mask[keep + cut :]
            nbytes = nbytes[:keep] + nbytes[keep + cut :]
        elif truncated:
            ids, mask = ids[: self.max_len], mask[: self.max_len]
            nbytes = nbytes[: self.max_len]
        if len(ids) < 2:
            raise RecordProblem(
                f"encodes to {len(ids)} token(s); a record needs at least 2 to train on"
            )
        if not any(mask[1:]):
            raise RecordProblem(self._unlabelled(record, truncated))
        return Encoding(ids, mask, truncated, nbytes)

    def _unlabelled(self, record: dict[str, Any], truncated: bool) -> str:
        if truncated:
            return (
                f"its response would be cut off entirely at max_seq_len {self.max_len}: "
                'shorten the prompt, raise max_seq_len, or set truncation_side: "left" to '
                "cut the prompt instead"
            )
        if "messages" in record and not any(m["role"] == "assistant" for m in record["messages"]):
            return (
                "has no assistant turn to train on: add one, or set train_on_prompt: true to "
                "train on the whole conversation"
            )
        return "has nothing to train on: its response encodes to no tokens"


def encode_records(
    encoder: Encoder, records: Records, dataset: str, key: str
) -> tuple[Encoded, int]:
    """Every record's ids and labels, and how many were truncated; all the records that
    cannot be trained on refused at once, each named by its line."""
    encodings, problems = [], []
    for record, where in zip(records.items, records.where, strict=True):
        try:
            encodings.append(encoder.encode(record))
        except RecordProblem as exc:
            problems.append(f"{where}: {exc}")
    if problems:
        raise refuse(dataset, problems, f"record(s) {key} cannot train on")
    encoded = Encoded(
        [e.ids for e in encodings], [e.mask for e in encodings], [e.nbytes for e in encodings]
    )
    return encoded, sum(e.truncated for e in encodings)
