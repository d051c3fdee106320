"""Builds model folders on disk the way a real copy leaves them: config.json, safetensors files
with real headers (zero-filled data), shard indexes, tokenizer files. No torch needed."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

# A tiny Llama-shaped set of tensors: 2 layers, hidden 64.
TINY_TENSORS: dict[str, list[int]] = {
    "model.embed_tokens.weight": [256, 64],
    "model.layers.0.self_attn.q_proj.weight": [64, 64],
    "model.layers.0.self_attn.v_proj.weight": [64, 64],
    "model.layers.1.self_attn.q_proj.weight": [64, 64],
    "model.layers.1.self_attn.v_proj.weight": [64, 64],
    "model.norm.weight": [64],
    "lm_head.weight": [256, 64],
}


def tensor_count(tensors: dict[str, list[int]]) -> int:
    return sum(math.prod(s) for s in tensors.values())


def safetensors_bytes(tensors: dict[str, list[int]], dtype: str = "F32") -> bytes:
    width = {"F32": 4, "F16": 2, "BF16": 2}[dtype]
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in tensors.items():
        size = math.prod(shape) * width
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + b"\0" * offset


def write_config(folder: Path, **extra: Any) -> None:
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 64,
        **extra,
    }
    (folder / "config.json").write_text(json.dumps(config))


def make_model(
    parent: Path,
    name: str,
    *,
    tensors: dict[str, list[int]] | None = None,
    shards: int = 1,
    tokenizer: bool = True,
    **config: Any,
) -> Path:
    """A complete model folder parent/name; returns its path."""
    tensors = tensors or TINY_TENSORS
    folder = parent / name
    folder.mkdir(parents=True, exist_ok=True)
    write_config(folder, **config)
    if shards == 1:
        (folder / "model.safetensors").write_bytes(safetensors_bytes(tensors))
    else:
        names = list(tensors)
        weight_map: dict[str, str] = {}
        for i in range(shards):
            part = {n: tensors[n] for n in names[i::shards]}
            shard = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            (folder / shard).write_bytes(safetensors_bytes(part))
            weight_map.update(dict.fromkeys(part, shard))
        (folder / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {}, "weight_map": weight_map})
        )
    if tokenizer:
        (folder / "tokenizer.json").write_text('{"version": "1.0"}')
    return folder
