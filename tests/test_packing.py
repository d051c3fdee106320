"""Packing keeps records apart: the packed loss and gradient equal the unpacked ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AttentionInterface, AutoModelForCausalLM, masking_utils
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.models.llama.modeling_llama import eager_attention_forward

from oneseekd.trainer.loss import IGNORE_INDEX, ChunkedCausalLM
from oneseekd.trainer.loss import loss_sum as logits_loss_sum
from oneseekd.trainer.packing import (
    batches,
    collate_packed,
    fill,
    isolation_error,
    pack,
)
from oneseekd.trainer.setup import PACKING_TOLERANCE
from oneseekd.trainer.tiny import tiny_model

# its numbers follow the CPU's bf16 answer: CI runs it with ONESEEK_CPU_BF16 forced both ways
pytestmark = pytest.mark.precision


def records(n: int, vocab: int, seed: int = 0) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids and label masks of n records of 3 to 40 tokens, prompts not labelled."""
    g = torch.Generator().manual_seed(seed)
    ids, masks = [], []
    for _ in range(n):
        length = int(torch.randint(3, 41, (1,), generator=g))
        ids.append(torch.randint(3, vocab, (length,), generator=g).tolist())
        prompt = int(torch.randint(0, length, (1,), generator=g))
        masks.append([0] * prompt + [1] * (length - prompt))
    return ids, masks


def padded(ids: list[list[int]], masks: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """The unpacked batch, padded on the right as the trainer's collate pads it."""
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id)
    attention = torch.zeros((len(ids), width), dtype=torch.long)
    labels = torch.full((len(ids), width), IGNORE_INDEX)
    for r, (row, mask) in enumerate(zip(ids, masks, strict=True)):
        input_ids[r, : len(row)] = torch.tensor(row)
        attention[r, : len(row)] = 1
        labels[r, : len(row)] = torch.tensor(row).masked_fill(torch.tensor(mask) == 0, -100)
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def loss_sum(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The trainer's summed loss of the batch, from the model's whole logits."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    return logits_loss_sum(model(**inputs, use_cache=False).logits, batch["labels"])


def test_pack_fills_rows_and_keeps_every_record_once() -> None:
    lengths = [int(x) for x in torch.randint(1, 120, (500,), generator=torch.Generator())]
    rows = pack(lengths, 128, seed=3, epoch=0)
    assert sorted(i for row in rows for i in row) == list(range(500))
    assert all(sum(lengths[i] for i in row) <= 128 for row in rows)
    assert fill(lengths, rows) > 0.9
    assert rows == pack(lengths, 128, seed=3, epoch=0)  # a resumed run packs the same rows
    assert rows != pack(lengths, 128, seed=3, epoch=1)
    assert [len(b) for b in batches(rows, 8)][:-1] == [8] * (len(rows) // 8 - (len(rows) % 8 == 0))


def test_collate_restarts_positions_and_drops_the_first_label() -> None:
    batch = collate_packed([[5, 6, 7], [8, 9]], [[0, 1, 1], [1, 1]], [[0, 1], [1]], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9], [8, 9, 0, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 0, 1, 2]]
    assert batch["labels"].tolist() == [[-100, 6, 7, -100, 9], [-100, 9, -100, -100, -100]]
    assert "attention_mask" not in batch


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.mark.parametrize(
    ("arch", "attention"),
    [("llama", "eager"), ("llama", "sdpa"), ("qwen2", "sdpa")],
)
def test_packed_loss_and_gradient_equal_unpacked(models: Path, arch: str, attention: str) -> None:
    folder = models / arch
    if not folder.exists():
        tiny_model(models, arch, arch)
    base = AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation=attention
    )
    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    model = get_peft_model(base, config)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.02)
    vocab = base.config.vocab_size
    ids, masks = records(12, vocab)
    trainable = [p for p in model.parameters() if p.requires_grad]

    unpacked = loss_sum(model, padded(ids, masks, pad_id=2))
    want = torch.autograd.grad(unpacked, trainable)
    rows = pack([len(x) for x in ids], 64, seed=0, epoch=0)
    assert len(rows) < len(ids)  # several records share rows
    packed = loss_sum(model, collate_packed(ids, masks, rows, pad_id=2))
    got = torch.autograd.grad(packed, trainable)

    torch.testing.assert_close(packed, unpacked, rtol=1e-5, atol=1e-4)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
    assert isolation_error(model, vocab) == 0.0  # the other record's keys: exact zeros
    # the chunked loss takes packed rows too (it passes use_cache=False itself)
    chunked, _ = ChunkedCausalLM(model, chunk_tokens=32)(**collate_packed(ids, masks, rows, 2))
    torch.testing.assert_close(chunked, unpacked, rtol=1e-5, atol=1e-4)

    # what the test guards against: positions running on across records leak between them
    naive = collate_packed(ids, masks, rows, pad_id=2)
    naive["position_ids"] = torch.arange(naive["input_ids"].shape[1]).expand_as(naive["input_ids"])
    assert abs(float(loss_sum(model, naive).detach()) - float(unpacked.detach())) > 1e-2
    # and so does a KV cache, which turns transformers' packed-sequence masks off
    batch = collate_packed(ids, masks, rows, pad_id=2)
    with torch.no_grad():
        cached = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
        fresh = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits
    assert float((cached - fresh).abs().max()) > 1e-2


def mixed_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention as a GPU runs it: without a mask (a record alone) one kernel (SDPA with
    is_causal, where CUDA takes flash or cuDNN), with the packed rows' block mask another
    (eager here, where CUDA takes memory-efficient or math). The same values, rounded apart."""
    if attention_mask is None:
        return sdpa_attention_forward(module, query, key, value, None, **kwargs)
    additive = torch.zeros(attention_mask.shape, dtype=query.dtype).masked_fill(
        ~attention_mask, torch.finfo(query.dtype).min
    )
    return eager_attention_forward(module, query, key, value, additive, **kwargs)


AttentionInterface.register("oneseekd_mixed", mixed_attention)
AttentionMaskInterface.register("oneseekd_mixed", sdpa_mask)


def bf16_model(models: Path, attention: str) -> torch.nn.Module:
    folder = models / "llama"
    if not folder.exists():
        tiny_model(models, "llama", "llama")
    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.bfloat16, attn_implementation=attention
    )
    with torch.no_grad():  # logits of a trained model's size (up to about 6), ulps of 1/32
        model.lm_head.weight.mul_(10)
    return model


@pytest.mark.parametrize("attention", ["eager", "sdpa", "oneseekd_mixed"])
def test_packing_isolation_holds_for_a_bf16_model_whatever_its_attention_kernels(
    models: Path, attention: str
) -> None:
    model = bf16_model(models, attention)
    assert isolation_error(model, model.config.vocab_size) <= PACKING_TOLERANCE


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packing_isolation_catches_a_model_without_the_block_mask(
    models: Path, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = bf16_model(models, "sdpa").to(dtype)
    vocab = model.config.vocab_size
    assert isolation_error(model, vocab) == 0.0
    # transformers no longer finds the packed records: one causal mask over the whole row
    monkeypatch.setattr(masking_utils, "find_packed_sequence_indices", lambda p: None)
    assert isolation_error(model, vocab) > 4 * PACKING_TOLERANCE
