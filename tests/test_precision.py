"""The `precision` decision on faked hardware: bf16 only where it is native, fp16 on older GPUs."""

from __future__ import annotations

import pytest
import torch

from oneseekd.spec.host import HostFacts
from oneseekd.trainer.precision import (
    ENV_CPU_BF16,
    Hardware,
    PrecisionRefused,
    cpu_bf16,
    decide,
    host_facts,
    probe,
)

# its numbers follow the CPU's bf16 answer: CI runs it with ONESEEK_CPU_BF16 forced both ways
pytestmark = pytest.mark.precision

AMPERE = Hardware("cuda", (8, 0), cuda_bf16=True)
TURING = Hardware("cuda", (7, 5), cuda_bf16=False)
# a driver that reports bf16 on an old card only through emulation
VOLTA_EMULATED = Hardware("cuda", (7, 0), cuda_bf16=True)
AMX_CPU = Hardware("cpu", cpu_bf16=True)
AVX2_CPU = Hardware("cpu", cpu_bf16=False)


@pytest.mark.parametrize(
    ("hw", "name", "weights", "autocast"),
    [
        (AMPERE, "bf16", torch.bfloat16, torch.bfloat16),
        (Hardware("cuda", (9, 0), cuda_bf16=True), "bf16", torch.bfloat16, torch.bfloat16),
        (TURING, "fp16", torch.float16, torch.float16),
        (VOLTA_EMULATED, "fp16", torch.float16, torch.float16),
        (Hardware("cuda", (8, 6), cuda_bf16=False), "fp16", torch.float16, torch.float16),
        (AMX_CPU, "bf16", torch.bfloat16, torch.bfloat16),
        (AVX2_CPU, "fp32", torch.float32, None),
    ],
)
def test_auto_is_bf16_only_where_native(
    hw: Hardware, name: str, weights: torch.dtype, autocast: torch.dtype | None
) -> None:
    chosen = decide("auto", hw)
    assert (chosen.name, chosen.weights, chosen.autocast, chosen.scaler) == (
        name,
        weights,
        autocast,
        name == "fp16",  # only fp16 needs the gradient scaler
    )


def test_explicit_choices() -> None:
    assert decide("fp32", AMPERE).autocast is None
    fp16 = decide("fp16", TURING)
    assert (fp16.weights, fp16.autocast, fp16.scaler) == (torch.float16, torch.float16, True)
    # asked for on a CPU without native bf16: honoured (emulated), the base held in bf16
    slow = decide("bf16", AVX2_CPU)
    assert (slow.weights, slow.autocast) == (torch.bfloat16, torch.bfloat16)
    assert decide("bf16", AMX_CPU).dtype == torch.bfloat16


@pytest.mark.parametrize(
    ("choice", "hw", "message"),
    [
        (
            "fp16",
            AMX_CPU,
            'precision "fp16" needs a CUDA GPU, and this host trains on its CPU; '
            'ask for "auto", "bf16" or "fp32"',
        ),
        (
            "bf16",
            TURING,
            'precision "bf16" needs a GPU of compute capability 8.0 or more; this one is 7.5: '
            'ask for "fp16", "fp32" or "auto"',
        ),
    ],
    ids=["fp16-on-a-cpu", "bf16-on-turing"],
)
def test_refusals_name_the_fix(choice: str, hw: Hardware, message: str) -> None:
    with pytest.raises(PrecisionRefused) as refused:
        decide(choice, hw)
    assert str(refused.value) == message


def test_probe_reads_this_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_CPU_BF16, raising=False)  # the suite may run with it forced
    here = probe("cpu")
    assert here.device == "cpu"
    assert here.cpu_bf16 == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert decide("auto", here).name == ("bf16" if here.cpu_bf16 else "fp32")


@pytest.mark.parametrize(("forced", "native", "auto"), [("1", True, "bf16"), ("0", False, "fp32")])
def test_the_cpu_answer_is_forced_either_way_by_one_variable(
    monkeypatch: pytest.MonkeyPatch, forced: str, native: bool, auto: str
) -> None:
    monkeypatch.setenv(ENV_CPU_BF16, forced)
    here = probe("cpu")
    assert (here.cpu_bf16, decide("auto", here).name) == (native, auto)
    # blank is unset: the CPU is asked
    asked = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert cpu_bf16({ENV_CPU_BF16: " "}) == cpu_bf16({}) == asked


def test_a_forced_answer_that_is_neither_1_nor_0_is_refused_with_the_fix() -> None:
    with pytest.raises(PrecisionRefused) as refused:
        cpu_bf16({ENV_CPU_BF16: "yes"})
    assert str(refused.value) == (
        "ONESEEK_CPU_BF16='yes' is neither 1 nor 0: set ONESEEK_CPU_BF16=1 to treat this CPU as "
        "computing bf16 natively, ONESEEK_CPU_BF16=0 as not, or unset it to ask the CPU"
    )


def test_host_facts_of_this_cpu_host() -> None:
    # this machine: no GPU, bitsandbytes installed (pinned), so nothing to refuse for it
    facts = host_facts()
    assert (facts.gpus, facts.capability, facts.bitsandbytes) == (0, None, True)
    assert facts == HostFacts.light(0)
