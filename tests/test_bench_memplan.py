"""docs/performance.md's table of 7-8B shapes is bench/memplan.py's output: the docs say what
spec/plan.py decides today."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_docs_table_is_the_scripts_output() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "memplan.py")],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    table = done.stdout.strip()
    assert "| Llama-3.1-8B | 15.0 GiB | bf16 LoRA | 8 x 2048 | no fit (" in table
    assert table in (ROOT / "docs" / "performance.md").read_text(encoding="utf-8"), (
        "docs/performance.md's memory plan table is stale: paste bench/memplan.py's output"
    )
