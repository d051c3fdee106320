"""Loading a base model and its tokenizer from a catalog folder, refusing anything unsafe or
incompatible before any training starts."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from oneseekd.spec.memory import fits

# the tokenizer loads without torch in tokenizer.py; its names are read from here too
from oneseekd.trainer.tokenizer import ModelRefused as ModelRefused
from oneseekd.trainer.tokenizer import load_tokenizer as load_tokenizer

# LoRA targets when a request names none: the attention projections each family calls so.
DEFAULT_TARGETS: dict[str, list[str]] = {
    "gpt2": ["c_attn"],
    "gpt_neox": ["query_key_value"],
    "falcon": ["query_key_value"],
    "bloom": ["query_key_value"],
    "phi": ["q_proj", "v_proj"],
    "phi3": ["qkv_proj"],
    "opt": ["q_proj", "v_proj"],
}
FALLBACK_TARGETS = ["q_proj", "v_proj"]


@dataclass(frozen=True)
class Device:
    type: str  # "cuda" or "cpu"
    dtype: torch.dtype
    scaler: bool  # fp16 needs a gradient scaler

    @property
    def name(self) -> str:
        return f"{self.type}/{str(self.dtype).removeprefix('torch.')}"


def pick_device() -> Device:
    """bf16 where the GPU computes in it (compute capability 8 and up); fp16 with a gradient
    scaler below, where bf16 would only be emulated (V100, T4: several times slower)."""
    if torch.cuda.is_available():
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return Device("cuda", torch.bfloat16, scaler=False)
        return Device("cuda", torch.float16, scaler=True)
    return Device("cpu", torch.float32, scaler=False)


def device_memory(device: Device, index: int = 0) -> int | None:
    """The GPU's memory in bytes; None on the CPU (no device memory to run out of)."""
    if device.type != "cuda":
        return None
    return int(torch.cuda.get_device_properties(index).total_memory)


def memory_in_use(device: Device, index: int = 0) -> int | None:
    """The GPU memory this process holds now (torch's caching allocator's reserved bytes:
    what nvidia-smi counts against it, and what another process cannot have), for the
    progress the metrics endpoint exports; None on the CPU. A host-side counter: no sync."""
    if device.type != "cuda":
        return None
    return int(torch.cuda.memory_reserved(index))


def memory_cap(cap: int, total: int, index: int = 0) -> int:
    """max_memory_per_gpu carried out: this process may take at most `cap` bytes of GPU
    `index` (torch's caching allocator raises out-of-memory past it, which the supervisor
    reports as such), and the decisions sized by GPU memory (checkpointing) see the cap.
    Returns the memory the process now has."""
    allowed = min(cap, total)
    torch.cuda.set_per_process_memory_fraction(allowed / total, index)
    return allowed


def wants_checkpointing(asked: bool | None, need: int, memory: int | None) -> bool:
    """Whether to recompute activations in the backward pass: as asked, else when a step
    without it (`need` bytes: spec.memory.step_bytes) would not fit the device's memory
    (spec.memory.fits: 85 %). Recomputing costs about a third more compute, so a step that
    fits runs without it. On the CPU (no device memory) only when asked."""
    if asked is not None:
        return asked
    return memory is not None and not fits(need, memory)


def check_folder(path: Path) -> dict[str, Any]:
    """config.json of a loadable, code-free causal LM folder."""
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelRefused(f"cannot read {path / 'config.json'}: {exc}") from exc
    code = sorted(p.name for p in path.glob("*.py"))
    if "auto_map" in config or code:
        raise ModelRefused(
            f"{path.name} asks for custom code ({', '.join(code) or 'auto_map in config.json'}); "
            "oneseekd never runs code from a model folder (trust_remote_code is off)",
            ["use a model whose architecture transformers ships"],
        )
    model_type = config.get("model_type")
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ModelRefused(
            f"{path.name} is a {model_type!r} model, which transformers cannot train as a causal "
            "language model",
            ["pick a causal LM (Llama, Mistral, Qwen2, Gemma, Phi, ...)"],
        )
    return dict(config)


def load_model(path: Path, device: Device) -> Any:
    try:
        model: Any = AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, trust_remote_code=False, dtype=device.dtype
        )
    except (OSError, ValueError) as exc:
        raise ModelRefused(f"cannot load {path.name}: {exc}") from exc
    model.to(torch.device(device.type))  # in place for modules
    return model


def lora_targets(model: Any, model_type: str, requested: list[str] | str | None) -> list[str]:
    """The requested LoRA targets, checked to exist, or the family's defaults. "all-linear"
    is every linear layer but the output head, as peft reads it, named explicitly so that
    the adapter's config and the DNA say which they were."""
    leaves = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"
    }
    if requested == "all-linear":
        head = model.get_output_embeddings()
        heads = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if m is head}
        return sorted(leaves - heads)
    targets = requested or DEFAULT_TARGETS.get(model_type, FALLBACK_TARGETS)
    missing = [t for t in targets if t not in leaves]
    if missing:
        raise ModelRefused(
            f"LoRA target module(s) {', '.join(missing)} do not exist in this {model_type} model",
            [f"its linear layers are: {', '.join(sorted(leaves))}"],
        )
    return list(targets)
