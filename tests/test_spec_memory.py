"""The memory estimate of a training step (oneseekd/spec/memory.py), in numbers, and the
automatic activation checkpointing it decides."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from bigmodels import LLAMA_8B

from oneseekd.spec.memory import (
    Shape,
    activation_bytes,
    eval_bytes,
    fits,
    logits_bytes,
    step_bytes,
)

EIGHT_B = Shape.from_config(LLAMA_8B)
BF16_WEIGHTS = 16_060_000_000  # 8.03 B parameters in 2 bytes
NF4_WEIGHTS = 5_600_000_000  # the 4-bit layers with their scales, 16-bit embeddings and head
GB = 10**9


def test_the_shape_is_read_from_config_json() -> None:
    assert Shape.from_config(LLAMA_8B) == Shape(
        layers=32, hidden=4096, intermediate=14336, vocab=128256
    )
    gpt2 = Shape.from_config({"n_layer": 12, "n_embd": 768, "n_inner": None, "vocab_size": 50257})
    assert gpt2 == Shape(layers=12, hidden=768, intermediate=3072, vocab=50257)


def test_activations_are_the_measured_bytes_per_token_and_layer() -> None:
    tokens = 8 * 512
    # 16-bit: 30.2 h + 4 i bytes a token and layer = 123,699.2 + 57,344
    assert activation_bytes(EIGHT_B, tokens, "16-bit", False) == 23_729_694_310
    # quantized: gate and up in fp32, 8 i
    assert activation_bytes(EIGHT_B, tokens, "quantized", False) == 31_245_887_078
    assert activation_bytes(EIGHT_B, tokens, "fp32", False) == round(
        32 * tokens * (44.2 * 4096 + 8 * 14336)
    )
    # checkpointed: every layer's input (2 bytes a value in 16 bits) and one layer recomputed
    assert activation_bytes(EIGHT_B, tokens, "16-bit", True) == round(
        tokens * 32 * 4096 * 2 + tokens * (30.2 * 4096 + 4 * 14336)
    )
    assert activation_bytes(EIGHT_B, tokens, "quantized", True) == round(
        tokens * 32 * 4096 * 4 + tokens * (30.2 * 4096 + 8 * 14336)
    )


def test_the_loss_holds_one_chunk_of_logits_or_all_of_them() -> None:
    assert logits_bytes(EIGHT_B, 4096, "16-bit") == 256 * 128256 * 14  # 460 MB
    assert logits_bytes(EIGHT_B, 100, "quantized") == 100 * 128256 * 14
    assert logits_bytes(EIGHT_B, 4096, "fp32", chunked=False) == 4096 * 128256 * 12  # 6.3 GB


@pytest.mark.parametrize(
    ("weights", "held", "batch", "seq", "memory_gb", "fits_without"),
    [
        # 8B bf16 at 8 x 512: 40.2 GB a step without checkpointing
        (BF16_WEIGHTS, "16-bit", 8, 512, 24, False),
        (BF16_WEIGHTS, "16-bit", 8, 512, 40, False),
        (BF16_WEIGHTS, "16-bit", 8, 512, 80, True),
        # one row of 512: 19.5 GB, which a 40 GB GPU holds without recomputing anything
        (BF16_WEIGHTS, "16-bit", 1, 512, 40, True),
        # 8 x 2048 (112.8 GB) fits an H200 (141 GB: 119.9 GB is 85 %); 8 x 4096 does not
        (BF16_WEIGHTS, "16-bit", 8, 2048, 141, True),
        (BF16_WEIGHTS, "16-bit", 8, 4096, 141, False),
        # 8B in 4 bits at 8 x 512: 37.4 GB, more than 85 % of 40 GB
        (NF4_WEIGHTS, "quantized", 8, 512, 24, False),
        (NF4_WEIGHTS, "quantized", 8, 512, 40, False),
        (NF4_WEIGHTS, "quantized", 8, 512, 48, True),
        (NF4_WEIGHTS, "quantized", 8, 512, 80, True),
        # at 8 x 1024 (69.3 GB, just over 85 % of 80 GB) only the H200 holds it
        (NF4_WEIGHTS, "quantized", 8, 1024, 48, False),
        (NF4_WEIGHTS, "quantized", 8, 1024, 80, False),
        (NF4_WEIGHTS, "quantized", 8, 1024, 141, True),
        (NF4_WEIGHTS, "quantized", 8, 2048, 141, False),
    ],
)
def test_a_step_fits_when_it_needs_at_most_85_percent_of_the_device(
    weights: int, held: str, batch: int, seq: int, memory_gb: int, fits_without: bool
) -> None:
    need = step_bytes(weights, EIGHT_B, batch * seq, held, checkpointing=False)  # type: ignore[arg-type]
    assert fits(need, memory_gb * GB) is fits_without
    with_it = step_bytes(weights, EIGHT_B, batch * seq, held, checkpointing=True)  # type: ignore[arg-type]
    assert with_it < need


def test_the_step_adds_the_weights_the_kept_activations_and_the_backward_pass() -> None:
    tokens = 8 * 512
    layer = tokens * (30.2 * 4096 + 8 * 14336)  # 976 MB: one layer's activations, 4-bit base
    # without checkpointing, 0.6 of a layer's gradients outweigh one chunk of logits (460 MB)
    assert step_bytes(NF4_WEIGHTS, EIGHT_B, tokens, "quantized", False) == (
        NF4_WEIGHTS + round(32 * layer + 0.6 * layer)
    )
    # with it, each layer's input in fp32, and a recomputed layer with its gradients
    assert step_bytes(NF4_WEIGHTS, EIGHT_B, tokens, "quantized", True) == (
        NF4_WEIGHTS + round(tokens * 32 * 4096 * 4 + 2 * layer)
    )
    # one row of 128 tokens: the logits chunk is the larger
    small = 128 * (30.2 * 4096 + 4 * 14336)
    assert step_bytes(BF16_WEIGHTS, EIGHT_B, 128, "16-bit", False) == (
        BF16_WEIGHTS + round(32 * small + 128 * 128256 * 14)
    )
    assert fits(85, 100) and not fits(86, 100)


def test_the_estimate_imports_no_torch() -> None:
    # intake and oneseekctl read it, and neither may import torch
    code = "import sys, oneseekd.spec.memory; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- the estimate against the tensors a CPU step and evaluation really hold ------------------
MEASURED = [
    # held, layers, hidden, intermediate, vocabulary, batch, sequence, checkpointing
    ("fp32", 2, 128, 512, 4096, 2, 256, False),
    ("fp32", 4, 256, 896, 2048, 2, 512, True),
    ("fp32", 2, 128, 448, 2048, 1, 2048, False),  # a long row
    ("16-bit", 4, 256, 896, 2048, 2, 512, False),
    ("16-bit", 2, 128, 512, 4096, 1, 1024, True),
    ("quantized", 2, 256, 896, 2048, 2, 256, False),
    ("quantized", 4, 256, 640, 4096, 2, 512, True),
    ("fp32", 4, 128, 448, 8192, 4, 256, False),  # the logits outweigh the layers
]


def built(folder: Path, held: str, checkpointing: bool) -> tuple[Any, Any]:
    """The model as the trainer builds it (16-bit: weights and autocast in bf16, a GPU's
    way; quantized: NF4 over bf16 compute), and the autocast to run it under."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from oneseekd.trainer import quant, swiglu

    autocast: Any = torch.autocast("cpu", dtype=torch.bfloat16)
    if held == "quantized":
        q = quant.quantization(True, False, "nf4", "auto", True, torch.bfloat16)
        base = quant.prepare(quant.load_quantized(folder, q, "cpu"), checkpointing, q.held_dtype)
    else:
        dtype = torch.bfloat16 if held == "16-bit" else torch.float32
        base = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
        if checkpointing:
            base.activation_checkpointing_enable()
        if held == "fp32":
            autocast = contextlib.nullcontext()
    swiglu.lean_mlps(base)
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.1, target_modules=["q_proj", "v_proj"])
    model = get_peft_model(base, lora)
    for param in model.parameters():
        if param.requires_grad:
            param.data = param.data.float()
    model.train()
    return model, autocast


