"""What a record trains on: its token ids and which of them are labels.

Instruction tuning trains the model on what it should say, not on the question it is asked
(LLaMA-Factory's `train_on_prompt: false`, axolotl's `train_on_inputs: false`, TRL's
completion-only loss), so by default:

- `{"text"}`: every token is a label;
- `{"instruction", "input"?, "output"}`: the output and the eos after it;
- `{"messages"}`: every assistant turn, with the end-of-turn token(s) the template closes it
  with; system and user turns are input only. With a chat template the boundaries are the
  template's own: the ids of the conversation rendered up to each assistant turn (with the
  generation prompt) and through it are matched against the whole conversation's ids, so no
  boundary is guessed from strings.

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

from oneseekd.trainer.data import Encoded, Records, refuse


class RecordProblem(Exception):
    """Why one record cannot be trained on, worded for the person who wrote it."""


@dataclass(frozen=True)
class Encoding:
    ids: list[int]
    mask: list[int]  # 1: a label
    truncated: bool


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


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

    def _template(self, messages: list[dict[str, Any]], prompt: bool) -> list[int]:
        text = self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)
        return self._ids(str(text))

    # --- the record's tokens and labels, before truncation ---------------------------------
    def _pieces(self, record: dict[str, Any]) -> tuple[list[int], list[int], int]:
        """ids, label mask, and how many leading ids left truncation keeps."""
        if isinstance(record.get("text"), str):
            ids = list(self.tok(record["text"], add_special_tokens=True)["input_ids"])
            return self._close(ids, [1] * len(ids), True)
        if "messages" in record:
            if self.templated:
                return self._templated(record["messages"])
            parts: list[tuple[str, bool]] = []
            for m in record["messages"]:
                parts.append((f"<|{m['role']}|>\n", False))
                parts.append((f"{m['content']}\n", m["role"] == "assistant"))
            last = record["messages"][-1]["role"] == "assistant"
        else:
            prompt = f"### Instruction:\n{record['instruction']}\n\n"
            if record.get("input"):
                prompt += f"### Input:\n{record['input']}\n\n"
            parts = [(prompt + "### Response:\n", False), (str(record["output"]), True)]
            last = True
        ids, mask = list(self.lead), [0] * len(self.lead)
        for text, labelled in parts:
            piece = self._ids(text)
            ids += piece
            mask += [int(labelled)] * len(piece)
        ids += self.trail
        mask += [int(last)] * len(self.trail)
        return self._close(ids, mask, last)

    def _close(
        self, ids: list[int], mask: list[int], last: bool
    ) -> tuple[list[int], list[int], int]:
        """eos appended (a label when the record ends with what the model says)."""
        if self.eos is not None and (not ids or ids[-1] != self.eos):
            ids, mask = [*ids, self.eos], [*mask, int(last)]
        return ids, mask, len(self.lead)

    def _templated(self, messages: list[dict[str, Any]]) -> tuple[list[int], list[int], int]:
        full = self._template(messages, prompt=False)
        mask = [0] * len(full)
        for turn, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            start = common_prefix(self._template(messages[:turn], prompt=True), full)
            end = common_prefix(self._template(messages[: turn + 1], prompt=False), full)
            for position in range(start, end):
                mask[position] = 1
        bos = getattr(self.tok, "bos_token_id", None)
        return full, mask, int(bool(full) and full[0] == bos)

    # --- what the trainer calls -----------------------------------------------------------
    def encode(self, record: dict[str, Any]) -> Encoding:
        ids, mask, keep = self._pieces(record)
        if self.train_on_prompt:
            mask = [1] * len(ids)
        truncated = len(ids) > self.max_len
        if truncated and self.left:
            cut = len(ids) - self.max_len
            ids, mask = ids[:keep] + ids[keep + cut :], mask[:keep] + mask[keep + cut :]
        elif truncated:
            ids, mask = ids[: self.max_len], mask[: self.max_len]
        if len(ids) < 2:
            raise RecordProblem(
                f"encodes to {len(ids)} token(s); a record needs at least 2 to train on"
            )
        if not any(mask[1:]):
            raise RecordProblem(self._unlabelled(record, truncated))
        return Encoding(ids, mask, truncated)

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
    encoded = Encoded([e.ids for e in encodings], [e.mask for e in encodings])
    return encoded, sum(e.truncated for e in encodings)
