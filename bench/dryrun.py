"""`oneseekctl submit --dry-run` on the demo home, cold and warm, against the child alone.

Cold: the home's cache/ is empty, so the child asks AutoTokenizer (which imports torch) and
probes the CPU's bf16 with torch. Warm: both answers are remembered (trainer/tokenizer.py,
trainer/hostprobe.py) and the child imports no torch. The baseline, run in the same session,
is a bare `python -c pass` start and the warm child alone: the ratio whole/child says how much
of the CLI's own work the early start of the child (cli/encoder.py) hides.

Run: .venv/bin/python bench/dryrun.py [HOME]   (HOME: a home with SmolLM2, e.g. demo-home
after `make demo`; without one, a home with the embedded model is built under /tmp)
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TRIES = 5


def timed(argv: list[str], stdin: str | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(argv, input=stdin, capture_output=True, text=True, check=True)
    return time.perf_counter() - start


def demo_home(root: Path) -> Path:
    base = root / "models" / "oneseek-7b-zero" / "base_models"
    base.mkdir(parents=True)
    (root / "datasets").mkdir()
    shutil.copy(REPO / "demo" / "civic.jsonl", root / "datasets" / "civic.jsonl")
    subprocess.run(
        [sys.executable, "-m", "oneseekd.trainer.embedded", str(base)],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [str(BIN / "oneseekctl"), "--home", str(root), "db", "upgrade"],
        check=True,
        capture_output=True,
    )
    return root


def main() -> int:
    home = Path(sys.argv[1]) if len(sys.argv) > 1 else demo_home(Path(tempfile.mkdtemp()) / "h")
    dry = [
        str(BIN / "oneseekctl"),
        "--home",
        str(home),
        "submit",
        str(REPO / "demo" / "request.json"),
        "--dry-run",
        "--json",
    ]
    shutil.rmtree(home / "cache", ignore_errors=True)
    subprocess.run(dry, capture_output=True, check=True)  # the catalog settles; cache filled
    cold, warm, child, bare = [], [], [], []
    report = json.loads(subprocess.run(dry, capture_output=True, check=True).stdout)
    model = report["models"][0]
    task = json.dumps(
        {
            "dataset": str(home / "datasets" / "civic.jsonl"),
            "cache": str(home / "cache"),
            "models": [
                {
                    **model,
                    "key": model["model"],
                    "path": str(
                        next((home / "models" / "oneseek-7b-zero" / "base_models").iterdir())
                    ),
                }
            ],
        }
    )
    for _ in range(TRIES):
        shutil.rmtree(home / "cache", ignore_errors=True)
        cold.append(timed(dry))
        warm.append(timed(dry))
        child.append(timed([sys.executable, "-m", "oneseekd.trainer.dryrun"], task))
        bare.append(timed([sys.executable, "-c", "pass"]))
    med = {
        k: statistics.median(v)
        for k, v in {"cold": cold, "warm": warm, "child": child, "bare": bare}.items()
    }
    print(f"dry run, cold cache:  {med['cold']:.2f} s (median of {TRIES})")
    print(f"dry run, warm cache:  {med['warm']:.2f} s")
    print(f"the warm child alone: {med['child']:.2f} s; python start: {med['bare']:.2f} s")
    print(
        f"warm / cold: {med['warm'] / med['cold']:.2f}; warm / child alone: "
        f"{med['warm'] / med['child']:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
