"""precision "bf16" computes in bf16: at least 99 % of a training step's matmul FLOPs (forward
and backward, the chunked head and the attention included) run in bf16, on any CPU (emulated
bf16 computes in the same dtype, only slower). fp32 runs none in bf16."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from flops import MatmulFlops
from gloo import recipe
from trainhomes import cached_tiny

pytestmark = pytest.mark.precision

LENGTHS = (3, 7, 5, 9, 2, 6, 4, 8)
RECORDS = [{"text": " ".join(["Riksdagen beslutar om lagar"] * n)} for n in LENGTHS]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cached_tiny(tmp_path_factory.mktemp("tiny"), "Tiny-Llama", "llama")


def _trained(model: Path, folder: Path, precision: str) -> MatmulFlops:
    r = recipe(model, RECORDS, folder, precision=precision, batch_size=4)
    r.setup()
    with MatmulFlops() as counted:
        r.train()
    return counted


def test_a_bf16_training_step_runs_its_matmuls_in_bf16(model: Path, tmp_path: Path) -> None:
    counted = _trained(model, tmp_path / "bf16", "bf16")
    print("bf16 training:", counted.report())
    assert counted.share(torch.bfloat16) >= 0.99, counted.report()
    fp32 = _trained(model, tmp_path / "fp32", "fp32")
    assert fp32.share(torch.float32) == 1.0, fp32.report()
