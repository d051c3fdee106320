"""The optimizer and learning-rate schedule of a run, by the names transformers uses.

Optimizers: adamw_torch, adamw_8bit and paged_adamw_8bit (bitsandbytes; the 8-bit state is a
quarter of AdamW's, and paging needs CUDA's unified memory), sgd and adafactor (transformers',
with a fixed learning rate as its Trainer sets it). Weight decay skips biases and norms, by
transformers' own rule. Schedules are transformers' (`get_scheduler`), so a name means what it
means there; the default, cosine_with_min_lr at 10 %, is the cosine to a tenth of the peak
that oneseekd always used. Every piece has a state_dict that a checkpoint keeps.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
from transformers import get_scheduler
from transformers.optimization import Adafactor

from oneseekd.spec.fields import OPTIMIZERS, SCHEDULERS  # the names a request may give
from oneseekd.trainer.hubless import import_bitsandbytes

DEFAULT_SCHEDULER = "cosine_with_min_lr"
MIN_LR_RATE = 0.1  # cosine_with_min_lr ends at this fraction of the peak rate
# bitsandbytes keeps tensors smaller than this in 32-bit state: its own default
MIN_8BIT_SIZE = 4096

# transformers' Trainer.get_decay_parameter_names: no decay on these (nor on LayerNorms)
NO_DECAY = [
    re.compile(p)
    for p in (r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)")
]


class OptimizerRefused(ValueError):
    """An optimizer this host cannot run; the message names the fix."""


def decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """The trainable parameters in two groups: with weight decay, and without (biases and
    norms), decided by transformers' rule so a run decays what its Trainer would."""
    no_decay_modules = {
        name for name, module in model.named_modules() if isinstance(module, torch.nn.LayerNorm)
    }
    decay: list[torch.nn.Parameter] = []
    plain: list[torch.nn.Parameter] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        owner = name.rsplit(".", 1)[0] if "." in name else ""
        skip = owner in no_decay_modules or any(p.search(name.lower()) for p in NO_DECAY)
        (plain if skip else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if plain:
        groups.append({"params": plain, "weight_decay": 0.0})
    return groups


def build_optimizer(
    name: str,
    model: torch.nn.Module,
    lr: float,
    weight_decay: float = 0.0,
    *,
    device: str = "cpu",
    min_8bit_size: int = MIN_8BIT_SIZE,
) -> torch.optim.Optimizer:
    """The optimizer `name` over the model's trainable parameters."""
    groups = decay_groups(model, weight_decay)
    if name == "adamw_torch":
        return torch.optim.AdamW(groups, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr)
    if name == "adafactor":
        # a fixed rate, driven by the schedule: what transformers' Trainer passes
        return Adafactor(groups, lr=lr, scale_parameter=False, relative_step=False)
    if name in ("adamw_8bit", "paged_adamw_8bit"):
        if name == "paged_adamw_8bit" and device != "cuda":
            raise OptimizerRefused(
                'optimizer "paged_adamw_8bit" pages its state through CUDA unified memory, '
                'and this host trains on its CPU; ask for "adamw_8bit" (the same 8-bit '
                'state, unpaged) or "adamw_torch"'
            )
        if not import_bitsandbytes():
            raise OptimizerRefused(
                f'optimizer "{name}" needs bitsandbytes, which is not installed: '
                'pip install bitsandbytes==0.50.2, or ask for "adamw_torch"'
            )
        from bitsandbytes.optim.adamw import AdamW8bit, PagedAdamW8bit

        cls = PagedAdamW8bit if name == "paged_adamw_8bit" else AdamW8bit
        optimizer: torch.optim.Optimizer = cls(groups, lr=lr, min_8bit_size=min_8bit_size)
        return optimizer
    raise OptimizerRefused(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")


def warmup_steps(total: int, steps: int | None, ratio: float) -> int:
    """Warm-up steps: `steps` when given, else `ratio` of the total rounded up (as
    transformers' TrainingArguments.get_warmup_steps does)."""
    if steps is not None:
        return min(steps, total)
    return math.ceil(total * ratio)


def build_scheduler(
    name: str, optimizer: torch.optim.Optimizer, total_steps: int, warmup: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """transformers' schedule `name`, stepped once per optimizer step."""
    if name not in SCHEDULERS:
        raise ValueError(f"unknown lr_scheduler {name!r}; known: {', '.join(SCHEDULERS)}")
    extra = {"min_lr_rate": MIN_LR_RATE} if name == "cosine_with_min_lr" else None
    scheduler: torch.optim.lr_scheduler.LRScheduler = get_scheduler(
        name,
        optimizer,
        num_warmup_steps=warmup,
        num_training_steps=total_steps,
        scheduler_specific_kwargs=extra,
    )
    return scheduler


def uses_8bit_state(optimizer: torch.optim.Optimizer) -> bool:
    """Whether any parameter's state is held in 8 bits (bitsandbytes' state1 in uint8)."""
    return any(
        isinstance(s.get("state1"), torch.Tensor) and s["state1"].dtype == torch.uint8
        for s in optimizer.state.values()
    )


def keep_paging(optimizer: torch.optim.Optimizer) -> int:
    """Put a resumed paged optimizer's state back in paged memory; how many tensors moved.

    bitsandbytes' load_state_dict keeps a loaded state tensor where the checkpoint was read
    to (ordinary device memory): a resumed paged_adamw_8bit would hold all its state on the
    GPU, which paging exists to avoid. Each moment tensor (state1, state2) the optimizer
    would itself have paged (get_state_buffer: on CUDA, at least 1e5 values) is copied into
    a paged buffer made the optimizer's own way. Unpaged optimizers are left alone."""
    if not getattr(optimizer, "is_paged", False):
        return 0
    moved = 0
    for param, state in optimizer.state.items():
        for key in ("state1", "state2"):
            value = state.get(key)
            if not isinstance(value, torch.Tensor) or getattr(value, "is_paged", False):
                continue
            if value.shape != param.shape:
                continue
            paged = optimizer.get_state_buffer(param, dtype=value.dtype)  # type: ignore[attr-defined]
            if not getattr(paged, "is_paged", False):
                continue  # too small to page, or not on CUDA: as a fresh run holds it
            paged.copy_(value)
            state[key] = paged
            moved += 1
    return moved
