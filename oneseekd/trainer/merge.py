"""The merged export of a model trained over a quantized base (QLoRA): the adapter folded
into the weights it was trained and evaluated with, saved in the base's own dtype.

The adapter learnt to correct the base as the 4-bit (or 8-bit) layers compute it: their
weights dequantized, NF4 rounding and all. Its held-out figures were taken over those
weights too. Folded into the original weights instead, it would make a model nobody
evaluated, whose logits differ from the evaluated model's by the quantization's rounding.
So each quantized layer is dequantized, the LoRA delta added in fp32, and the sum cast to
the base's own dtype (config.json's `dtype`): a bf16 base gives a bf16 export, the size of
the base, and the only difference from the evaluated model is that dtype's rounding of the
merged weights (none for an fp32 base). The layers are merged one at a time on the device
they trained on, each moved to the CPU as it is done, so the whole model is never held in
fp32 (32 GB for an 8B model whose base is 16 GB in bf16). Under 8 bits the LLM.int8 matmuls
also quantize their inputs, which a merged model cannot carry; its weights are the
dequantized int8 weights they multiplied.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

# safetensors' names of the floating dtypes a base model is stored in
STORED = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


def own_dtype(base: Path) -> torch.dtype:
    """The dtype the base model's weights are stored in: config.json's `dtype` (transformers
    reads the older `torch_dtype` as the same), else the first floating tensor's of its
    safetensors files, else fp32 (what transformers loads a model that says nothing in)."""
    from safetensors import safe_open
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(base, local_files_only=True, trust_remote_code=False)
    dtype = getattr(config, "dtype", None)
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        return dtype
    for path in sorted(base.glob("*.safetensors")):
        with safe_open(path, "pt") as fh:
            for key in fh.keys():  # noqa: SIM118 (a safe_open handle is not a dict)
                stored = fh.get_slice(key).get_dtype()
                if stored in STORED:
                    return STORED[stored]
    return torch.float32


def save_merged(model: Any, base: Path, target: Path) -> None:
    """Save the trained PEFT `model` (over a quantized base) to `target` as a plain
    transformers model of the base's architecture, every LoRA delta folded into its
    dequantized weights, in the base's own dtype. The base's config.json (and
    generation_config.json) are read again, since the loaded model's config carries the
    quantization; the weights come only from `model`."""
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    dtype = own_dtype(base)
    config = AutoConfig.from_pretrained(base, local_files_only=True, trust_remote_code=False)
    # the layout only, on the meta device: the weights are assigned from `model`. What is
    # not saved (rotary frequencies) stays meta: this model is saved, never run
    with torch.device("meta"):
        merged: Any = AutoModelForCausalLM.from_config(config, dtype=dtype)
    state = merged_state(model, merged.state_dict().keys(), dtype)
    merged.load_state_dict(state, strict=True, assign=True)
    merged.tie_weights()
    if (base / "generation_config.json").is_file():
        merged.generation_config = GenerationConfig.from_pretrained(base, local_files_only=True)
    merged.save_pretrained(target)


def merged_state(model: Any, keys: Any, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The base model's tensors named `keys` (a plain model's state-dict names) from the
    trained PEFT `model`, on the CPU in `dtype`: a LoRA-wrapped layer's weight dequantized
    with its delta added, any other quantized layer's dequantized, the rest as held. One
    layer is widened to fp32 at a time. A tensor two names share (tied embeddings) is
    converted once and shared."""
    inner = model.get_base_model()
    done: dict[int, torch.Tensor] = {}
    state: dict[str, torch.Tensor] = {}
    for key in keys:
        owner, _, leaf = key.rpartition(".")
        module = inner.get_submodule(owner)
        if _is_lora(module):
            state[key] = _merged(module, leaf).to("cpu", dtype)
            continue
        tensor = getattr(module, leaf)
        if id(tensor) not in done:
            done[id(tensor)] = _dequantized(module, leaf, tensor).to("cpu", dtype)
        state[key] = done[id(tensor)]
    return state


def _is_lora(module: Any) -> bool:
    from peft.tuners.lora import LoraLayer

    return isinstance(module, LoraLayer)


def _merged(layer: Any, leaf: str) -> torch.Tensor:
    """`leaf` ("weight" or "bias") of a LoRA-wrapped layer with its active adapters folded
    in, in fp32, as PEFT's own merge computes it but without quantizing the sum again."""
    base = layer.get_base_layer()
    tensor = _dequantized(base, leaf, getattr(base, leaf)).float()
    for adapter in layer.active_adapters:
        if adapter not in layer.lora_A:
            continue
        if leaf == "weight":
            tensor = tensor + layer.get_delta_weight(adapter).float()
        elif layer.lora_bias.get(adapter, False):
            tensor = tensor + layer.lora_B[adapter].bias.float()
    return tensor


def _dequantized(module: Any, leaf: str, tensor: Any) -> torch.Tensor:
    """A bitsandbytes layer's weight as its matmul sees it (4-bit: NF4/FP4 codes times their
    block scales; 8-bit: the int8 rows times their scales); any other tensor as it is."""
    from peft.utils.integrations import dequantize_bnb_weight, get_bnb_param_type

    if leaf == "weight" and get_bnb_param_type(tensor):
        return dequantize_bnb_weight(tensor, getattr(module, "state", None))
    plain: torch.Tensor = tensor.detach()
    return plain
