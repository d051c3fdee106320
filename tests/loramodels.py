"""A tiny model under LoRA whose every path carries a gradient: for the tests that compare
two ways of computing the same loss and gradients (chunked loss, the gated MLP)."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from oneseekd.trainer.swiglu import lean_mlps


def lora_model(
    folder: Path,
    checkpointing: bool = False,
    targets: str | tuple[str, ...] = ("q_proj", "v_proj"),
    lean: bool = False,
) -> torch.nn.Module:
    """The model at `folder` (seed 0) with LoRA r 4 on `targets`, in training mode; with
    `lean`, its gated MLPs through SiluMul (each of them: the count is checked)."""
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    if lean:
        assert lean_mlps(base) == base.config.num_hidden_layers
    if checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        base.enable_input_require_grads()
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        target_modules=targets if isinstance(targets, str) else list(targets),
    )
    model = get_peft_model(base, config)
    for name, param in model.named_parameters():
        if "lora_B" in name:  # B starts at zero: make the LoRA path carry a gradient to A too
            torch.nn.init.normal_(param, std=0.02)
    model.train()
    return model
