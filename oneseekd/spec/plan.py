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

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from oneseekd.spec.memory import FIT_SHARE, Held, Shape, eval_bytes, fits, step_bytes


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


def token_flops(config: Mapping[str, Any], seq: int) -> int:
    """The model FLOPs of training on one token of a row of `seq` tokens with LoRA: the forward
    pass (2 a weight of the decoder's projections and the head) and the backward pass to the
    activations (as much again; the frozen base computes no weight gradients), and attention's
    scores and weighted sum (4 L h s forward, twice that backward). LoRA's own are left out."""
    params = Params.from_config(config)
    hidden, vocab = int(config["hidden_size"]), int(config["vocab_size"])
    layers = int(config["num_hidden_layers"])
    return 4 * (params.linear + vocab * hidden) + 12 * layers * hidden * seq


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


def micro_batch(
    asked: int | str | None, batch: int, need_at: Callable[[int], int], memory: int | None
) -> int:
    """The rows of one forward and backward pass (the trainer's micro-batch): the whole
    batch unless the request asks for fewer; with "auto", the largest divisor of the batch
    whose step (`need_at(rows)` bytes) fits `memory` (spec.memory.fits: 85 %), 1 when none
    does, the whole batch where no device memory is known (a CPU). The optimizer step is the
    same either way: its gradient is the token mean over the batch (trainer/recipe.py)."""
    if asked is None:
        return batch
    if asked != "auto":
        return max(1, min(int(asked), batch))
    if memory is None:
        return batch
    divisors = [rows for rows in range(batch, 0, -1) if batch % rows == 0]
    return next((rows for rows in divisors if fits(need_at(rows), memory)), 1)


def held_for(options: Mapping[str, Any], gpu: bool, native_bf16: bool | None = None) -> Held:
    """How the trainer would hold a model's base (trainer/setup.py `_held`,
    trainer/precision.py `decide`): quantized under load_in_4bit or 8bit; in the autocast
    dtype, 16-bit, on a GPU unless fp32 is asked, and on a CPU under bf16 (asked, or "auto" on
    a CPU that computes it natively); fp32 otherwise. `native_bf16` None: the CPU's answer is
    not known here (no torch), and "auto" is judged as fp32, the larger."""
    precision = options.get("precision", "auto")
    if options.get("load_in_4bit") or options.get("load_in_8bit"):
        return "quantized"
    if precision == "fp32":
        return "fp32"
    if gpu or precision == "bf16" or (precision == "auto" and native_bf16):
        return "16-bit"
    return "fp32"


def checkpointing_asked(options: Mapping[str, Any], gpu: bool) -> bool | None:
    """gradient_checkpointing as the trainer reads it: "auto" (None) decides on a GPU only,
    and is off on a CPU (loading.wants_checkpointing)."""
    asked = options.get("gradient_checkpointing")
    return False if asked is None and not gpu else asked


def size(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def fit_problem(
    name: str,
    config: Mapping[str, Any],
    options: Mapping[str, Any],
    memory: int,
    gpu: bool,
    native_bf16: bool | None = None,
    processes: int = 1,
) -> str | None:
    """Why model `name` with these options (a request's, resolved) cannot train on a device of
    `memory` bytes (a GPU's, or the host's RAM), with the fixes that would fit; None when it
    fits. Over `processes` GPUs each takes its share of a batch's rows (trainer/world.py
    `shard`); CPU processes share one RAM, so there the whole batch is judged. Sharded runs
    (FSDP) split the weights, which the plan does not model: not judged."""
    if options.get("sharding") == "fsdp":
        return None
    held = held_for(options, gpu, native_bf16)
    bits = 8 if options.get("load_in_8bit") else 4
    weights = Params.from_config(config).weight_bytes(held, bits, frozen16=gpu)
    batch, seq = int(options["batch_size"]), int(options["max_seq_len"])
    accum = int(options.get("gradient_accumulation_steps") or 1)
    chunked = bool(options.get("chunked_loss", True))
    asked = checkpointing_asked(options, gpu)
    shared = processes if gpu and processes > 1 else 1
    rows = -(-batch // shared)  # each GPU's share of a batch

    def at(b: int, s: int, h: Held = held, w: int = weights, a: bool | None = asked) -> Plan:
        return plan(config, b, s, h, memory, weights=w, chunked=chunked, asked=a)

    p = at(rows, seq)
    if p.fits:
        return None
    # a divisor of the rows, so accumulation keeps the effective batch exactly
    divisors = [b for b in range(rows - 1, 0, -1) if rows % b == 0]
    smaller = next((b for b in divisors if at(b, seq).fits), None)
    micro = options.get("micro_batch_size")
    if micro == "auto" and smaller is not None:
        return None  # the trainer splits each batch into micro-batches that fit
    if isinstance(micro, int) and micro < rows and at(micro, seq).fits:
        return None
    fixes = []
    if asked is False and at(rows, seq, a=None).fits:
        fixes.append("gradient_checkpointing: true")
    if held != "quantized":
        four = Params.from_config(config).weight_bytes("quantized", 4, frozen16=gpu)
        if at(rows, seq, "quantized", four).fits:
            fixes.append("load_in_4bit")
    if smaller is not None:
        fixes.append(
            f'micro_batch_size "auto" (here {smaller}: the same batch in {rows // smaller} '
            f"passes), or batch_size {smaller * shared} with gradient_accumulation_steps "
            f"{accum * rows // smaller} (the same effective batch)"
        )
    elif at(1, min(seq, 512)).fits:
        fixes.append("batch_size 1 and a shorter max_seq_len")
    where = "per GPU" if gpu else "of memory"
    have = "this host's GPUs have" if gpu else "this host has"
    step = p.step_off if asked is False else p.step_on
    need = max(step, p.evaluation)
    ckpt = " without" if asked is False else " with"
    each = f" ({rows} rows on each of {shared} GPUs)" if shared > 1 else ""
    text = (
        f"{name} ({held} base) at batch {batch} x {seq} tokens{each} needs about {size(need)} "
        f"{where}{ckpt} gradient checkpointing; {have} {size(memory)}, of which a run "
        f"plans on {FIT_SHARE:.0%} ({size(FIT_SHARE * memory)})"
    )
    if not fixes:
        return f"{text}: it cannot train on this host; use a host with more memory"
    return f"{text}: ask for " + ", or ".join(fixes)
