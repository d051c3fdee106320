"""QLoRA and 8-bit optimizers through the trainer, on the CPU (bitsandbytes 0.50.2 runs NF4
and LLM.int8 there): a tiny Llama trains quantized with a falling loss, its adapter loads
with PEFT onto the full-precision base, and the certified files say how the base was held."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import bitsandbytes as bnb
import pytest
import torch
from gloo import recipe
from peft import PeftModel
from safetensors import safe_open
from trainhomes import TinyHome, cached_tiny, civic_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from oneseekd.trainer import quant
from oneseekd.trainer.data import load_records
from oneseekd.trainer.optim import uses_8bit_state
from oneseekd.trainer.recipe import Stopped

# its numbers follow the CPU's bf16 answer: CI runs it with ONESEEK_CPU_BF16 forced both ways
pytestmark = pytest.mark.precision

warnings.filterwarnings("ignore", message="MatMul8bitLt")  # bnb: fp32 inputs run as fp16


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cached_tiny(tmp_path_factory.mktemp("tiny"), "Tiny-Llama", "llama")


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    path = tmp_path_factory.mktemp("data") / "civic.jsonl"
    civic_dataset(path, n=24)
    return load_records(path).items


FAST = {"epochs": 3, "batch_size": 4, "learning_rate": 5e-3, "precision": "fp32"}


@pytest.mark.timeout(600)
def test_a_4bit_run_trains_certifies_its_quantization_and_leaves_an_adapter_peft_loads(
    one: TinyHome,
) -> None:
    one.train(
        ["tiny-llama"],
        loadIn4Bit=True,
        quantizationType="nf4",
        doubleQuantization=True,
        precision="fp32",
    )
    results = one.results()
    metrics = results["metrics"]["tiny-llama"]
    assert metrics["train_losses"][-1] < metrics["train_losses"][0]
    # what the quantization asked for describes (test_quant holds describe() to its literal)
    held = quant.Quantization(4, "nf4", torch.float32, double=True).describe()
    assert metrics["quantization"] == held
    assert one.certified_json("oneseek_dna.json")["inputs"]["quantization"] == {"tiny-llama": held}
    [event] = one.events("model_trained")
    assert event["quantization"] == held
    zero = one.root / "models" / "oneseek-7b-zero"
    adapter = zero / "lora_adapters" / "oneseek-7b-zero-v1.0-tiny-llama"
    base = AutoModelForCausalLM.from_pretrained(
        zero / "base_models" / "Tiny-Llama", dtype=torch.float32
    )
    loaded = PeftModel.from_pretrained(base, adapter)
    assert any("lora_A" in name for name, _ in loaded.named_parameters())


@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    ("stored", "tolerance"),
    # an fp32 base: the export is the evaluated model's weights exactly (measured 2e-7);
    # a bf16 base: they differ by bf16's rounding of the merged weights (measured 1.4e-3).
    # Merged into the original weights instead, the logits move by the NF4 rounding the
    # adapter was trained over (measured 0.06 either way)
    [(torch.float32, 1e-4), (torch.bfloat16, 0.01)],
    ids=["fp32-base", "bf16-base"],
)
def test_a_4bit_merged_export_is_the_evaluated_model_in_the_bases_own_dtype(
    one: TinyHome, stored: torch.dtype, tolerance: float
) -> None:
    zero = one.root / "models" / "oneseek-7b-zero"
    base = zero / "base_models" / "Tiny-Llama"
    if stored != torch.float32:  # the tiny model is written in fp32: store it as asked
        AutoModelForCausalLM.from_pretrained(base, dtype=stored).save_pretrained(base)
        one.scan()
    one.train(
        ["tiny-llama"],
        loadIn4Bit=True,
        export_merged=True,
        export_dequantized=True,
        precision="fp32",  # exact arithmetic: the quantized layers compute in fp32
    )
    name = "oneseek-7b-zero-v1.0-tiny-llama"
    merged = zero / "merged" / name
    config = json.loads((merged / "config.json").read_text())
    assert config["dtype"] == str(stored).removeprefix("torch.")
    assert "quantization_config" not in config
    with safe_open(merged / "model.safetensors", "pt") as fh:
        dtypes = {fh.get_slice(key).get_dtype() for key in fh.keys()}  # noqa: SIM118
    assert dtypes == {"F32" if stored == torch.float32 else "BF16"}
    # the model the run trained and evaluated: the base quantized as the run held it (NF4
    # rounds the same weights the same way), with the adapter
    held = quant.Quantization(4, "nf4", torch.float32, double=True)
    evaluated = PeftModel.from_pretrained(
        quant.prepare(quant.load_quantized(base, held, "cpu"), gradient_checkpointing=False),
        zero / "lora_adapters" / name,
    ).eval()
    exported = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(merged)
    ids = tokenizer("Vem ansvarar för kollektivtrafiken i regionerna?", return_tensors="pt")
    with torch.no_grad():
        want = evaluated(input_ids=ids.input_ids).logits
        got = exported(input_ids=ids.input_ids).logits
    print("largest logit difference, merged and evaluated:", float((got - want).abs().max()))
    torch.testing.assert_close(got, want, rtol=0, atol=tolerance)


def test_an_unquantized_run_records_no_quantization(one: TinyHome) -> None:
    one.train(["tiny-llama"], epochs=1)
    assert "quantization" not in one.results()["metrics"]["tiny-llama"]
    assert "quantization" not in one.certified_json("oneseek_dna.json")["inputs"]


@pytest.mark.parametrize("bits", [4, 8])
def test_the_recipe_trains_a_quantized_base_with_a_falling_loss(
    model: Path, records: list[dict[str, Any]], tmp_path: Path, bits: int
) -> None:
    r = recipe(model, records, tmp_path / "ck", **FAST, **{f"load_in_{bits}bit": True})
    r.setup()
    kind = bnb.nn.Linear4bit if bits == 4 else bnb.nn.Linear8bitLt
    q_proj = r.model.get_base_model().model.layers[0].self_attn.q_proj
    assert isinstance(q_proj.base_layer, kind)
    assert r.quantization is not None and r.quantization.bits == bits
    result = r.train()
    assert result.train_losses[-1] < result.train_losses[0]
    assert result.quantization is not None and result.quantization["bits"] == bits
    r.model.save_pretrained(tmp_path / "adapter")
    base = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    loaded = PeftModel.from_pretrained(base, tmp_path / "adapter")
    for name, param in loaded.named_parameters():
        if "lora_B" in name:
            assert float(param.abs().max()) > 0, name  # trained, not the zero init


def test_a_4bit_base_computing_in_bf16_holds_its_frozen_embeddings_and_head_in_bf16(
    model: Path, records: list[dict[str, Any]], tmp_path: Path
) -> None:
    r = recipe(model, records, tmp_path / "ck", **FAST, load_in_4bit=True, compute_dtype="bfloat16")
    r.setup()
    base = r.model.get_base_model()
    assert base.get_input_embeddings().weight.dtype == torch.bfloat16
    assert base.get_output_embeddings().weight.dtype == torch.bfloat16
    assert base.model.norm.weight.dtype == torch.float32  # norms stay fp32 (prepare's cast)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        # the residual stream and the logits stay fp32
        assert base.get_input_embeddings()(ids).dtype == torch.float32
        assert base(input_ids=ids).logits.dtype == torch.float32
    result = r.train()
    assert result.train_losses[-1] < result.train_losses[0]
    assert result.quantization is not None
    assert result.quantization["embeddings_dtype"] == "bfloat16"
    assert result.quantization["compute_dtype"] == "bfloat16"
    r.model.save_pretrained(tmp_path / "adapter")
    full = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    loaded = PeftModel.from_pretrained(full, tmp_path / "adapter")
    assert any("lora_A" in name for name, _ in loaded.named_parameters())


def test_holding_the_frozen_matrices_in_bf16_changes_the_logits_by_bf16_rounding_only(
    model: Path,
) -> None:
    ids = torch.randint(3, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    wide = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    held = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    quant.hold_frozen(held, torch.bfloat16)
    assert held.get_input_embeddings().weight.dtype == torch.float32  # trainable: left alone
    held.requires_grad_(False)  # frozen, as the base under LoRA is
    quant.hold_frozen(held, torch.bfloat16)
    with torch.no_grad():
        want, got = wide(input_ids=ids).logits, held(input_ids=ids).logits
    assert got.dtype == torch.float32
    assert not torch.equal(got, want)  # the hold did take effect
    torch.testing.assert_close(got, want, rtol=0.05, atol=0.05)
    bytes_of = sum(p.numel() * p.element_size() for p in held.parameters())
    matrices = 2 * held.get_input_embeddings().weight.numel()  # embeddings and head, untied
    assert sum(p.numel() * p.element_size() for p in wide.parameters()) - bytes_of == matrices * 2


def _weights(r: Any) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in r.model.named_parameters() if p.requires_grad}


def test_adamw_8bit_runs_with_8bit_state_and_resumes_exactly(
    model: Path, records: list[dict[str, Any]], tmp_path: Path
) -> None:
    """r 64: the LoRA matrices (64 x 64) are large enough for bitsandbytes to keep their
    state in 8 bits; a run stopped after two steps and resumed ends where one that never
    stopped ends."""
    options: dict[str, Any] = {
        **FAST,
        "epochs": 2,
        "optimizer": "adamw_8bit",
        "lora": {"r": 64, "alpha": 64},
    }
    whole = recipe(model, records, tmp_path / "whole", **options)
    whole.setup()
    assert type(whole.optimizer).__name__ == "AdamW8bit"
    result = whole.train()
    assert uses_8bit_state(whole.optimizer)
    assert result.train_losses[-1] < result.train_losses[0]
    stopped = recipe(model, records, tmp_path / "resumed", **options)
    stopped.setup()
    stops = iter([False, True])
    stopped.should_stop = lambda: next(stops, True)
    with pytest.raises(Stopped):
        stopped.train()
    resumed = recipe(model, records, tmp_path / "resumed", **options)
    resumed.setup()
    assert resumed.position.step == 2 and uses_8bit_state(resumed.optimizer)
    again = resumed.train()
    assert again.train_losses == pytest.approx(result.train_losses, rel=1e-6)
    a, b = _weights(whole), _weights(resumed)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)
