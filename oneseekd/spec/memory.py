"""What one LoRA training step holds in memory, estimated from the model's config.json: plain
arithmetic without torch, so intake and `oneseekctl` can use it as the trainer does.

The activations are the tensors autograd keeps from the forward pass for the backward pass.
For a Llama-shaped decoder (SDPA attention, a quarter as many KV heads as query heads, LoRA
on q_proj and v_proj with dropout, the lean SwiGLU MLP of trainer/swiglu.py) they are, per
token and per layer, a multiple of the hidden size h and one of the intermediate size i that
depend on how the base is held. Measured with autograd's saved-tensor hooks on the CPU, at
h 256 and 512 and i 896 and 1792, on a padded batch of 2 x 512 (one row 400 tokens long: a
padding mask, as the trainer's batches have, makes attention take K and V repeated to every
head), as the difference between 4 and 2 layers (so the embeddings, the head and the loss
drop out); the fits hold to 3.5 % at h 256 and exactly at h 512:

    held         bytes per token and layer
    16-bit       30.2 h + 4 i   a GPU: bf16 or fp16 weights under autocast
    quantized    30.2 h + 8 i   4- or 8-bit (bitsandbytes): gate and up come out in fp32
    fp32         44.2 h + 8 i   no autocast (and a CPU's bf16 autocast over fp32 weights,
                                which keeps less)

The h part: the norms' inputs and outputs (fp32 inside RMSNorm), q, k and v before and after
the rotary embedding, the attention output, the LoRA inputs and their dropout masks. With
activation checkpointing a layer keeps only its input (the residual stream: 2 bytes a value
in 16 bits, 4 otherwise) and one layer at a time is recomputed in the backward pass.

A step also holds the loss's logits: with the chunked loss, CHUNK_TOKENS positions at a time
(the logits, their fp32 cast where they are 16-bit, the log-softmax and its gradient: 14
bytes a logit, 12 in fp32); without it, every position's. They are freed before the
backward pass reaches the layers, where it holds beside the kept activations gradients of
about 0.6 of one layer's activations, or with checkpointing the recomputed layer and as much
again: the step's peak is the larger of the two. The weights come from the caller (the
trainer counts them on the loaded model).

The held-out evaluation keeps nothing for a backward pass: its peak is the weights and the
larger of one layer's forward pass (gate, up and their product, and the residual stream's
tensors: 12 i + 33 h bytes a token with fp32 values, 6 i + 17.5 h in 16 bits) and one chunk
of logits with its log-softmax (8 bytes a logit, 10 where they are 16-bit) beside the hidden
states.

These peaks hold to 15 % of the tensors a CPU step and evaluation really hold, at the shapes
tests/test_spec_memory.py measures. What they leave out is small beside a 7-8B model's
activations (LoRA weights, their gradients and AdamW moments: tens of MB) or is the
allocator's own (CUDA context, fragmentation): what FIT_SHARE leaves free is for them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

Held = Literal["16-bit", "quantized", "fp32"]

# bytes per token and layer: (per hidden value, per intermediate value); see the table above
PER_TOKEN_LAYER: dict[Held, tuple[float, float]] = {
    "16-bit": (30.2, 4.0),
    "quantized": (30.2, 8.0),
    "fp32": (44.2, 8.0),
}
RESIDUAL_BYTES: dict[Held, int] = {"16-bit": 2, "quantized": 4, "fp32": 4}
# positions (over the whole batch) whose logits one chunk of the chunked loss holds (the
# trainer's loss module reads it from here)
CHUNK_TOKENS = 256
# a logit of the loss: the logit (2 or 4 bytes), its fp32 cast, the log-softmax, its gradient
LOGIT_BYTES: dict[Held, int] = {"16-bit": 14, "quantized": 14, "fp32": 12}
# what the backward pass holds beside the kept activations, in one layer's activations:
# without checkpointing, gradients of about 0.6 of a layer; with it, the recomputed layer and
# about as much again in gradients
BACKWARD_LAYERS = 0.6
RECOMPUTED_BACKWARD_LAYERS = 2.0
# evaluation, a token of one layer's forward pass: (per hidden value, per intermediate value)
EVAL_PER_TOKEN: dict[Held, tuple[float, float]] = {
    "16-bit": (17.5, 6.0),
    "quantized": (33.0, 12.0),
    "fp32": (33.0, 12.0),
}
# evaluation, a logit: the logit (2 or 4 bytes), its fp32 cast, the log-softmax
EVAL_LOGIT_BYTES: dict[Held, int] = {"16-bit": 10, "quantized": 10, "fp32": 8}
# a step fits a device when it needs at most this share of the device's memory; the rest is
# for what the estimate leaves out (see above)
FIT_SHARE = 0.85


@dataclass(frozen=True)
class Shape:
    """What the estimate reads of a model's config.json."""

    layers: int
    hidden: int
    intermediate: int
    vocab: int

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Shape:
        """From config.json's fields (GPT-2's names too; an MLP of 4 h where none is given)."""
        hidden = int(config.get("hidden_size") or config.get("n_embd") or 0)
        mlp = config.get("intermediate_size") or config.get("n_inner") or 4 * hidden
        return cls(
            layers=int(config.get("num_hidden_layers") or config.get("n_layer") or 0),
            hidden=hidden,
            intermediate=int(mlp),
            vocab=int(config.get("vocab_size") or 0),
        )


