"""The docs' table of 7-8B shapes (docs/performance.md, "Memory plan"), from spec/plan.py.

Each model's public config.json numbers are data in tests/bigmodels.py; each cell is what the
plan picks for one GPU of that memory at batch 8 (LoRA, chunked loss): gradient checkpointing
off, on, or no fit, with the predicted peak of the step picked (or of the evaluation, where
larger).
tests/test_bench_memplan.py holds docs/performance.md to this script's output.

Run: .venv/bin/python bench/memplan.py
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from bigmodels import MODELS

from oneseekd.spec.memory import FIT_SHARE
from oneseekd.spec.plan import Params, plan

HELD = {"bf16 LoRA": "16-bit", "QLoRA 4-bit": "quantized"}
SEQS = (512, 2048)
BATCH = 8
GIBS = (24, 40, 48, 80)


def cell(config: dict[str, Any], seq: int, held: Any, gib: int) -> str:
    p = plan(config, BATCH, seq, held, gib * 2**30)
    need = f"{p.need / 2**30:.1f}"
    if p.checkpointing is None:
        return f"no fit ({need} with ckpt)"
    return f"ckpt {'on' if p.checkpointing else 'off'} ({need})"


def table() -> str:
    head = "| model | weights | method | tokens | " + " | ".join(f"{g} GB" for g in GIBS) + " |"
    lines = [head, "|---|---:|---|---:|" + "---|" * len(GIBS)]
    for name, config in MODELS.items():
        params = Params.from_config(config)
        for method, held in HELD.items():
            weights = f"{params.weight_bytes(held) / 2**30:.1f} GiB"  # type: ignore[arg-type]
            for seq in SEQS:
                cells = " | ".join(cell(config, seq, held, g) for g in GIBS)
                lines.append(f"| {name} | {weights} | {method} | {BATCH} x {seq} | {cells} |")
    lines.append("")
    lines.append(
        f"Each cell: what the plan picks for one GPU of that memory (N GB read as N GiB, the "
        f"plan fitting within {FIT_SHARE:.0%} of it) and, in brackets, the predicted peak in "
        "GiB of the step it picks (or the evaluation's, where larger)."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
