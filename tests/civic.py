"""CivicAI's lookup rules, written from what its programs read (docs/training.md, "What
CivicAI reads"): the inference service's choice of the current model, its base model and
adapters, and the admin panel's certified and legacy listings. Test code only: these are the
rules the certified layout must satisfy, kept apart from the code that writes it."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

PREFIX = "OneSeek-7B-Zero.v"
CURRENT = "OneSeek-7B-Zero-CURRENT"
SKIPPED_ROOTS = {"oneseek-7b-zero", "oneseek-certified", "backups"}
# the admin panel's stdout parsers
EPOCH = re.compile(r"Epoch (\d+)\/(\d+)")
LOSS = re.compile(r"loss[=:]\s*([0-9.]+)", re.IGNORECASE)
DNA = re.compile(r"DNA:\s*(OneSeek-7B-Zero\.v[\w.]+)")


def active_model_path(models: Path) -> Path | None:
    """The service's get_active_model_path: the first of these that exists wins."""
    certified = models / "oneseek-certified"
    link = certified / CURRENT
    if link.is_symlink() and link.exists():
        return link.resolve()
    txt = certified / f"{CURRENT}.txt"
    if txt.is_file():
        target = Path(txt.read_text().strip())
        if target.exists():
            return target
    if certified.is_dir():
        found = [
            d
            for d in certified.iterdir()
            if d.is_dir() and d.name.startswith(PREFIX) and (d / "metadata.json").is_file()
        ]
        if found:
            return max(found, key=lambda d: d.stat().st_mtime)
    legacy = models / "oneseek-7b-zero" / CURRENT
    return legacy.resolve() if legacy.exists() else None


def normalize(name: str) -> str:
    """The service's normalization of a base model name: lowercase, `.` and `_` become `-`."""
    return name.lower().replace(".", "-").replace("_", "-")


def base_model_name(metadata: dict[str, Any]) -> str:
    bases = metadata.get("baseModels") or (metadata.get("dna") or {}).get("baseModels") or []
    return str(bases[0])


def find_base_model(models: Path, certified: Path, name: str) -> Path | None:
    """<certified>/base_models/<d>, then models/<d> (oneseekd's own folders skipped), the
    first whose normalized name equals or contains (either way) the wanted one, with
    config.json."""
    wanted = normalize(name)
    for root, skip in ((certified / "base_models", set()), (models, SKIPPED_ROOTS)):
        if not root.is_dir():
            continue
        for d in sorted(root.iterdir()):
            if d.name in skip or not d.is_dir():
                continue
            have = normalize(d.name)
            if (have == wanted or wanted in have or have in wanted) and (
                d / "config.json"
            ).is_file():
                return d
    return None


def adapter_folders(certified: Path, metadata: dict[str, Any]) -> list[Path]:
    """metadata.json's `adapters` (relative to the certified folder, each holding
    adapter_model.safetensors), else every subfolder with an adapter in it."""
    named = metadata.get("adapters")
    if named:
        return [
            certified / a for a in named if (certified / a / "adapter_model.safetensors").is_file()
        ]
    return [
        d
        for d in sorted(certified.iterdir())
        if (d / "adapter_model.safetensors").is_file() or (d / "adapter_config.json").is_file()
    ]


def certified_listing(models: Path) -> list[dict[str, Any]]:
    """The admin panel's certified list: real folders named OneSeek-7B-Zero.v*, not run-*
    nor the CURRENT link, each with metadata.json; isCurrent from the link's basename."""
    certified = models / "oneseek-certified"
    link = certified / CURRENT
    txt = certified / f"{CURRENT}.txt"
    if link.is_symlink():
        current = os.path.basename(os.readlink(link))
    elif txt.is_file():
        current = os.path.basename(txt.read_text().strip())
    else:
        current = None
    rows = []
    for d in sorted(certified.iterdir()):
        if d.is_symlink() or not d.is_dir() or d.name == CURRENT:
            continue
        if not d.name.startswith(PREFIX) or d.name.startswith("run-"):
            continue
        meta_file = d / "metadata.json"
        if not meta_file.is_file():
            continue
        meta = json.loads(meta_file.read_text())
        rows.append({"name": d.name, **meta, "isCurrent": d.name == current})
    return rows


def legacy_listing(models: Path) -> list[dict[str, Any]]:
    """The admin panel's legacy rows: every weights/oneseek-7b-zero-v*.json."""
    rows = []
    for path in sorted((models / "oneseek-7b-zero" / "weights").glob("oneseek-7b-zero-v*.json")):
        data = json.loads(path.read_text())
        dna = data["dna"]
        rows.append(
            {
                "file": path.name,
                "fingerprint": dna["fingerprint"],
                "baseModels": dna["baseModels"],
                "finalWeights": dna["finalWeights"],
                "isCurrent": data.get("isCurrent", False),
            }
        )
    return rows


def lora_weights_file(models: Path, metadata_file: Path, key: str) -> Path:
    """The legacy find_lora_weights: modelSpecificWeights[key] is a file name in weights/."""
    data = json.loads(metadata_file.read_text())
    return models / "oneseek-7b-zero" / "weights" / str(data["modelSpecificWeights"][key])