@pytest.mark.parametrize(
    ("held", "layers", "hidden", "intermediate", "vocab", "batch", "seq", "checkpointing"),
    MEASURED,
)
def test_the_estimated_peaks_are_within_15_percent_of_the_measured_ones(
    tmp_path: Path,
    held: str,
    layers: int,
    hidden: int,
    intermediate: int,
    vocab: int,
    batch: int,
    seq: int,
    checkpointing: bool,
) -> None:
    from peakmem import peak_bytes
    from transformers import LlamaConfig, LlamaForCausalLM

    from oneseekd.trainer.data import Encoded
    from oneseekd.trainer.evaluate import HeldOut, measure
    from oneseekd.trainer.loading import Device
    from oneseekd.trainer.loss import ChunkedCausalLM
    from oneseekd.trainer.world import World

    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 32,
        num_key_value_heads=max(1, hidden // 128),
        max_position_embeddings=seq,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    model, autocast = built(tmp_path, held, checkpointing)
    ids = torch.randint(3, vocab, (batch, seq), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    if batch > 1:  # padded, as the trainer's batches are (a row alone never is)
        mask[-1, seq * 3 // 4 :] = 0
    labels = ids.masked_fill(mask == 0, -100)
    rows = HeldOut(Encoded([r[m == 1].tolist() for r, m in zip(ids, mask, strict=True)]), [1], "")
    held_now = [*model.parameters(), *model.buffers()]
    weights = sum(
        {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in held_now}.values()
    )

    def step() -> None:
        with autocast:
            summed, _ = ChunkedCausalLM(model)(input_ids=ids, labels=labels, attention_mask=mask)
        summed.backward()
        model.zero_grad(set_to_none=True)

    def evaluation() -> None:
        with autocast:
            measure(model, rows, 0, batch, World(), False, Device("cpu", torch.float32, False))

    step()  # the first step makes what later ones reuse (rotary tables)
    measured_step, measured_eval = peak_bytes(step, held_now), peak_bytes(evaluation, held_now)
    shape = Shape.from_config(config.to_dict())
    tokens = batch * seq
    assert step_bytes(weights, shape, tokens, held, checkpointing) == pytest.approx(  # type: ignore[arg-type]
        measured_step, rel=0.15
    )
    assert eval_bytes(weights, shape, tokens, held) == pytest.approx(measured_eval, rel=0.15)  # type: ignore[arg-type]
