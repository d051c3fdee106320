"""The gated MLP's activation memory: silu(gate) * up keeps two tensors for backward, not three.

Llama-shaped MLPs compute `down(silu(gate(x)) * up(x))`. Run by autograd op by op, the
backward pass keeps silu's input (gate), and the product keeps both its factors (silu(gate)
and up): three tensors of batch x seq x intermediate per layer, the largest activations a
decoder layer holds (at batch 8 x 512 on SmolLM2-135M, 25 MB each, 30 layers). `SiluMul`
keeps gate and up only and recomputes silu(gate) in backward (one sigmoid per element), as
fused SwiGLU kernels do: the forward values are the same operations, so the loss is
unchanged, and the gradients agree to float rounding.

`lean_mlps` switches it on for every MLP module whose forward is exactly that expression
(checked against its source, so a family that computes anything else is left as it is).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

# the statement a Llama-shaped MLP's forward computes (Llama, Mistral, Qwen2/3, OLMo 2, ...)
GATED = "down_proj = self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))"
_shapes: dict[type, bool] = {}


class SiluMul(torch.autograd.Function):
    """silu(gate) * up, saving gate and up only."""

    @staticmethod
    def forward(ctx: Any, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gate, up)
        return torch.nn.functional.silu(gate) * up

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gate, up = ctx.saved_tensors
        sig = torch.sigmoid(gate)
        # d silu(g) / dg = sigmoid(g) * (1 + g * (1 - sigmoid(g))), as torch's silu_backward
        d_gate = grad * up * (sig * (1 + gate * (1 - sig)))
        d_up = grad * (gate * sig)
        return d_gate, d_up


def _lean_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    gate, up = self.gate_proj(x), self.up_proj(x)
    out: torch.Tensor = self.down_proj(SiluMul.apply(gate, up))
    return out


def _gated(module: torch.nn.Module) -> bool:
    """Whether the module's class computes exactly GATED in its forward."""
    kind = type(module)
    if kind not in _shapes:
        try:
            source = inspect.getsource(kind.forward)
        except (OSError, TypeError):
            source = ""
        body = [line.strip() for line in source.splitlines()[1:] if line.strip()]
        _shapes[kind] = body == [GATED, "return down_proj"]
    return _shapes[kind]


def _silu(act: Any) -> bool:
    return isinstance(act, torch.nn.SiLU) or type(act).__name__ == "SiLUActivation"


def lean_mlps(model: torch.nn.Module) -> int:
    """Compute every Llama-shaped SiLU MLP of `model` through SiluMul; how many were."""
    count = 0
    for module in model.modules():
        if _gated(module) and _silu(getattr(module, "act_fn", None)):
            module.forward = _lean_forward.__get__(module)
            count += 1
    return count
