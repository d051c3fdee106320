"""Packing: several tokenized records in one row, with nothing leaking between them.

Short records padded to the longest of their batch waste the compute spent on padding;
packed, a row holds as many whole records as fit in max_seq_len. Each record keeps:

- its positions: position ids restart at 0 for every record, so rotary embeddings see the
  same positions as when the record is alone;
- its attention: no attention mask is passed, and transformers (masking_utils,
  find_packed_sequence_indices) then reads the restarting position ids as packed sequences
  and builds a block-diagonal causal mask, for eager and SDPA attention alike. It does so
  only without a KV cache: the forward pass MUST get `use_cache=False` (or the model's
  config.use_cache set false), or every record attends to the ones before it in its row;
- its labels: the record's own label mask, and no label on its first token, which would
  otherwise be "predicted" from the previous record's last token.

So the summed loss of a packed batch is the summed loss of the same records unpacked.
`isolation_error` checks the isolation on the model itself, for the recipe at setup: it
changes one record's tokens inside the packed row and measures how far the next record's
logits move. It does not compare packed logits with the record alone: the two passes differ
in shape and, on a GPU, in SDPA kernel (no mask: flash or cuDNN with is_causal; packed: a
block mask, memory-efficient or math), and in bf16 they differ by more than a unit of
rounding with no leak at all.
Rows are filled first-fit, longest first, within windows of a seeded shuffle: deterministic
in (seed, epoch), so a resumed run packs the same rows.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch

from oneseekd.trainer.loss import IGNORE_INDEX

WINDOW = 1000  # records packed together: first-fit is quadratic in the rows of a window


def pack(lengths: list[int], max_len: int, seed: int, epoch: int) -> list[list[int]]:
    """Rows of record indices, each row's records together at most max_len tokens. Every
    record is in exactly one row; a record longer than max_len has a row of its own."""
    order = list(range(len(lengths)))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    rows: list[list[int]] = []
    for start in range(0, len(order), WINDOW):
        window = sorted(order[start : start + WINDOW], key=lambda i: -lengths[i])
        bins: list[list[int]] = []
        room: list[int] = []
        for index in window:
            need = lengths[index]
            for b, free in enumerate(room):
                if need <= free:
                    bins[b].append(index)
                    room[b] -= need
                    break
            else:
                bins.append([index])
                room.append(max_len - need)
        rows += bins
    random.Random(seed * 1_000_003 + epoch + 1).shuffle(rows)
    return rows


def batches(rows: list[list[int]], batch_size: int) -> list[list[list[int]]]:
    """Packed rows, batch_size rows to a batch."""
    return [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]


def collate_packed(
    ids: Sequence[list[int]],
    masks: Sequence[list[int]] | None,
    rows: list[list[int]],
    pad_id: int,
) -> dict[str, torch.Tensor]:
    """input_ids, position_ids and labels of packed rows (no attention_mask: see above).
    `masks[i]` holds 1 where record i's token is a label; None: every token is."""
    width = max(sum(len(ids[i]) for i in row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            tokens = torch.tensor(ids[i], dtype=torch.long)
            n = len(tokens)
            input_ids[r, at : at + n] = tokens
            positions[r, at : at + n] = torch.arange(n)
            own = tokens.clone()
            if masks is not None:
                own[torch.tensor(masks[i], dtype=torch.bool).logical_not()] = IGNORE_INDEX
            own[0] = IGNORE_INDEX  # predicted from another record's last token otherwise
            labels[r, at : at + n] = own
            at += n
        # the padding is a block of its own (positions restart): no record attends to it
        positions[r, at:] = torch.arange(width - at)
    return {"input_ids": input_ids, "position_ids": positions, "labels": labels}


def fill(lengths: list[int], rows: list[list[int]]) -> float:
    """The share of the packed rows' positions that hold tokens (1.0: no padding)."""
    width = max((sum(lengths[i] for i in row) for row in rows), default=0)
    return sum(lengths[i] for row in rows for i in row) / max(width * len(rows), 1)


@torch.no_grad()
def isolation_error(model: Any, vocab: int, device: str = "cpu") -> float:
    """How far the logits of a record move when the record packed before it in the same row
    changes all its tokens, in units of the logits' rounding (their dtype's epsilon times the
    largest logit). Both passes have the same layout, so they take the same kernels whatever
    the attention implementation and dtype: where the block mask holds, the other record's
    keys contribute exact zeros and the figure is 0 (or a few units of rounding); where
    attention leaks across records it is hundreds to millions."""
    g = torch.Generator().manual_seed(0)
    first = torch.randint(0, vocab, (7,), generator=g)
    # every token different from the first record's: the change reaches every position
    other = (first + torch.randint(1, max(vocab, 2), (7,), generator=g)) % max(vocab, 2)
    second = torch.randint(0, vocab, (5,), generator=g).tolist()
    was_training = model.training
    model.eval()
    try:
        seen = []
        for before in (first.tolist(), other.tolist()):
            packed = collate_packed([before, second], None, [[0, 1]], pad_id=0)
            logits = model(
                input_ids=packed["input_ids"].to(device),
                position_ids=packed["position_ids"].to(device),
                use_cache=False,
            ).logits[0, len(before) :]
            seen.append(logits)
    finally:
        model.train(was_training)
    moved = float((seen[0].float() - seen[1].float()).abs().max())
    rounding = torch.finfo(seen[0].dtype).eps * float(seen[0].float().abs().max())
    return moved / max(rounding, torch.finfo(torch.float32).tiny)
