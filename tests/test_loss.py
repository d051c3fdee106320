"""The chunked loss equals the full-logits loss and gradient, and never keeps the logits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from loramodels import lora_model

from oneseekd.trainer.loss import (
    IGNORE_INDEX,
    ChunkedCausalLM,
    chunked_loss_sum,
    chunked_scores,
)
from oneseekd.trainer.loss import loss_sum as full_loss_sum  # from the whole logits tensor
from oneseekd.trainer.tiny import tiny_model

# its numbers follow the CPU's bf16 answer: CI runs it with ONESEEK_CPU_BF16 forced both ways
pytestmark = pytest.mark.precision


def labels_for(rows: int, length: int, vocab: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, vocab, (rows, length), generator=g)
    labels[0, :5] = IGNORE_INDEX  # a prompt
    labels[1, 9:] = IGNORE_INDEX  # padding
    labels[:, 12:15] = IGNORE_INDEX  # a stretch no row is trained on: its chunk is skipped
    return labels


@pytest.mark.parametrize("chunk_tokens", [1, 3, 8, 20, 10_000])
def test_equals_full_logits_loss_and_gradient(chunk_tokens: int) -> None:
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50)
    hidden = torch.randn(3, 20, 16, requires_grad=True)
    labels = labels_for(3, 20, 50)

    full = full_loss_sum(head(hidden), labels)
    full_grads = torch.autograd.grad(full, [hidden, head.weight, head.bias])
    summed, count = chunked_loss_sum(hidden, head, labels, chunk_tokens)
    grads = torch.autograd.grad(summed, [hidden, head.weight, head.bias])

    assert int(count) == int((labels[:, 1:] != IGNORE_INDEX).sum())
    torch.testing.assert_close(summed, full, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, full_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_the_head_computes_on_contiguous_chunks_in_training_and_evaluation() -> None:
    """A chunk sliced from every row is strided; a CPU linear layer on a strided input takes
    a slow path (68x in bf16 at SmolLM2's head), so the head must be given a copy."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(16, 50)
    seen: list[bool] = []

    def head(hidden: torch.Tensor) -> torch.Tensor:
        seen.append(hidden.is_contiguous())
        return linear(hidden)

    hidden = torch.randn(3, 20, 16, requires_grad=True)
    labels = labels_for(3, 20, 50)
    summed, _ = chunked_loss_sum(hidden, head, labels, 6)  # chunks of 2 positions x 3 rows
    summed.backward()  # the checkpointed chunks run the head again
    chunked_scores(hidden.detach(), head, labels, 6)
    assert len(seen) > 6 and all(seen)


def test_nothing_labelled_is_zero_with_zero_gradient() -> None:
    head = torch.nn.Linear(4, 7)
    hidden = torch.randn(2, 5, 4, requires_grad=True)
    summed, count = chunked_loss_sum(hidden, head, torch.full((2, 5), IGNORE_INDEX), 2)
    summed.backward()
    assert (float(summed.detach()), int(count)) == (0.0, 0)
    assert hidden.grad is not None and not hidden.grad.any()


def largest_saved(fn: object) -> int:
    """The largest tensor autograd keeps for the backward pass while `fn` runs (elements)."""
    sizes: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()  # type: ignore[operator]
    return max(sizes)


def test_the_logits_are_never_kept_for_backward() -> None:
    head = torch.nn.Linear(16, 500, bias=False)
    hidden = torch.randn(4, 64, 16, requires_grad=True)
    labels = torch.randint(0, 500, (4, 64))
    logits_size = 4 * 64 * 500
    assert largest_saved(lambda: full_loss_sum(head(hidden), labels)) >= logits_size
    kept = largest_saved(lambda: chunked_loss_sum(hidden, head, labels, 32))
    # a chunk's hidden states and the like: no logits, not even one chunk's
    assert kept <= hidden.numel() < logits_size / 4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("models"))


@pytest.mark.parametrize("checkpointing", [False, True])
def test_a_lora_model_trains_on_the_same_loss(tiny: Path, checkpointing: bool) -> None:
    model = lora_model(tiny, checkpointing)
    ids = torch.randint(3, 300, (3, 24), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[2, 18:] = 0
    labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
    labels[0, :6] = IGNORE_INDEX
    trainable = [p for p in model.parameters() if p.requires_grad]

    full = full_loss_sum(model(input_ids=ids, attention_mask=mask).logits, labels)
    want = torch.autograd.grad(full, trainable)
    wrapped = ChunkedCausalLM(model, chunk_tokens=16)
    summed, count = wrapped(input_ids=ids, labels=labels, attention_mask=mask)
    got = torch.autograd.grad(summed, trainable)

    assert int(count) == int((labels[:, 1:] != IGNORE_INDEX).sum())
    torch.testing.assert_close(summed, full, rtol=1e-5, atol=1e-5)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    # the wrapper adds no parameters, and none twice
    assert [n for n, _ in wrapped.named_parameters()] == [
        f"model.{n}" for n, _ in model.named_parameters()
    ]


class Syncs(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the reads of a tensor's value by the host (`bool()`, `.item()`, `int()`): on a
    GPU each one waits for everything queued before it."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


def test_the_chunks_to_skip_are_decided_without_reading_the_device() -> None:
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50)
    hidden = torch.randn(3, 40, 16, requires_grad=True)
    labels = labels_for(3, 40, 50)
    labels[:, 30:] = IGNORE_INDEX  # whole chunks without a label, to skip
    full = full_loss_sum(head(hidden), labels)
    with Syncs() as syncs:
        summed, count = chunked_loss_sum(hidden, head, labels, 6)
        summed.backward()
    # 20 chunks of 2 positions: not one read of a value, neither forward nor backward
    assert syncs.count == 0
    assert int(count) == int((labels[:, 1:] != IGNORE_INDEX).sum())
    torch.testing.assert_close(summed, full, rtol=1e-5, atol=1e-5)
