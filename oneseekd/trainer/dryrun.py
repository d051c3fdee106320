"""What `oneseekctl submit --dry-run` needs a tokenizer (and torch) for, in a child process so
the CLI never imports torch: each model's records encoded as training would encode them, and
the device the run would train on.

    python -m oneseekd.trainer.dryrun < task.json > counts.json

task.json: {"dataset": PATH, "models": [{"key", "path", "max_seq_len", "train_on_prompt",
"truncation_side", "use_fast_tokenizer"}]}. The answer: {"device": {"type", "memory"},
"records", "duplicates", "models": {key: {"records", "refused", "truncated", "tokens",
"label_tokens", "problems"}}}. Only the tokenizer is loaded, never a model's weights.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from oneseekd.trainer.data import duplicates, load_records
from oneseekd.trainer.labels import Encoder, RecordProblem
from oneseekd.trainer.loading import load_tokenizer

SHOWN_PROBLEMS = 5  # the refused records named in the answer; the rest are counted


def counts(records: Any, model: dict[str, Any]) -> dict[str, Any]:
    """The records of one model after its template: refused, truncated, tokens and labels."""
    tokenizer = load_tokenizer(Path(model["path"]), bool(model.get("use_fast_tokenizer", True)))
    encoder = Encoder(
        tokenizer,
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


def device() -> dict[str, Any]:
    """The device a run would train on: the first GPU and its memory, or the CPU and the
    memory the machine has available."""
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return {"type": "cuda", "name": props.name, "memory": int(props.total_memory)}
    pages = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return {"type": "cpu", "name": "cpu", "memory": int(pages)}


def main() -> int:
    task = json.loads(sys.stdin.read())
    records = load_records(Path(task["dataset"]))
    answer = {
        "device": device(),
        "records": len(records.items),
        "duplicates": duplicates(records.items),
        "models": {m["key"]: counts(records, m) for m in task["models"]},
    }
    sys.stdout.write(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
