"""QLoRA: the frozen base loaded in 4 or 8 bits (bitsandbytes), LoRA trained over it.

4-bit NF4 (or FP4) stores each weight of the quantized linear layers in half a byte plus a
scale per block of 64; double quantization quantizes those scales too (about 0.4 bit per
weight saved). The matmuls dequantize to `compute_dtype` on the fly. 8-bit uses LLM.int8().
Embeddings, norms and the LM head stay unquantized (transformers' default), and
`prepare_model_for_kbit_training` casts them to fp32 so the small trainable paths are
stable. The embedding and head matrices are frozen and large (a 128k x 4096 vocabulary: 2 GB
each in fp32), so where the quantized layers compute in 16 bits they are held in that dtype
too (`hold_frozen`): the head then computes as the quantized layers do, and the embeddings'
output is widened to fp32, so the residual stream stays fp32 as before. LoRA weights are
ordinary fp32 tensors: the adapter saves in the normal PEFT format, and loads onto the same
base in any precision.

bitsandbytes 0.50.2 runs all of it on the CPU too, which is how the tests train here.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal

import torch
from peft import prepare_model_for_kbit_training
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

from oneseekd.trainer.hubless import import_bitsandbytes

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class QuantizationRefused(ValueError):
    """A quantization this host cannot load; the message names the fix."""


@dataclass(frozen=True)
class Quantization:
    bits: Literal[4, 8]
    quant_type: Literal["nf4", "fp4"] = "nf4"  # 4-bit only
    compute_dtype: torch.dtype = torch.float32  # what the dequantized matmuls compute in
    double: bool = True  # double quantization of the 4-bit scales

    def config(self) -> BitsAndBytesConfig:
        if self.bits == 8:
            return BitsAndBytesConfig(load_in_8bit=True)
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=self.quant_type,
            bnb_4bit_compute_dtype=self.compute_dtype,
            bnb_4bit_use_double_quant=self.double,
        )

    def describe(self) -> dict[str, Any]:
        """What the DNA and the certified files record about how the base was held."""
        if self.bits == 8:
            return {
                "bits": 8,
                "method": "llm.int8",
                "embeddings_dtype": _name(self.held_dtype),
                "library": _library(),
            }
        return {
            "bits": 4,
            "method": self.quant_type,
            "compute_dtype": _name(self.compute_dtype),
            "double_quantization": self.double,
            "embeddings_dtype": _name(self.held_dtype),
            "library": _library(),
        }

    @property
    def held_dtype(self) -> torch.dtype:
        """What the frozen unquantized embedding and head matrices are held in: 4-bit's
        compute dtype (fp32, or 16-bit where the quantized matmuls compute in it); fp32 under
        8-bit, whose LLM.int8 matmuls choose their own precision."""
        return self.compute_dtype if self.bits == 4 else torch.float32


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _library() -> str:
    try:
        return f"bitsandbytes {version('bitsandbytes')}"
    except PackageNotFoundError:
        return "bitsandbytes (not installed)"


def quantization(
    load_in_4bit: bool,
    load_in_8bit: bool,
    quant_type: str,
    compute_dtype: str,
    double: bool,
    autocast: torch.dtype | None,
) -> Quantization | None:
    """The run spec's quantization fields as one value (None: the base is not quantized).
    compute_dtype "auto" computes in the training precision (bf16 under bf16 autocast)."""
    if load_in_4bit and load_in_8bit:
        raise QuantizationRefused("load_in_4bit and load_in_8bit: ask for one of them")
    if not (load_in_4bit or load_in_8bit):
        return None
    dtype = (autocast or torch.float32) if compute_dtype == "auto" else DTYPES[compute_dtype]
    kind: Literal["nf4", "fp4"] = "fp4" if quant_type == "fp4" else "nf4"
    return Quantization(4 if load_in_4bit else 8, kind, dtype, double)


def load_kwargs(q: Quantization, device: str, local_rank: int = 0) -> dict[str, Any]:
    """What `from_pretrained` takes to load the base quantized, whole on this rank's device
    (bitsandbytes quantizes as it places the weights, so placement is given up front)."""
    if not import_bitsandbytes():
        raise QuantizationRefused(
            "load_in_4bit / load_in_8bit need bitsandbytes, which is not installed: "
            "pip install bitsandbytes==0.50.2, or train without quantization"
        )
    where: str | int = local_rank if device == "cuda" else "cpu"
    return {"quantization_config": q.config(), "device_map": {"": where}}


def load_quantized(path: Path, q: Quantization, device: str, local_rank: int = 0) -> Any:
    """The base model at `path`, quantized, on this rank's device, its 4-bit layers kept in
    the layout that backpropagates (`keep_trainable_layout`)."""
    model = AutoModelForCausalLM.from_pretrained(
        path,
        local_files_only=True,
        trust_remote_code=False,
        dtype=q.compute_dtype,
        **load_kwargs(q, device, local_rank),
    )
    keep_trainable_layout(model)
    return model


def keep_trainable_layout(model: torch.nn.Module) -> None:
    """On a CPU with AVX512-BF16, bitsandbytes 0.50 repacks a 4-bit layer's weights for its
    inference kernel the first time the layer runs in eval mode without gradients (the held-out
    evaluation does, before the first step), and never back. That kernel has no backward:
    from then on no gradient flows through the frozen 4-bit matrices to the LoRA weights
    before them (torch warns "an autograd kernel was not registered"), and the run trains on
    wrong gradients. The repacking is turned off; evaluation dequantizes as training does."""
    from bitsandbytes.nn.modules import Linear4bit

    for module in model.modules():
        if isinstance(module, Linear4bit):
            module.support_avx512bf16_for_cpu = False


def prepare(model: Any, gradient_checkpointing: bool, held: torch.dtype = torch.float32) -> Any:
    """Ready a quantized base for LoRA: unquantized parts in fp32, inputs that carry a
    gradient, and non-reentrant activation checkpointing when asked (what DDP can follow);
    then the frozen embedding and head matrices held in `held` (Quantization.held_dtype)."""
    model = prepare_model_for_kbit_training(
        model,
        use_gradient_checkpointing=gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
    )
    if held != torch.float32:
        hold_frozen(model, held)
    return model


def hold_frozen(model: Any, dtype: torch.dtype) -> None:
    """Hold the frozen input embeddings and LM head (one matrix when tied) in `dtype`.

    The head's input is cast to `dtype` and its logits back to fp32, as a quantized layer
    casts around its `compute_dtype` matmul; the embeddings' output is widened to fp32 so the
    decoder's residual stream keeps its precision. Trainable matrices are left alone."""
    embeddings: torch.nn.Module = model.get_input_embeddings()
    head: torch.nn.Module | None = model.get_output_embeddings()
    for module in (embeddings, head):
        if module is None or any(p.requires_grad for p in module.parameters()):
            continue
        module.to(dtype)
    if embeddings.weight.dtype == dtype:
        embeddings.register_forward_hook(_widen)
    if head is not None and head.weight.dtype == dtype:
        head.register_forward_pre_hook(lambda _m, args: tuple(a.to(dtype) for a in args))
        head.register_forward_hook(_widen)


def _widen(_module: torch.nn.Module, _args: Any, output: torch.Tensor) -> torch.Tensor:
    return output.float()


def quantized_bytes(model: torch.nn.Module) -> tuple[int, int]:
    """(bytes the quantized linear layers take, bytes they would take in fp32), counting
    the packed weights and every block scale of their quantization state."""
    from bitsandbytes.nn.modules import Linear4bit, Linear8bitLt

    held = full = 0
    for module in model.modules():
        if isinstance(module, Linear4bit | Linear8bitLt):
            weight: Any = module.weight
            held += weight.numel() * weight.element_size()
            state = getattr(weight, "quant_state", None)
            scales = getattr(weight, "SCB", None)  # 8-bit: one scale per row
            if state is not None:
                held += _state_bytes(state)
            elif isinstance(scales, torch.Tensor):
                held += scales.numel() * scales.element_size()
            full += module.in_features * module.out_features * 4
    return held, full


def _state_bytes(state: Any) -> int:
    total = 0
    for name in ("absmax", "code"):
        tensor = getattr(state, name, None)
        if isinstance(tensor, torch.Tensor):
            total += tensor.numel() * tensor.element_size()
    if getattr(state, "state2", None) is not None:
        total += _state_bytes(state.state2)
    return total
