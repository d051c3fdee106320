"""The numbers a step and an evaluation are made of: the summed token loss, the learning-rate
schedule, and the validation loss over the ranks."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from oneseekd.trainer.data import IGNORE_INDEX, Encoded, collate
from oneseekd.trainer.loading import Device
from oneseekd.trainer.world import World


def lr_lambda(warmup: int, total: int) -> Callable[[int], float]:
    """Linear warm-up, then cosine decay to 10% of the peak rate."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(total - warmup, 1)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The summed (not averaged) next-token loss over the labelled positions, in fp32: a sum
    over no labels is 0, never NaN, and sums add up across micro-batches and ranks."""
    shifted = torch.nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:]
    return torch.nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]),
        shifted.reshape(-1).to(logits.device),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )


# a batch's tensors (labels taken out) and its labels -> the summed loss over its labels
LossOf = Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor]


@torch.no_grad()
def validation_loss(
    loss_of: LossOf,
    data: Encoded,
    pad_id: int,
    batch_size: int,
    world: World,
    sharded: bool,
    device: Device,
) -> float:
    """The token-weighted mean loss over `data`'s labels, its batches shared by the ranks and
    the sums all-reduced."""
    counts = data.label_counts()
    total: torch.Tensor | float = 0.0
    count = 0
    order = sorted(range(len(data.ids)), key=lambda i: len(data.ids[i]))
    starts = list(range(0, len(order), batch_size))
    mine: list[int | None] = list(starts[world.rank :: world.size])
    if sharded:  # every forward pass gathers weights: all ranks run as many
        rounds = math.ceil(len(starts) / world.size)
        mine += [None] * (rounds - len(mine))
    for start in mine:  # each rank its batches; None: the first one again, not counted
        rows = order[(starts[0] if start is None else start) :][:batch_size]
        batch = collate(data, rows, pad_id)
        labels = batch.pop("labels")
        batch = {k: v.to(device.type) for k, v in batch.items()}
        summed = loss_of(batch, labels)
        if start is not None:
            total = total + summed
            count += sum(counts[i] for i in rows)
    summed_total, summed_count = world.sum([float(total), float(count)])
    return summed_total / max(summed_count, 1)
