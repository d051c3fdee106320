"""The issue-16 blocks together, as the recipe will wire them: a tiny Llama in 4-bit NF4,
adamw_8bit, a non-default schedule, accumulation over packed rows, the chunked loss and
auto-stop. A run stopped after an epoch and resumed from the saved state (read back with
weights_only, as checkpoints are) ends exactly where the uninterrupted run ends."""

from __future__ import annotations

import io
import math
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

from oneseekd.trainer import packing, quant
from oneseekd.trainer.autostop import AutoStop
from oneseekd.trainer.loss import ChunkedCausalLM
from oneseekd.trainer.optim import build_optimizer, build_scheduler, uses_8bit_state, warmup_steps
from oneseekd.trainer.tiny import tiny_model

# its numbers follow the CPU's bf16 answer: CI runs it with ONESEEK_CPU_BF16 forced both ways
pytestmark = pytest.mark.precision

EPOCHS, ACCUM, ROWS, MAX_LEN = 4, 2, 2, 48


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("models"))


def data() -> tuple[list[list[int]], list[list[int]]]:
    g = torch.Generator().manual_seed(5)
    ids, masks = [], []
    for _ in range(14):
        n = int(torch.randint(6, 24, (1,), generator=g))
        ids.append(torch.randint(3, 300, (n,), generator=g).tolist())
        masks.append([0] * (n // 3) + [1] * (n - n // 3))
    return ids, masks


class Run:
    def __init__(self, folder: Path) -> None:
        warnings.filterwarnings("ignore", message="MatMul8bitLt")
        torch.manual_seed(0)
        q = quant.Quantization(4, "nf4", torch.float32, double=True)
        base = quant.prepare(quant.load_quantized(folder, q, "cpu"), gradient_checkpointing=True)
        lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.1, target_modules=["q_proj", "v_proj"])
        self.model = get_peft_model(base, lora)
        self.net = ChunkedCausalLM(self.model, chunk_tokens=32)
        # small enough a threshold that the LoRA weights keep 8-bit state too
        self.optimizer = build_optimizer("adamw_8bit", self.model, 5e-3, 0.01, min_8bit_size=256)
        self.ids, self.masks = data()
        self.lengths = [len(x) for x in self.ids]
        rows = len(packing.pack(self.lengths, MAX_LEN, seed=1, epoch=0))
        steps = math.ceil(math.ceil(rows / ROWS) / ACCUM) * EPOCHS
        self.scheduler = build_scheduler(
            "cosine_with_restarts", self.optimizer, steps, warmup_steps(steps, None, 0.1)
        )
        self.stop = AutoStop(threshold=10.0, patience=2)  # no epoch improves by 10
        self.epoch = 0
        self.losses: list[float] = []

    def train_epoch(self) -> bool:
        """One epoch of packed, accumulated steps; True when auto-stop ends training."""
        rows = packing.pack(self.lengths, MAX_LEN, seed=1, epoch=self.epoch)
        batches = packing.batches(rows, ROWS)
        self.model.train()
        for start in range(0, len(batches), ACCUM):
            window = [
                packing.collate_packed(self.ids, self.masks, b, 0)
                for b in batches[start : start + ACCUM]
            ]
            labels = sum(int((w["labels"][:, 1:] != -100).sum()) for w in window)
            for batch in window:
                summed, _ = self.net(**batch)
                (summed / labels).backward()
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.epoch += 1
        self.model.eval()
        with torch.no_grad():
            every = packing.collate_packed(
                self.ids, self.masks, [[i] for i in range(len(self.ids))], 0
            )
            summed, count = self.net(**every)
        self.losses.append(float(summed / count))
        return self.stop.update(self.losses[-1])

    def state(self) -> dict[str, Any]:
        return {
            "adapter": get_peft_model_state_dict(self.model),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "auto_stop": self.stop.state_dict(),
            "epoch": self.epoch,
            "losses": self.losses,
            "rng": torch.get_rng_state(),
        }

    def load(self, state: dict[str, Any]) -> None:
        set_peft_model_state_dict(self.model, state["adapter"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.stop.load_state_dict(state["auto_stop"])
        self.epoch, self.losses = state["epoch"], list(state["losses"])
        torch.set_rng_state(state["rng"])


def run_to_the_end(run: Run) -> Run:
    while run.epoch < EPOCHS and not run.train_epoch():
        pass
    return run


@pytest.mark.slow
def test_resume_equals_uninterrupted(tiny: Path) -> None:
    whole = run_to_the_end(Run(tiny))
    assert uses_8bit_state(whole.optimizer)
    # the loss improves by far less than the threshold: stale after epochs 2 and 3, stopped
    assert whole.stop.stopped_at == 3 and whole.epoch == 3 < EPOCHS
    assert whole.losses[1] < whole.losses[0]

    first = Run(tiny)
    assert not first.train_epoch()
    buffer = io.BytesIO()
    torch.save(first.state(), buffer)
    buffer.seek(0)
    resumed = Run(tiny)
    resumed.load(torch.load(buffer, weights_only=True))
    run_to_the_end(resumed)

    assert resumed.losses == whole.losses
    assert resumed.stop.state_dict() == whole.stop.state_dict()
    assert resumed.scheduler.state_dict() == whole.scheduler.state_dict()
    for name, weight in get_peft_model_state_dict(whole.model).items():
        assert torch.equal(weight, get_peft_model_state_dict(resumed.model)[name]), name
