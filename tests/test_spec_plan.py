"""spec/plan.py: the base's weights counted from config.json as the trainer holds them, and
the plan's checkpointing decision the trainer's own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from bigmodels import LLAMA_8B
from transformers import LlamaConfig, LlamaForCausalLM

from oneseekd.spec.memory import FIT_SHARE
from oneseekd.spec.plan import Params, fit_problem, plan, token_flops
from oneseekd.trainer import quant, sharding
from oneseekd.trainer.hubless import import_bitsandbytes
from oneseekd.trainer.loading import Device, load_model, wants_checkpointing
from oneseekd.trainer.tiny import tiny_model

GIB = 2**30


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
def test_weights_from_config_are_the_trainers_count(tmp_path: Path, arch: str) -> None:
    path = tiny_model(tmp_path, f"Tiny-{arch}", arch)
    params = Params.from_config(json.loads((path / "config.json").read_text()))
    full = load_model(path, Device("cpu", torch.float32, scaler=False))
    assert params.weight_bytes("fp32") == sharding.weight_bytes(full)
    assert params.weight_bytes("16-bit") == sharding.weight_bytes(full) // 2
    import_bitsandbytes()
    for autocast, frozen16 in ((None, False), (torch.bfloat16, True)):
        q = quant.quantization(True, False, "nf4", "auto", True, autocast)
        assert q is not None
        base = quant.prepare(quant.load_quantized(path, q, "cpu"), False, q.held_dtype)
        want = sharding.weight_bytes(base)
        assert params.weight_bytes("quantized", frozen16=frozen16) == want


def test_tied_embeddings_count_once() -> None:
    config = LlamaConfig(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    params = Params.from_config(config.to_dict())
    assert params.total == sum(p.numel() for p in model.parameters())


def test_llama_8b_has_8_billion_parameters() -> None:
    assert Params.from_config(LLAMA_8B).total == 8_030_261_248  # Meta's model card: 8.03B


def test_the_plan_decides_checkpointing_as_the_trainer_does() -> None:
    for gib in (24, 40, 48, 80, 141):
        memory = gib * GIB
        p = plan(LLAMA_8B, 8, 2048, "16-bit", memory)
        trainer = wants_checkpointing(None, p.step_off, memory)
        if p.fits:
            assert p.checkpointing == trainer
        assert p.fits == (min(p.step_on, p.step_off) <= FIT_SHARE * memory)
    # 8B bf16 at 8 x 2048: too large for 24 GB either way, checkpointed on 80 GB
    assert plan(LLAMA_8B, 8, 2048, "16-bit", 24 * GIB).describe().startswith("does not fit (")
    assert plan(LLAMA_8B, 8, 2048, "16-bit", 80 * GIB).checkpointing is True
    # asked for: only that way, or not at all
    assert plan(LLAMA_8B, 8, 2048, "16-bit", 80 * GIB, asked=False).checkpointing is None
    assert (
        plan(LLAMA_8B, 1, 512, "quantized", 24 * GIB)
        .describe()
        .startswith("fits, checkpointing off (")
    )


def test_a_step_that_cannot_fit_names_its_numbers_and_fixes() -> None:
    options = {"batch_size": 8, "max_seq_len": 2048}
    assert fit_problem("Llama-3.1-8B", LLAMA_8B, options, 24 * GIB, gpu=True) == (
        "Llama-3.1-8B (16-bit base) at batch 8 x 2048 tokens needs about 24.5 GiB per GPU "
        "with gradient checkpointing; this host's GPUs have 24.0 GiB, of which a run plans on "
        '85% (20.4 GiB): ask for micro_batch_size "auto" (here 4: the same batch in 2 passes), '
        "or batch_size 4 with gradient_accumulation_steps 2 (the same effective batch)"
    )
    off = {**options, "gradient_checkpointing": False}
    assert 'ask for gradient_checkpointing: true, or micro_batch_size "auto" (here 4' in str(
        fit_problem("Llama-3.1-8B", LLAMA_8B, off, 80 * GIB, gpu=True)
    )
    # the bf16 weights alone (15 GiB) do not fit 16 GB: 4-bit is the only way
    assert str(
        fit_problem("Llama-3.1-8B", LLAMA_8B, {**options, "batch_size": 4}, 16 * GIB, gpu=True)
    ).endswith("13.6 GiB): ask for load_in_4bit")
    assert fit_problem("Llama-3.1-8B", LLAMA_8B, options, 80 * GIB, gpu=True) is None
    # sharded, the weights are split over the GPUs: not judged here
    assert fit_problem("L", LLAMA_8B, {**options, "sharding": "fsdp"}, GIB, gpu=True) is None


def test_token_flops_are_lora_training_flops() -> None:
    # 8B: 6.98 B projection weights and the 525 M head, forward and backward to the inputs
    # (4 a weight), and attention at 2048 tokens (12 L h s)
    assert token_flops(LLAMA_8B, 2048) == 4 * (6_979_321_856 + 128256 * 4096) + 12 * 32 * (
        4096 * 2048
    )


def test_over_several_gpus_each_is_judged_on_its_share_of_the_batch() -> None:
    options = {"batch_size": 8, "max_seq_len": 2048}
    one = fit_problem("Llama-3.1-8B", LLAMA_8B, options, 24 * GIB, gpu=True)
    assert one is not None  # 8 rows on one 24 GB GPU do not fit
    assert fit_problem("Llama-3.1-8B", LLAMA_8B, options, 24 * GIB, True, processes=2) is None
    four = fit_problem(
        "Llama-3.1-8B", LLAMA_8B, {**options, "batch_size": 16}, 24 * GIB, True, processes=2
    )
    assert four is not None and "(8 rows on each of 2 GPUs)" in four
    assert "batch_size 8 with gradient_accumulation_steps 2" in four
    # CPU processes share one RAM: the whole batch is judged
    assert fit_problem("x", LLAMA_8B, options, 24 * GIB, gpu=False, processes=2) is not None
