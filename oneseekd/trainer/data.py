"""Training data: load and check every record, render it to text, split, tokenize, batch.

Records are `{"text": ...}`, `{"instruction", "input"?, "output"}`, or `{"messages": [...]}`.
Chat records use the tokenizer's chat template when it has one; otherwise, and for
instruction records, these plain templates (documented in docs/training.md):

    ### Instruction:\\n{instruction}\\n\\n### Input:\\n{input}\\n\\n### Response:\\n{output}
    <|{role}|>\\n{content}\\n   (one block per message)

Batches are grouped by length (sorted within shuffled windows of 50 batches), which keeps
padding low without giving up shuffling; the padding fraction is reported.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from oneseekd.errors import OneseekError
from oneseekd.intake.checks import record_problem

WINDOW_BATCHES = 50
IGNORE_INDEX = -100


class DataError(OneseekError):
    exit_code = 65


def load_records(path: Path) -> list[dict[str, Any]]:
    """Every record of a JSONL file or JSON array; all bad records reported by line/index."""
    text = path.read_text(encoding="utf-8")
    problems: list[str] = []
    records: list[dict[str, Any]] = []
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"dataset {path.name} is not a valid JSON array",
                [f"{exc.msg} at line {exc.lineno}"],
            ) from exc
        numbered = [(f"record {i}", item) for i, item in enumerate(items)]
    else:
        numbered = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                numbered.append((f"line {number}", json.loads(line)))
            except json.JSONDecodeError as exc:
                problems.append(f"line {number}: not JSON ({exc.msg})")
    for where, item in numbered:
        problem = record_problem(item)
        if problem:
            problems.append(f"{where}: {problem}")
        else:
            records.append(item)
    if problems:
        shown = problems[:20] + (
            [f"... and {len(problems) - 20} more"] if len(problems) > 20 else []
        )
        raise DataError(f"dataset {path.name} has {len(problems)} bad records", shown)
    if len(records) < 2:
        raise DataError(f"dataset {path.name} has {len(records)} records; at least 2 are needed")
    return records


def render(record: dict[str, Any], tokenizer: Any) -> str:
    if isinstance(record.get("text"), str):
        return str(record["text"])
    if "messages" in record:
        messages = record["messages"]
        if getattr(tokenizer, "chat_template", None):
            return str(tokenizer.apply_chat_template(messages, tokenize=False))
        return "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages)
    parts = [f"### Instruction:\n{record['instruction']}\n\n"]
    if record.get("input"):
        parts.append(f"### Input:\n{record['input']}\n\n")
    parts.append(f"### Response:\n{record['output']}")
    return "".join(parts)


def split(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A seeded, deterministic train/validation split of record indices."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_val = round(n * val_fraction) if val_fraction > 0 else 0
    n_val = min(max(n_val, 1 if val_fraction > 0 else 0), n - 1)
    return sorted(order[n_val:]), sorted(order[:n_val])


@dataclass(frozen=True)
class Encoded:
    ids: list[list[int]]

    def lengths(self) -> list[int]:
        return [len(x) for x in self.ids]


def encode(texts: list[str], tokenizer: Any, max_len: int) -> Encoded:
    eos = tokenizer.eos_token_id
    out: list[list[int]] = []
    for text in texts:
        ids = list(
            tokenizer(
                text,
                add_special_tokens=True,
                truncation=True,
                max_length=max_len - (1 if eos is not None else 0),
            )["input_ids"]
        )
        if eos is not None and (not ids or ids[-1] != eos):
            ids.append(eos)
        out.append(ids)
    return Encoded(out)


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
    rows = [encoded.ids[i] for i in indices]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for n, row in enumerate(rows):
        ids[n, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[n, : len(row)] = 1
    labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def padding_fraction(lengths: list[int], batches: list[list[int]]) -> float:
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    real = sum(lengths[i] for b in batches for i in b)
    return 0.0 if padded == 0 else 1 - real / padded