def layer_bytes(shape: Shape, held: Held) -> float:
    """The activations one layer keeps for one token, without checkpointing."""
    per_hidden, per_intermediate = PER_TOKEN_LAYER[held]
    return per_hidden * shape.hidden + per_intermediate * shape.intermediate


def activation_bytes(shape: Shape, tokens: int, held: Held, checkpointing: bool) -> int:
    """The activations of a micro-batch of `tokens` tokens (batch x sequence length) kept for
    the backward pass: every layer's, or with checkpointing every layer's input and one
    layer's recomputed activations."""
    one_layer = tokens * layer_bytes(shape, held)
    if not checkpointing:
        return round(shape.layers * one_layer)
    return round(tokens * shape.layers * shape.hidden * RESIDUAL_BYTES[held] + one_layer)


def logits_bytes(shape: Shape, tokens: int, held: Held, chunked: bool = True) -> int:
    """The loss's logits: one chunk's with the chunked loss, every token's without."""
    positions = min(tokens, CHUNK_TOKENS) if chunked else tokens
    return positions * shape.vocab * LOGIT_BYTES[held]


def step_bytes(
    weights: int,
    shape: Shape,
    tokens: int,
    held: Held,
    checkpointing: bool,
    chunked: bool = True,
) -> int:
    """The estimated peak of one training step: the weights, the activations kept for the
    backward pass (every layer's, or with checkpointing every layer's input), and the larger
    of the loss's logits (at the start of the backward pass) and what the backward pass
    through a layer holds."""
    one_layer = tokens * layer_bytes(shape, held)
    if checkpointing:
        kept: float = tokens * shape.layers * shape.hidden * RESIDUAL_BYTES[held]
        backward = RECOMPUTED_BACKWARD_LAYERS * one_layer
    else:
        kept = shape.layers * one_layer
        backward = BACKWARD_LAYERS * one_layer
    return weights + round(kept + max(backward, logits_bytes(shape, tokens, held, chunked)))


def eval_bytes(weights: int, shape: Shape, tokens: int, held: Held) -> int:
    """The estimated peak of the held-out evaluation of a batch of `tokens` tokens (chunked:
    trainer/evaluate.py): the weights, and one layer's forward pass or one chunk of logits
    beside the hidden states, whichever is larger."""
    per_hidden, per_intermediate = EVAL_PER_TOKEN[held]
    layer = tokens * (per_hidden * shape.hidden + per_intermediate * shape.intermediate)
    chunk = min(tokens, CHUNK_TOKENS) * shape.vocab * EVAL_LOGIT_BYTES[held]
    return weights + round(max(layer, chunk + tokens * shape.hidden * 4))


def fits(need: int, memory: int) -> bool:
    """Whether a step that needs `need` bytes fits a device of `memory` bytes."""
    return need <= FIT_SHARE * memory
