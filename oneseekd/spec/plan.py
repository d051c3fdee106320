"""The memory plan of a LoRA run from the base model's config.json alone (no torch): what its
weights take, what a step and the evaluation need (spec/memory.py), and what the plan picks
for a device: gradient checkpointing off, on, or no way to fit.

The weights are counted as the trainer holds them (sharding.weight_bytes of the prepared
base): every parameter in 16 bits or fp32; under QLoRA the decoder's linear weights in half a
byte (4-bit) or one (8-bit), the frozen embedding and head matrices in the compute dtype
(quant.hold_frozen: 16 bits where the quantized matmuls compute in 16 bits, else fp32) and
the norms and biases in fp32 (peft's prepare_model_for_kbit_training). The 4-bit block
scales (about 1/64 byte a weight with double quantization) are not parameters and are not
counted, as the trainer does not count them; FIT_SHARE's headroom takes them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from oneseekd.spec.memory import Held, Shape, eval_bytes, fits, step_bytes


@dataclass(frozen=True)
class Params:
    """A Llama-shaped decoder's parameters by how QLoRA holds them."""

    linear: int  # the decoder layers' projections (quantized under QLoRA)
    frozen: int  # the embedding matrix, and the head's when it is not tied
    other: int  # norms and biases

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Params:
        hidden = int(config["hidden_size"])
        heads = int(config["num_attention_heads"])
        kv_heads = int(config.get("num_key_value_heads") or heads)
        head_dim = int(config.get("head_dim") or hidden // heads)
        inter = int(config["intermediate_size"])
        layers = int(config["num_hidden_layers"])
        vocab = int(config["vocab_size"])
        q, kv = heads * head_dim, kv_heads * head_dim
        per_layer = hidden * q + 2 * hidden * kv + q * hidden + 3 * hidden * inter
        # Qwen2 has biases on q, k and v; Llama and Mistral name theirs (attention_bias)
        qkv_bias = bool(config.get("attention_bias", config.get("model_type") == "qwen2"))
        biases = (q + 2 * kv) * qkv_bias + (2 * inter + hidden) * bool(config.get("mlp_bias"))
        tied = bool(config.get("tie_word_embeddings", False))
        return cls(
            linear=layers * per_layer,
            frozen=vocab * hidden * (1 if tied else 2),
            other=layers * (2 * hidden + biases) + hidden,
        )

    @property
    def total(self) -> int:
        return self.linear + self.frozen + self.other

    def weight_bytes(self, held: Held, bits: int = 4, frozen16: bool = True) -> int:
        """The base's bytes held as `held`; quantized, in `bits` bits, its embedding and head
        in 16 bits when `frozen16` (computing in bf16 or fp16) and fp32 otherwise."""
        if held == "16-bit":
            return 2 * self.total
        if held == "fp32":
            return 4 * self.total
        return self.linear * bits // 8 + self.frozen * (2 if frozen16 else 4) + 4 * self.other


@dataclass(frozen=True)
class Plan:
    """What a micro-batch of `tokens` needs on a device of `memory` bytes, and what is picked."""

    memory: int
    weights: int
    step_off: int  # a training step without gradient checkpointing
    step_on: int  # with it
    evaluation: int
    checkpointing: bool | None  # None: it does not fit either way

    @property
    def fits(self) -> bool:
        return self.checkpointing is not None

    @property
    def need(self) -> int:
        """The peak of the step picked (with checkpointing where nothing fits)."""
        step = self.step_off if self.checkpointing is False else self.step_on
        return max(step, self.evaluation)

    def describe(self) -> str:
        gib = self.need / 2**30
        if self.checkpointing is None:
            return f"does not fit ({gib:.1f} GiB with checkpointing)"
        return f"fits, checkpointing {'on' if self.checkpointing else 'off'} ({gib:.1f} GiB)"


def plan(
    config: Mapping[str, Any],
    batch: int,
    seq: int,
    held: Held,
    memory: int,
    *,
    weights: int | None = None,
    chunked: bool = True,
    asked: bool | None = None,
) -> Plan:
    """The plan for a micro-batch of batch x seq tokens: checkpointing as `asked`, else off
    when a step without it fits (spec.memory.fits: 85 % of `memory`), as the trainer's
    loading.wants_checkpointing decides; on when only a step with it fits; None when neither
    does. `weights` defaults to the count from config.json (Params)."""
    shape = Shape.from_config(config)
    if weights is None:
        weights = Params.from_config(config).weight_bytes(held)
    tokens = batch * seq
    off = step_bytes(weights, shape, tokens, held, checkpointing=False, chunked=chunked)
    on = step_bytes(weights, shape, tokens, held, checkpointing=True, chunked=chunked)
    evaluation = eval_bytes(weights, shape, tokens, held)
    choices = [asked] if asked is not None else [False, True]
    picked: bool | None = None
    for ckpt in choices:
        if fits(max(on if ckpt else off, evaluation), memory):
            picked = ckpt
            break
    return Plan(memory, weights, off, on, evaluation, picked)
