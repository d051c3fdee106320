"""Homes with tiny generated models for the trainer's tests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from oneseekd.trainer.tiny import tiny_model

_CACHE: dict[tuple[str, str], Path] = {}


def cached_tiny(cache_root: Path, name: str, arch: str) -> Path:
    """Build each tiny model once per session; tests get copies."""
    key = (name, arch)
    if key not in _CACHE:
        _CACHE[key] = tiny_model(cache_root / arch, name, arch)
    return _CACHE[key]


def civic_dataset(path: Path, n: int = 48) -> None:
    lines = []
    for i in range(n):
        if i % 3 == 0:
            rec: dict[str, object] = {"text": f"Riksdagen beslutar om lagar och budget {i % 7}."}
        elif i % 3 == 1:
            rec = {
                "instruction": "Sammanfatta",
                "input": f"Kommun {i % 5}",
                "output": "Kommunerna ansvarar för skolan.",
            }
        else:
            rec = {
                "messages": [
                    {"role": "user", "content": "Vem stiftar lagar?"},
                    {"role": "assistant", "content": "Riksdagen stiftar lagar."},
                ]
            }
        lines.append(json.dumps(rec, ensure_ascii=False))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def tiny_home(root: Path, cache_root: Path, models: dict[str, str]) -> Path:
    """A home whose base_models/ holds copies of tiny models {folder name: arch}."""
    base = root / "models" / "oneseek-7b-zero" / "base_models"
    base.mkdir(parents=True, exist_ok=True)
    for name, arch in models.items():
        shutil.copytree(cached_tiny(cache_root, name, arch), base / name)
    civic_dataset(root / "datasets" / "civic.jsonl")
    (root / "oneseekd.toml").write_text(
        "[catalog]\nsettle_seconds = 0\nrescan_interval_seconds = 3600\n"
        "[intake]\nsettle_seconds = 0\n[trainer]\nheartbeat_seconds = 0.2\n"
    )
    return root


FAST = {
    "epochs": 3,
    "batch_size": 4,
    "learning_rate": 5e-3,
    "max_seq_len": 64,
    "val_fraction": 0.25,
    "checkpoint_every": 2,
    "lora": {"r": 4, "alpha": 8, "dropout": 0.1},
}
