"""The docs' table of 7-8B shapes (docs/performance.md, "Memory plan"), from spec/plan.py.

Each model's public config.json numbers are written here as data; each cell is what the plan
picks for one GPU of that memory at batch 8 (LoRA, chunked loss): gradient checkpointing off,
on, or no fit, with the predicted peak of the step picked (or of the evaluation, where larger).
tests/test_bench_memplan.py holds docs/performance.md to this script's output.

Run: .venv/bin/python bench/memplan.py
"""

from __future__ import annotations

from typing import Any

from oneseekd.spec.memory import FIT_SHARE
from oneseekd.spec.plan import Params, plan

# config.json of each model on the Hugging Face Hub (meta-llama/Llama-3.1-8B,
# Qwen/Qwen2.5-7B, mistralai/Mistral-7B-v0.3)
MODELS: dict[str, dict[str, Any]] = {
    "Llama-3.1-8B": {
        "model_type": "llama",
        "num_hidden_layers": 32,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "tie_word_embeddings": False,
    },
    "Qwen2.5-7B": {
        "model_type": "qwen2",
        "num_hidden_layers": 28,
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "vocab_size": 152064,
        "tie_word_embeddings": False,
    },
    "Mistral-7B-v0.3": {
        "model_type": "mistral",
        "num_hidden_layers": 32,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 32768,
        "tie_word_embeddings": False,
    },
}
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
