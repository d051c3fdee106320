"""The `precision` option decided for this device: what the weights load as, what autocast
computes in, and whether fp16's gradient scaler is needed.

`"auto"` (the default) autocasts to bf16 wherever the device computes it natively: a CUDA GPU
of compute capability 8 or more (Ampere on), or a CPU with AVX512-BF16 or AMX, which oneDNN
(mkldnn) reports. bf16 that is emulated is slower than fp32, not faster, so elsewhere a CPU
stays in fp32 and an older GPU (V100, T4) takes fp16 with a gradient scaler, which it does
compute natively (what the trainer chose on such GPUs before this option existed). LoRA
weights stay in fp32 under autocast (the recipe casts them), so only the frozen base's
matmuls run in the lower precision.

The probes are passed in (`Hardware`), so the decision is tested on any machine. The CPU's
answer can also be forced with ONESEEK_CPU_BF16=1 or 0 (`cpu_bf16`), so that a test suite (or an
operator comparing the two) runs either way on any CPU: emulated bf16 rounds as native bf16
does, only slower.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch

from oneseekd.spec.host import HostFacts

# the CPU probe lives without torch in hostprobe.py; its names are read from here too
from oneseekd.trainer.hostprobe import ENV_CPU_BF16 as ENV_CPU_BF16
from oneseekd.trainer.hostprobe import PrecisionRefused as PrecisionRefused
from oneseekd.trainer.hostprobe import cpu_bf16 as cpu_bf16

Asked = Literal["auto", "fp32", "bf16", "fp16"]


@dataclass(frozen=True)
class Hardware:
    """What the decision depends on: the device type and whether it computes bf16 natively."""

    device: str  # "cuda" or "cpu"
    capability: tuple[int, int] | None = None  # the CUDA device's, None on a CPU
    cuda_bf16: bool = False  # torch.cuda.is_bf16_supported(including_emulation=False)
    cpu_bf16: bool = False  # torch.ops.mkldnn._is_mkldnn_bf16_supported()

    @property
    def native_bf16(self) -> bool:
        if self.device == "cuda":
            return self.capability is not None and self.capability >= (8, 0) and self.cuda_bf16
        return self.cpu_bf16


def probe(device: str) -> Hardware:
    """This host's facts for `device`."""
    if device == "cuda":
        return Hardware(
            "cuda",
            torch.cuda.get_device_capability(),
            torch.cuda.is_bf16_supported(including_emulation=False),
        )
    return Hardware("cpu", cpu_bf16=cpu_bf16())


def host_facts() -> HostFacts:
    """What spec.host.check needs to know about this host, probed with torch (the trainer's
    second look, after intake's light one): the GPUs and the lowest compute capability."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    lowest = min(torch.cuda.get_device_capability(i) for i in range(gpus)) if gpus else None
    return replace(HostFacts.light(gpus), capability=lowest)


@dataclass(frozen=True)
class Precision:
    name: Literal["fp32", "bf16", "fp16"]
    weights: torch.dtype  # the frozen base model's dtype
    autocast: torch.dtype | None  # None: no autocast, everything in fp32
    scaler: bool  # fp16 needs a gradient scaler

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the matmuls compute in."""
        return self.autocast or torch.float32


def decide(asked: Asked, hw: Hardware) -> Precision:
    """The precision `asked` means on `hw`.

    The frozen base loads in the autocast dtype, on a GPU and on a CPU alike: half the
    memory, and no cast of every frozen matrix to bf16 each time autocast meets it (autocast
    keeps its casts of trainable weights only: the frozen head was cast anew several times
    each step by the chunked loss). The LoRA weights stay fp32 (the recipe casts them)."""
    name = asked
    if asked == "auto":
        name = "bf16" if hw.native_bf16 else "fp16" if hw.device == "cuda" else "fp32"
    if name == "fp32":
        return Precision("fp32", torch.float32, None, False)
    if name == "fp16":
        if hw.device != "cuda":
            raise PrecisionRefused(
                'precision "fp16" needs a CUDA GPU, and this host trains on its CPU; '
                'ask for "auto", "bf16" or "fp32"'
            )
        return Precision("fp16", torch.float16, torch.float16, True)
    if hw.device == "cuda" and not hw.native_bf16:
        raise PrecisionRefused(
            f'precision "bf16" needs a GPU of compute capability 8.0 or more; this one '
            f'is {_capability(hw)}: ask for "fp16", "fp32" or "auto"'
        )
    # a CPU without native bf16 still computes it (slowly, emulated): the operator asked
    return Precision("bf16", torch.bfloat16, torch.bfloat16, False)


def _capability(hw: Hardware) -> str:
    return "unknown" if hw.capability is None else f"{hw.capability[0]}.{hw.capability[1]}"
