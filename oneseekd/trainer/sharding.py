"""FSDP: the ranks share one copy of a model instead of each holding all of it.

Under DDP every rank holds the whole model; a model that does not fit one GPU cannot train.
`sharding: "fsdp"` splits every weight (frozen base and LoRA alike) across the ranks with
FSDP2 (`fully_shard`, one unit per transformer block and one for the rest), so each rank
holds 1/N of the weights and gathers a block only while it computes with it.

The parameters become DTensors, each rank holding its shard, so everything that reads or
writes the model's or the optimizer's state goes through here: the full LoRA state and the
full optimizer state are gathered by every rank together (a collective) and kept on rank 0,
in the very layout a DDP run writes, so checkpoints and artifacts do not depend on how a
model was trained. Loading goes the other way: every rank reads the file and keeps its shard.
"""

from __future__ import annotations

from typing import Any

import torch
from peft import get_peft_model_state_dict
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import fully_shard

from oneseekd.spec.fields import FSDP_AUTO_FRACTION
from oneseekd.trainer.world import World


def weight_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def decide(asked: str, model: torch.nn.Module, world: World) -> str:
    """ "ddp" or "fsdp" for this model ("none" with one process: there is nothing to share).
    "auto" shards a model whose weights take more than FSDP_AUTO_FRACTION of the smallest
    GPU of the world (the rest is for activations, gradients and the optimizer); without a
    GPU there is no GPU memory to save, so auto means ddp there."""
    if not world.distributed:
        return "none"
    if asked != "auto":
        return asked
    if not torch.cuda.is_available():
        return "ddp"
    memory = torch.cuda.get_device_properties(world.local_rank).total_memory
    smallest = min(world.gather(memory))  # every rank must reach the same answer
    return "fsdp" if weight_bytes(model) > FSDP_AUTO_FRACTION * smallest else "ddp"


def shard(model: torch.nn.Module) -> None:
    """Shard the model in place: each transformer block (the classes transformers keeps
    whole across devices, `_no_split_modules`) is one unit, the embeddings, final norm and
    head are the root's. The parameters are replaced by DTensors, so an optimizer must be
    built after this."""
    blocks = set(getattr(model, "_no_split_modules", None) or ())
    inner: Any = model
    while not blocks and isinstance(getattr(inner, "model", None), torch.nn.Module):
        inner = inner.model  # peft's wrappers: the transformers model names its blocks
        blocks = set(getattr(inner, "_no_split_modules", None) or ())
    for module in model.modules():
        if type(module).__name__ in blocks:
            fully_shard(module)
    fully_shard(model)


def _full() -> StateDictOptions:
    # full tensors on CPU, on rank 0 only (the others get an empty dict)
    return StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)


def trainable_state(model: Any) -> dict[str, torch.Tensor]:
    """The full trainable (LoRA) weights under the model's own names, gathered by every rank
    (call it on all of them) and returned on rank 0; {} on the others. What peft's
    `save_pretrained(..., state_dict=)` and `get_peft_model_state_dict(..., state_dict=)`
    take."""
    state: dict[str, torch.Tensor] = get_model_state_dict(model, options=_full())  # type: ignore[assignment]
    return state


def adapter_state(model: Any, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The LoRA tensors as peft saves them (adapter.pt, the .pth), from trainable_state."""
    return {
        k: v.detach().cpu().contiguous()
        for k, v in get_peft_model_state_dict(model, state_dict=state).items()
    }


def load_trainable_state(model: Any, state: dict[str, torch.Tensor]) -> None:
    """The full trainable (LoRA) weights, as trainable_state returned them, back into a
    sharded model: every rank hands in the whole state and keeps its shard."""
    full: dict[str, Any] = dict(state)
    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, strict=False))


def _trainable_names(model: torch.nn.Module) -> list[str]:
    """The trainable parameters' names in the optimizer's order (it was built from them)."""
    return [name for name, p in model.named_parameters() if p.requires_grad]


def optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The full optimizer state, gathered by every rank and returned on rank 0 ({} on the
    others), numbered as `optimizer.state_dict()` numbers it in a DDP run."""
    full: dict[str, Any] = get_optimizer_state_dict(model, optimizer, options=_full())
    if not full:
        return {}
    index = {name: i for i, name in enumerate(_trainable_names(model))}
    return {
        "state": {index[name]: value for name, value in full["state"].items()},
        "param_groups": [
            {**group, "params": [index[name] for name in group["params"]]}
            for group in full["param_groups"]
        ],
    }


def load_optimizer_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Every rank hands in the full state (as optimizer_state wrote it) and keeps its shard."""
    names = _trainable_names(model)
    full: dict[str, Any] = {
        "state": {names[int(i)]: value for i, value in state["state"].items()},
        "param_groups": [
            {**group, "params": [names[int(i)] for i in group["params"]]}
            for group in state["param_groups"]
        ],
    }
    set_optimizer_state_dict(model, optimizer, full, options=StateDictOptions(full_state_dict=True))
