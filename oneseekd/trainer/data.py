"""Training data: load and check every record, split, tokenize with labels, batch.

Records are `{"text": ...}`, `{"instruction", "input"?, "output"}`, or `{"messages": [...]}`.
Chat records use the tokenizer's chat template when it has one; otherwise, and for
instruction records, these plain templates (documented in docs/training.md):

    ### Instruction:\\n{instruction}\\n\\n### Input:\\n{input}\\n\\n### Response:\\n{output}
    <|{role}|>\\n{content}\\n   (one block per message)

What is trained on (the labels) follows the record's structure (labels.py): the response of
an instruction record, every assistant turn of a chat with its end-of-turn token, the whole of
a text record; `train_on_prompt` labels everything.

The validation split is by record content, so copies of one record all fall on one side.
Batches are grouped by length (sorted within shuffled windows of 50 batches), which keeps
padding low without giving up shuffling; the padding fraction is reported.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from oneseekd import protocol
from oneseekd.errors import OneseekError
from oneseekd.intake.records import content_key, scan
from oneseekd.trainer.rows import Rows

if TYPE_CHECKING:  # imported by collate only: the dry run encodes records without torch
    import torch

# the label of a position that is not learned (cross_entropy's own default): the data, the
# packer and the held-out evaluation all write it
IGNORE_INDEX = -100

WINDOW_BATCHES = 50
SHOWN_PROBLEMS = 20


class DataError(OneseekError):
    exit_code = protocol.EXIT_REFUSED


def refuse(name: str, problems: list[str], what: str = "bad records") -> DataError:
    """Every problem at once, the first SHOWN_PROBLEMS of them listed."""
    shown = problems[:SHOWN_PROBLEMS] + (
        [f"... and {len(problems) - SHOWN_PROBLEMS} more"] if len(problems) > SHOWN_PROBLEMS else []
    )
    return DataError(f"dataset {name} has {len(problems)} {what}", shown)


@dataclass(frozen=True)
class Records:
    """The records of a dataset and where each was read (`line 3`, `record 2`), for errors
    that name the record."""

    items: list[dict[str, Any]]
    where: list[str]

    def __len__(self) -> int:
        return len(self.items)


def load_records(path: Path) -> Records:
    """Every record of a JSONL file or JSON array, read by intake's reader (records.scan);
    all bad records reported by line/index."""
    found = scan(path, keep=True)
    if found.problem_count:
        raise DataError(f"dataset {path.name} has {found.problem_count} bad records", found.shown())
    if found.rows < 2:
        raise DataError(f"dataset {path.name} has {found.rows} records; at least 2 are needed")
    return Records(found.items, found.where)


def duplicates(records: list[dict[str, Any]]) -> int:
    """How many records repeat an earlier one (reported in the run's results)."""
    return len(records) - len({content_key(r) for r in records})


def split(
    records: list[dict[str, Any]], val_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """A seeded, deterministic train/validation split of record indices, by content: the
    copies of a record fall on one side together, so no validation record is trained on.
    Distinct records are ordered by a seeded hash of their content and taken into
    validation until `val_fraction` of all records is reached (at least one record when the
    fraction is above 0, and never every record)."""
    groups: dict[str, list[int]] = {}
    for index, record in enumerate(records):
        groups.setdefault(content_key(record), []).append(index)
    n = len(records)
    wanted = round(n * val_fraction) if val_fraction > 0 else 0
    wanted = min(max(wanted, 1 if val_fraction > 0 else 0), n - 1)
    order = sorted(groups, key=lambda k: hashlib.sha256(f"{seed}\0{k}".encode()).hexdigest())
    val: list[int] = []
    for key in order:
        if len(val) >= wanted:
            break
        if len(val) + len(groups[key]) < n:  # the training split never empties
            val += groups[key]
    chosen = set(val)
    return [i for i in range(n) if i not in chosen], sorted(val)


@dataclass(frozen=True)
class Encoded:
    """Each row's token ids, label mask and the bytes each token holds: lists, or `Rows`
    mapped from the tokenization cache (trainer/tokcache.py), read as the batches ask."""

    ids: Sequence[list[int]]
    # 1 where the token is a label (trained on), 0 where it is only input; None: every token
    masks: Sequence[list[int]] | None = None
    # the UTF-8 bytes of the text each token holds (labels.token_bytes); None: rows made of
    # ids alone (a benchmark's), each token then counted as one byte
    nbytes: Sequence[list[int]] | None = None

    def lengths(self) -> list[int]:
        if isinstance(self.ids, Rows):
            return self.ids.lengths()
        return [len(x) for x in self.ids]

    def mask(self, i: int) -> list[int]:
        return [1] * len(self.ids[i]) if self.masks is None else self.masks[i]

    def largest_id(self) -> int:
        if isinstance(self.ids, Rows):
            return self.ids.largest()
        return max((max(row) for row in self.ids if row), default=0)

    def label_counts(self) -> list[int]:
        """The tokens each row's loss is taken over: labelled ones after the first (the
        first token is predicted from nothing)."""
        if isinstance(self.ids, Rows) and isinstance(self.masks, Rows):
            return self.masks.sums_after_first()
        return [sum(self.mask(i)[1:]) for i in range(len(self.ids))]

    def label_bytes(self) -> list[int]:
        """The bytes of the text each row's loss is taken over: those its labelled tokens
        after the first hold."""
        if isinstance(self.nbytes, Rows) and isinstance(self.masks, Rows):
            return self.nbytes.sums_after_first(self.masks)
        found = []
        for i in range(len(self.ids)):
            held = [1] * len(self.ids[i]) if self.nbytes is None else self.nbytes[i]
            found.append(sum(b for b, m in zip(held[1:], self.mask(i)[1:], strict=True) if m))
        return found

    def subset(self, indices: list[int]) -> Encoded:
        return Encoded(*(_take(rows, indices) for rows in (self.ids, self.masks, self.nbytes)))  # type: ignore[arg-type]


def _take(rows: Sequence[list[int]] | None, indices: list[int]) -> Sequence[list[int]] | None:
    if rows is None:
        return None
    if isinstance(rows, Rows):
        return rows.take(indices)
    return [rows[i] for i in indices]


def batch_order(lengths: list[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Batches of indices for one epoch: shuffled, then sorted by length within windows.
    Deterministic in (seed, epoch), so a resumed run sees the same batches."""
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * WINDOW_BATCHES
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(encoded: Encoded, indices: list[int], pad_id: int) -> dict[str, torch.Tensor]:
    import torch

    rows = [encoded.ids[i] for i in indices]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labelled = torch.zeros((len(rows), width), dtype=torch.long)
    for n, (index, row) in enumerate(zip(indices, rows, strict=True)):
        ids[n, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[n, : len(row)] = 1
        labelled[n, : len(row)] = torch.tensor(encoded.mask(index), dtype=torch.long)
    labels = ids.masked_fill(labelled == 0, IGNORE_INDEX)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def padding_fraction(lengths: list[int], batches: list[list[int]]) -> float:
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    real = sum(lengths[i] for b in batches for i in b)
    return 0.0 if padded == 0 else 1 - real / padded
