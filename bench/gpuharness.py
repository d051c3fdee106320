"""The harness of bench/gpu.py: the trainer's own recipe over records of exactly --seq tokens,
driven step by step. Kept apart so that each file stays readable in one sitting; gpu.py
imports it after bitsandbytes (before peft)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from oneseekd.trainer import embedded
from oneseekd.trainer.checkpoint import Checkpoints
from oneseekd.trainer.context import ModelSpec
from oneseekd.trainer.data import Records, load_records
from oneseekd.trainer.loading import Device
from oneseekd.trainer.recipe import LoraRecipe, Placement, Reporting, Task

ROOT = Path(__file__).resolve().parent.parent
HYPER: dict[str, Any] = {
    "epochs": 1,
    "learning_rate": 1e-3,
    "seed": 7,
    "gradient_accumulation_steps": 1,
    "warmup_ratio": 0.0,
    "checkpoint_every": 10**9,
    "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
    "precision": "bf16",
}


class Skip(Exception):
    """The check cannot run on this device."""


@dataclass
class Bench:
    model: Path
    device: str  # "cuda" or "cpu"
    batch: int
    seq: int
    steps: int
    peak_tflops: float | None
    work: Path
    texts: list[str] = field(default_factory=list)  # the demo's civic records as text

    def need_cuda(self) -> None:
        if self.device != "cuda":
            raise Skip("needs CUDA")

    def recipe(self, name: str, rows: int, should_stop: bool = False, **hyper: Any) -> LoraRecipe:
        """The trainer's recipe over `rows` training records and one batch of held-out
        records, every row --seq tokens (text cut to length: no padding)."""
        lora = {**HYPER["lora"], **hyper.pop("lora", {})}
        hp = {**HYPER, "batch_size": self.batch, "max_seq_len": self.seq, **hyper, "lora": lora}
        held = self.batch
        records = long_records(self.texts, self.seq, rows + held)
        where = [f"record {i + 1}" for i in range(len(records))]
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        return LoraRecipe(
            Task(
                ModelSpec("smollm2", embedded.MODEL_NAME, self.model, ""),
                hp,
                Records(records, where),
                (list(range(rows)), list(range(rows, rows + held))),
            ),
            Placement(Device(self.device, dtype, scaler=False), Checkpoints(self.work / name)),
            Reporting(
                SimpleNamespace(report=lambda *a, **k: None),  # type: ignore[arg-type]
                should_stop=lambda: should_stop,
            ),
        )


def civic_texts() -> list[str]:
    civic = load_records(ROOT / "demo/civic.jsonl").items
    return [" ".join(str(v) for v in r.values()) for r in civic]


def long_records(texts: list[str], tokens: int, count: int) -> list[dict[str, Any]]:
    """`count` distinct text records of the demo's civic texts, each with more words than
    `tokens` (every word is at least one token), so the trainer cuts every one to `tokens`."""
    out = []
    for i in range(count):
        words = f"{i}:".split()
        j = i
        while len(words) <= tokens:
            words += texts[j % len(texts)].split()
            j += 1
        out.append({"text": " ".join(words)})
    return out


def steps(r: LoraRecipe, count: int) -> list[float]:
    """`count` optimizer steps of the set-up recipe (its own micro-steps, over its first
    epoch's batches again and again: a loss that falls is learning them); their losses."""
    pad = int(r.tokenizer.pad_token_id)
    batches = r._batches(0)
    r.model.train()
    done = 0
    while done < count:
        if r.position.batch >= len(batches):
            r.position.batch = 0
        done += r._micro_step(batches, r.position, pad)
    if r.device.type == "cuda":
        torch.cuda.synchronize()
    return list(r.position.step_losses[-count:])


def falls(losses: list[float]) -> tuple[float, float]:
    third = max(1, len(losses) // 3)
    first, last = sum(losses[:third]) / third, sum(losses[-third:]) / third
    if not all(math.isfinite(x) for x in losses):
        raise AssertionError(f"a loss is not finite: {losses}")
    if not last < first:
        raise AssertionError(f"the loss did not fall: {first:.4f} -> {last:.4f}")
    return first, last
