"""Matmul FLOPs by the dtype they ran in: `with MatmulFlops() as f: ...; f.share(torch.bfloat16)`.

Every matrix product torch dispatches is counted (mm, addmm, bmm, baddbmm, which `linear`
and `matmul` become, and the fused CPU attention kernel), forward and backward, under the
dtype of its result: what autocast computed it in. torch's own flop_counter gives the FLOPs
of each op from its shapes; the fused CPU attention, which it does not know, counts as two
batched matmuls (scores and the weighted sum), 4·b·h·q·k·d, and twice that backward."""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

aten = torch.ops.aten
MATMULS = {aten.mm, aten.addmm, aten.bmm, aten.baddbmm}
CPU_ATTENTION = {
    aten._scaled_dot_product_flash_attention_for_cpu: 1,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: 2,
}


def _first_tensor(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    return next(v for v in value if isinstance(v, torch.Tensor))


class MatmulFlops(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.flops: Counter[torch.dtype] = Counter()
        self.by_op: Counter[str] = Counter()  # FLOPs by op and dtype

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        if packet in MATMULS:
            count = int(flop_registry[packet](*args, **kwargs, out_val=out))
        elif packet in CPU_ATTENTION:
            q, k = args[0], args[1]  # (b, h, q, d) and (b, h, k, d); backward: grad_out first
            if CPU_ATTENTION[packet] == 2:
                q, k = args[1], args[2]
            b, h, lq, d = q.shape
            count = 4 * b * h * lq * k.shape[2] * d * CPU_ATTENTION[packet]
        else:
            return out
        dtype = _first_tensor(out).dtype
        self.flops[dtype] += count
        self.by_op[f"{packet}:{dtype}"] += count
        return out

    def share(self, dtype: torch.dtype) -> float:
        """The share of all matmul FLOPs that ran in `dtype`."""
        total = sum(self.flops.values())
        assert total > 0, "no matmul ran"
        return self.flops[dtype] / total

    def report(self) -> str:
        total = sum(self.flops.values()) or 1
        return ", ".join(f"{k} {v / total:.4f}" for k, v in self.by_op.most_common(8))
