"""The gated MLP through SiluMul: the same loss, the same gradients, one tensor less kept."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from loramodels import lora_model

from oneseekd.trainer.swiglu import SiluMul, lean_mlps
from oneseekd.trainer.tiny import tiny_model

# its numbers follow the CPU's bf16 answer: CI runs it with ONESEEK_CPU_BF16 forced both ways
pytestmark = pytest.mark.precision


def test_silu_mul_equals_autograd_value_and_gradient() -> None:
    g = torch.Generator().manual_seed(0)
    gate = (torch.randn(3, 7, 11, generator=g) * 4).requires_grad_()
    up = torch.randn(3, 7, 11, generator=g).requires_grad_()
    grad = torch.randn(3, 7, 11, generator=g)
    want = torch.nn.functional.silu(gate) * up
    want_grads = torch.autograd.grad(want, [gate, up], grad)
    got = SiluMul.apply(gate, up)
    got_grads = torch.autograd.grad(got, [gate, up], grad)
    assert torch.equal(got, want)
    for a, b in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_it_keeps_gate_and_up_only() -> None:
    gate = torch.randn(4, 8, requires_grad=True)
    up = torch.randn(4, 8, requires_grad=True)
    kept: dict[str, int] = {}

    def count(key: str, fn: object) -> None:
        seen: set[int] = set()

        def pack(t: torch.Tensor) -> torch.Tensor:
            seen.add(t.untyped_storage().data_ptr())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn()  # type: ignore[operator]
        kept[key] = len(seen)

    count("autograd", lambda: torch.nn.functional.silu(gate) * up)
    count("lean", lambda: SiluMul.apply(gate, up))
    assert kept == {"autograd": 3, "lean": 2}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("models"))


def test_a_lora_model_trains_on_the_same_loss_and_gradients(folder: Path) -> None:
    ids = torch.randint(3, 300, (2, 24), generator=torch.Generator().manual_seed(1))
    runs = {}
    for lean in (False, True):
        model = lora_model(folder, targets="all-linear", lean=lean)
        loss = model(input_ids=ids, labels=ids).loss
        grads = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])
        runs[lean] = (loss.detach(), grads)
    assert torch.equal(runs[True][0], runs[False][0])
    for a, b in zip(runs[True][1], runs[False][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_an_mlp_computing_something_else_is_left_alone() -> None:
    class Other(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gate_proj = self.up_proj = self.down_proj = torch.nn.Identity()
            self.act_fn = torch.nn.SiLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            down_proj = self.down_proj(self.act_fn(self.gate_proj(x)) + self.up_proj(x))
            return down_proj

    assert lean_mlps(Other()) == 0
