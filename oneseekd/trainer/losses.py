"""The numbers a step is made of: the summed token loss and the learning-rate schedule (the
held-out figures are trainer/evaluate.py's)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from oneseekd.trainer.data import IGNORE_INDEX


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
