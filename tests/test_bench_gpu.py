"""bench/gpu.py, the one command that proves the CUDA path, kept from rotting on hosts
without a GPU: it imports and lists every check as skipped, and its CPU mode runs the checks a
CPU can on a tiny model through the trainer's own code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from oneseekd.trainer.tiny import tiny_model

ROOT = Path(__file__).resolve().parent.parent
CHECKS = [
    "bf16 lora",
    "fp16 scaler",
    "qlora 4-bit",
    "paged_adamw_8bit resume",
    "packing",
    "torch.compile",
    "chunked evaluation",
    "memory 16-bit",
    "memory 16-bit checkpointed",
    "memory 4-bit",
    "throughput",
]
CUDA_ONLY = {
    "fp16 scaler",
    "torch.compile",
    "memory 16-bit",
    "memory 16-bit checkpointed",
    "memory 4-bit",
    "throughput",
}


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU, whatever the host has
    return subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )


def test_without_cuda_every_check_is_listed_as_skipped() -> None:
    done = bench()
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"{name}: skipped: no CUDA" for name in CHECKS]


def test_cpu_mode_runs_what_a_cpu_can_through_the_trainer(tmp_path: Path) -> None:
    model = tiny_model(tmp_path, "Tiny-Llama", "llama")
    done = bench("--device", "cpu", "--model", str(model), "--batch", "2", "--seq", "32")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert [line.split(": ", 1)[0] for line in lines] == CHECKS
    for name, line in zip(CHECKS, lines, strict=True):
        want = "skipped: needs CUDA" if name in CUDA_ONLY else "ok: "
        assert line.startswith(f"{name}: {want}"), line
    assert "reloaded adapter's logits within 0" in lines[0]
    assert "isolation 0 units of rounding" in lines[4]
