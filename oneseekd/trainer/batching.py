"""An epoch's batches, packed or length-grouped, and their tensors.

A batch is a list of rows: record indices when length-grouped (data.batch_order), lists of
record indices when packed (packing.pack: as many whole records as fit max_seq_len). The
loop treats both alike: a row's label tokens are its records' own, and a rank's share of a
batch is a share of its rows. Both orders are deterministic in (seed,
epoch); `order_digest` names the order so that a checkpoint written under one order is never
resumed under another (a changed max_seq_len or batch size with packing would otherwise
silently skip or repeat records).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch

from oneseekd.trainer import packing
from oneseekd.trainer.data import Encoded, batch_order, collate, padding_fraction

Row = int | list[int]  # a record, or the records packed in one row
Batch = list[Any]  # of Row: list[int] length-grouped, list[list[int]] packed


def records(row: Row) -> list[int]:
    return row if isinstance(row, list) else [row]


def epoch_batches(
    lengths: list[int], batch_size: int, seed: int, epoch: int, packed: bool, max_len: int
) -> list[Batch]:
    if packed:
        return list(packing.batches(packing.pack(lengths, max_len, seed, epoch), batch_size))
    return list(batch_order(lengths, batch_size, seed, epoch))


def order_digest(batches: list[Batch]) -> str:
    """A short name of an epoch's order (records, rows and batches)."""
    return hashlib.sha256(json.dumps(batches).encode()).hexdigest()[:16]


def row_labels(counts: list[int], row: Row) -> int:
    """The label tokens of a row: its records' (packing drops each record's first label,
    as label_counts does, so a packed row counts what its records count alone)."""
    return sum(counts[i] for i in records(row))


def row_tokens(data: Encoded, row: Row) -> int:
    return sum(len(data.ids[i]) for i in records(row))


def tensors(data: Encoded, rows: Batch, pad_id: int, packed: bool) -> dict[str, torch.Tensor]:
    """input_ids, labels and attention_mask (length-grouped) or position_ids (packed)."""
    if packed:
        return packing.collate_packed(data.ids, data.masks, rows, pad_id)
    return collate(data, rows, pad_id)


def padding_share(lengths: list[int], batches: list[Batch], packed: bool) -> float:
    """The share of the positions fed that are padding."""
    if not packed:
        return padding_fraction(lengths, batches)
    padded = sum(max(sum(lengths[i] for i in row) for row in b) * len(b) for b in batches)
    real = sum(lengths[i] for b in batches for row in b for i in row)
    return 0.0 if padded == 0 else 1 - real / padded
