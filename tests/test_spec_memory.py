"""The memory estimate of a training step (oneseekd/spec/memory.py), in numbers, and the
automatic activation checkpointing it decides."""

from __future__ import annotations

import subprocess
import sys

import pytest

from oneseekd.spec.memory import (
    Shape,
    activation_bytes,
    fits,
    logits_bytes,
    step_bytes,
)

# Llama-3.1-8B's config.json (KB-Llama-3.1-8B-Swedish has the same shape)
LLAMA_8B = {
    "model_type": "llama",
    "num_hidden_layers": 32,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
}
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
    assert logits_bytes(EIGHT_B, 4096) == 256 * 128256 * 16  # 525 MB
    assert logits_bytes(EIGHT_B, 100) == 100 * 128256 * 16
    assert logits_bytes(EIGHT_B, 4096, chunked=False) == 4096 * 128256 * 16  # 8.4 GB


@pytest.mark.parametrize(
    ("weights", "held", "batch", "seq", "memory_gb", "fits_without"),
    [
        # 8B bf16 at 8 x 512: 40.3 GB a step without checkpointing
        (BF16_WEIGHTS, "16-bit", 8, 512, 24, False),
        (BF16_WEIGHTS, "16-bit", 8, 512, 40, False),
        (BF16_WEIGHTS, "16-bit", 8, 512, 80, True),
        # one row of 512: 19.6 GB, which a 40 GB GPU holds without recomputing anything
        (BF16_WEIGHTS, "16-bit", 1, 512, 40, True),
        # 8 x 2048 (111.5 GB) fits an H200 (141 GB: 119.9 GB is 85 %); 8 x 4096 does not
        (BF16_WEIGHTS, "16-bit", 8, 2048, 141, True),
        (BF16_WEIGHTS, "16-bit", 8, 4096, 141, False),
        # 8B in 4 bits at 8 x 512: 37.4 GB, more than 85 % of 40 GB
        (NF4_WEIGHTS, "quantized", 8, 512, 24, False),
        (NF4_WEIGHTS, "quantized", 8, 512, 40, False),
        (NF4_WEIGHTS, "quantized", 8, 512, 48, True),
        (NF4_WEIGHTS, "quantized", 8, 512, 80, True),
        # at 8 x 1024 (68.6 GB, just over 85 % of 80 GB) only the H200 holds it
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


def test_the_step_adds_weights_activations_and_logits() -> None:
    tokens = 8 * 512
    assert step_bytes(NF4_WEIGHTS, EIGHT_B, tokens, "quantized", False) == (
        NF4_WEIGHTS + 31_245_887_078 + 256 * 128256 * 16
    )
    assert fits(85, 100) and not fits(86, 100)


def test_the_estimate_imports_no_torch() -> None:
    # intake and oneseekctl read it, and neither may import torch
    code = "import sys, oneseekd.spec.memory; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
