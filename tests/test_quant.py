"""QLoRA on the CPU: a tiny Llama in 4-bit NF4 with double quantization, and in 8 bits,
trains with a falling loss and leaves an adapter PEFT loads."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import bitsandbytes as bnb
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

from oneseekd.trainer.embedded import save_folder
from oneseekd.trainer.merge import save_merged
from oneseekd.trainer.quant import (
    Quantization,
    QuantizationRefused,
    load_quantized,
    prepare,
    quantization,
    quantized_bytes,
)
from oneseekd.trainer.tiny import tiny_model, tiny_tokenizer

# its numbers follow the CPU's bf16 answer: CI runs it with ONESEEK_CPU_BF16 forced both ways
pytestmark = pytest.mark.precision

NF4 = Quantization(4, "nf4", torch.float32, double=True)
INT8 = Quantization(8)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("models"))


def batch() -> dict[str, torch.Tensor]:
    ids = torch.randint(3, 300, (4, 32), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "labels": ids}


@pytest.mark.parametrize("q", [NF4, INT8], ids=["nf4-double", "int8"])
def test_qlora_trains_and_saves_an_adapter_peft_loads(
    tiny: Path, tmp_path: Path, q: Quantization
) -> None:
    warnings.filterwarnings("ignore", message="MatMul8bitLt")  # bnb: fp32 inputs run as fp16
    base = load_quantized(tiny, q, "cpu")
    kind = bnb.nn.Linear4bit if q.bits == 4 else bnb.nn.Linear8bitLt
    assert isinstance(base.model.layers[0].self_attn.q_proj, kind)
    if q.bits == 4:
        state = base.model.layers[0].self_attn.q_proj.weight.quant_state
        assert (state.quant_type, state.nested) == ("nf4", True)
    torch.manual_seed(0)
    model = get_peft_model(
        prepare(base, gradient_checkpointing=True),
        LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]),
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    losses = []
    model.train()
    for _ in range(12):
        loss = model(**batch(), use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] - 0.05, losses

    model.eval()
    with torch.no_grad():
        trained = model(input_ids=batch()["input_ids"]).logits
    model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()

    again = PeftModel.from_pretrained(load_quantized(tiny, q, "cpu"), tmp_path / "adapter")
    again.eval()
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=batch()["input_ids"]).logits, trained)
    # and onto the unquantized base (serving without bitsandbytes): the same weights load
    full = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32), tmp_path / "adapter"
    )
    lora = {n: p for n, p in model.named_parameters() if "lora_" in n}
    loaded = {n: p for n, p in full.named_parameters() if "lora_" in n}
    assert lora.keys() == loaded.keys()
    for name, weight in lora.items():
        assert torch.equal(weight.detach(), loaded[name].detach())


def _input_gradient(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """The loss's gradient at the input embeddings: what reaches the first layers' LoRA
    weights through every frozen 4-bit matrix."""
    model.train()
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    model(inputs_embeds=embeds).logits.float().square().mean().backward()
    assert embeds.grad is not None
    return embeds.grad


def test_a_held_out_evaluation_leaves_the_4bit_layers_backpropagating(
    tiny: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # bitsandbytes reads the CPU's AVX512-BF16 when it builds a layer: said yes here, so the
    # test means the same on every CPU (on one that has it, this is what happens anyway)
    monkeypatch.setattr(bnb.nn.modules, "has_avx512bf16", lambda: True)
    model = load_quantized(tiny, NF4, "cpu")
    ids = batch()["input_ids"][:2, :16]
    before = _input_gradient(model, ids)
    model.eval()
    with torch.no_grad():  # as the trainer evaluates the base before the first step
        model(input_ids=ids)
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and not any(
        getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in layers
    )
    after = _input_gradient(model, ids)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-7)


def test_four_bit_weights_take_under_a_fifth_of_fp32(tiny: Path) -> None:
    held, full = quantized_bytes(load_quantized(tiny, NF4, "cpu"))
    ratio = held / full
    print(f"4-bit NF4 + double quantization: {held} bytes for {full} in fp32 ({ratio:.3f}x)")
    assert 0.12 < ratio < 0.2  # half a byte per weight of four, plus the block scales
    whole = load_quantized(tiny, NF4, "cpu").get_memory_footprint()
    fp32 = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32).get_memory_footprint()
    # a tiny model is mostly embeddings, which stay unquantized: the whole saves less
    print(f"whole model: {whole} bytes against {fp32} in fp32 ({whole / fp32:.3f}x)")
    assert whole < fp32


def test_the_options_make_the_config() -> None:
    q = quantization(True, False, "fp4", "bfloat16", False, None)
    assert q == Quantization(4, "fp4", torch.bfloat16, False)
    config = q.config()
    assert (config.load_in_4bit, config.bnb_4bit_quant_type, config.bnb_4bit_use_double_quant) == (
        True,
        "fp4",
        False,
    )
    assert config.bnb_4bit_compute_dtype == torch.bfloat16
    # auto computes in the training precision
    assert quantization(True, False, "nf4", "auto", True, torch.bfloat16) == Quantization(
        4, "nf4", torch.bfloat16, True
    )
    assert quantization(False, True, "nf4", "auto", True, None) == Quantization(8, "nf4")
    assert quantization(False, False, "nf4", "auto", True, None) is None
    with pytest.raises(QuantizationRefused, match="ask for one of them"):
        quantization(True, True, "nf4", "auto", True, None)
    assert NF4.describe() == {
        "bits": 4,
        "method": "nf4",
        "compute_dtype": "float32",
        "double_quantization": True,
        "embeddings_dtype": "float32",
        "library": "bitsandbytes 0.50.2",
    }
    assert INT8.describe() == {
        "bits": 8,
        "method": "llm.int8",
        "embeddings_dtype": "float32",
        "library": "bitsandbytes 0.50.2",
    }
    # 4-bit computing in bf16 holds the frozen embeddings and head in bf16; 8-bit never does
    assert Quantization(4, "nf4", torch.bfloat16).held_dtype == torch.bfloat16
    assert Quantization(8, "nf4", torch.bfloat16).held_dtype == torch.float32


def _bf16_copy(model: Path, parent: Path) -> Path:
    """The model at `model` stored again in bf16, with its tokenizer, as parent/base."""
    weights = AutoModelForCausalLM.from_pretrained(model, dtype=torch.bfloat16)
    return save_folder(weights, AutoTokenizer.from_pretrained(model), parent, "base")


def _lora_over(base: Path, q: Quantization, targets: list[str]) -> Any:
    """A LoRA model over `base` quantized as `q`, its B matrices drawn (not the zero init)."""
    torch.manual_seed(0)
    model = get_peft_model(
        prepare(load_quantized(base, q, "cpu"), gradient_checkpointing=False, held=q.held_dtype),
        LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=targets),
    )
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05)
    return model.eval()


def _stored_dtypes(folder: Path) -> set[str]:
    with safe_open(folder / "model.safetensors", "pt") as fh:
        return {fh.get_slice(key).get_dtype() for key in fh.keys()}  # noqa: SIM118


def test_an_8bit_merged_export_is_the_int8_weights_plus_the_adapter_in_bf16(
    tiny: Path, tmp_path: Path
) -> None:
    """LLM.int8 keeps each weight row as int8 codes times the row's scale: the export holds
    those weights with the LoRA delta added, each within an int8 step (and bf16's rounding)
    of the base's own weight plus the delta (a delta left out: about 25 steps off, up to 130),
    in the base's bf16."""
    warnings.filterwarnings("ignore", message="MatMul8bitLt")  # bnb: fp32 inputs run as fp16
    base = _bf16_copy(tiny, tmp_path)
    model = _lora_over(base, INT8, ["q_proj", "v_proj"])
    save_merged(model, base, tmp_path / "merged")
    assert _stored_dtypes(tmp_path / "merged") == {"BF16"}
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    stored = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)  # bf16 values
    layers = model.get_base_model().model.layers
    for i, layer in enumerate(merged.model.layers):
        for name in ("q_proj", "v_proj", "o_proj"):
            got = getattr(layer.self_attn, name).weight
            want = getattr(stored.model.layers[i].self_attn, name).weight
            trained = getattr(layers[i].self_attn, name)
            if name != "o_proj":  # a LoRA target: its delta folded in
                want = want + trained.get_delta_weight("default")
            step = want.abs().amax(dim=1, keepdim=True) / 127  # measured within 0.6 step
            slack = step + want.abs() * 2**-8
            assert bool(((got - want).abs() <= slack).all()), (i, name)
            assert not torch.equal(got, want)  # dequantized: the int8 rounding is there


def test_a_merged_export_keeps_tied_embeddings_and_biases(tmp_path: Path) -> None:
    """A Qwen2-shaped base (biased q, k, v; one matrix for embeddings and head) stored in
    bf16: the export in bf16 ties its head to its embeddings again and computes the
    4-bit model's logits, the adapter on the biased layers included, to bf16's rounding."""
    tokenizer = tiny_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    base = save_folder(Qwen2ForCausalLM(config).to(torch.bfloat16), tokenizer, tmp_path, "base")
    q = Quantization(4, "nf4", torch.bfloat16, double=True)
    model = _lora_over(base, q, ["q_proj", "k_proj", "v_proj"])
    save_merged(model, base, tmp_path / "merged")
    assert _stored_dtypes(tmp_path / "merged") == {"BF16"}
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    assert merged.lm_head.weight is merged.model.embed_tokens.weight
    ids = batch()["input_ids"][:2, :16]
    with torch.no_grad():
        want = model(input_ids=ids).logits.float()
        got = merged(input_ids=ids).logits
    # measured 3e-3 (logits up to 1.1); merged into the unquantized weights instead, 0.1
    torch.testing.assert_close(got, want, rtol=0, atol=0.02)
