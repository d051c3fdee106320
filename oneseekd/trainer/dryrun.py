"""What `oneseekctl submit --dry-run` needs a tokenizer (and torch) for, in a child process so
the CLI never imports torch: each model's records encoded as training would encode them, and
the device the run would train on.

    python -m oneseekd.trainer.dryrun < task.json > counts.json

task.json: {"dataset": PATH, "cache": the home's cache/ folder or null, "models": [{"key",
"path", "max_seq_len", "train_on_prompt", "truncation_side", "use_fast_tokenizer"}]}. The
answer: {"device": {"type", "name", "memory", "bf16"}, "records", "duplicates", "models": {key:
{"records", "refused", "truncated", "tokens", "label_tokens", "problems"}}}. Only the tokenizer
is loaded, never a model's weights.

On a host without a GPU, torch is not imported once the home's cache remembers the CPU's bf16
answer and each folder's tokenizer class (trainer/hostprobe.py, trainer/tokenizer.py): the
dry run then answers in about a second instead of three.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from oneseekd.gpus import host_gpus
from oneseekd.trainer import hostprobe, tokenizer
from oneseekd.trainer.data import duplicates, load_records
from oneseekd.trainer.labels import Encoder, RecordProblem

SHOWN_PROBLEMS = 5  # the refused records named in the answer; the rest are counted


def counts(records: Any, model: dict[str, Any], cache: Path | None = None) -> dict[str, Any]:
    """The records of one model after its template: refused, truncated, tokens and labels."""
    memo = None if cache is None else cache / tokenizer.MEMO
    encoder = Encoder(
        tokenizer.load_tokenizer(
            Path(model["path"]), bool(model.get("use_fast_tokenizer", True)), memo
        ),
        int(model["max_seq_len"]),
        bool(model.get("train_on_prompt", False)),
        str(model.get("truncation_side", "right")),
    )
    out = {"records": 0, "refused": 0, "truncated": 0, "tokens": 0, "label_tokens": 0}
    problems: list[str] = []
    for record, where in zip(records.items, records.where, strict=True):
        try:
            encoding = encoder.encode(record)
        except RecordProblem as exc:
            out["refused"] += 1
            if len(problems) < SHOWN_PROBLEMS:
                problems.append(f"{where}: {exc}")
            continue
        out["records"] += 1
        out["truncated"] += encoding.truncated
        out["tokens"] += len(encoding.ids)
        out["label_tokens"] += sum(encoding.mask)
    return {**out, "problems": problems}


def device(cache: Path | None = None) -> dict[str, Any]:
    """The device a run would train on: the first GPU, its memory and whether it computes
    bf16 natively; or the CPU, the memory the machine has available and the same answer
    (from the home's memo when this host gave it since its last boot: no torch then)."""
    if host_gpus() > 0:
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            return {
                "type": "cuda",
                "name": props.name,
                "memory": int(props.total_memory),
                "bf16": (props.major, props.minor) >= (8, 0)
                and torch.cuda.is_bf16_supported(including_emulation=False),
            }
    pages = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    bf16 = (
        hostprobe.cpu_bf16()
        if cache is None
        else hostprobe.remembered_cpu_bf16(cache / hostprobe.MEMO)
    )
    return {"type": "cpu", "name": "cpu", "memory": int(pages), "bf16": bf16}


def main() -> int:
    task = json.loads(sys.stdin.read())
    cache = Path(task["cache"]) if task.get("cache") else None
    records = load_records(Path(task["dataset"]))
    answer = {
        "device": device(cache),
        "records": len(records.items),
        "duplicates": duplicates(records.items),
        "models": {m["key"]: counts(records, m, cache) for m in task["models"]},
    }
    sys.stdout.write(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
