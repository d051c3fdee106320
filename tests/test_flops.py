"""precision "bf16" computes in bf16: at least 99 % of the matmul FLOPs of a training step
(forward and backward, the chunked head and the attention included), of the held-out
evaluation and of the greedy samples run in bf16, on any CPU (emulated bf16 computes in the
same dtype, only slower). fp32 runs none in bf16."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from flops import MatmulFlops
from gloo import recipe
from trainhomes import cached_tiny

from oneseekd.trainer.evaluate import samples
from oneseekd.trainer.recipe import LoraRecipe

pytestmark = pytest.mark.precision

LENGTHS = (3, 7, 5, 9, 2, 6, 4, 8)
RECORDS = [
    {"instruction": "Vem stiftar lagar?", "output": " ".join(["Riksdagen beslutar"] * n)}
    for n in LENGTHS
]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cached_tiny(tmp_path_factory.mktemp("tiny"), "Tiny-Llama", "llama")


def _recipe(model: Path, folder: Path, precision: str) -> LoraRecipe:
    r = recipe(model, RECORDS, folder, precision=precision, batch_size=4)
    r.setup()
    return r


def _counted(r: LoraRecipe, part: str) -> MatmulFlops:
    pad = int(r.tokenizer.pad_token_id)
    with MatmulFlops() as counted:
        if part == "training":
            r.train()
        elif part == "evaluation":
            r.evaluate(pad)
            r.evaluate_base(pad)
        else:
            encoded = [(0, r.train_data.ids[0], r.train_data.mask(0))]
            made = samples(r.model, r.tokenizer, encoded, r.records, 4, r.device)
            assert len(made) == 1  # one prompt, answered by the base and the trained model
    return counted


@pytest.mark.parametrize("part", ["training", "evaluation", "sampling"])
def test_bf16_runs_its_matmuls_in_bf16(model: Path, tmp_path: Path, part: str) -> None:
    counted = _counted(_recipe(model, tmp_path / "bf16", "bf16"), part)
    print(f"bf16 {part}:", counted.report())
    assert counted.share(torch.bfloat16) >= 0.99, counted.report()
    fp32 = _counted(_recipe(model, tmp_path / "fp32", "fp32"), part)
    assert fp32.share(torch.float32) == 1.0, fp32.report()
