"""Reading `weights/oneseek-7b-zero-v<version>.json`, the files this daemon writes and the
legacy ones written before it (`"baseModels": ["Mistral-7B", "LLaMA-2"]`, weights keyed by
display name, no `trained_models`)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oneseekd.errors import OneseekError
from oneseekd.naming import normalize_model_name

_VERSION_IN_NAME = re.compile(r"-v(\d+\.\d+)\.json$")


@dataclass(frozen=True)
class Metadata:
    version: str
    base_models: list[str]  # display names, as written
    model_keys: list[str]  # normalized keys
    weights: dict[str, float]  # by model key
    created_at: str | None
    training_type: str | None
    dna: str | None
    legacy: bool


def read_metadata(path: Path) -> Metadata:
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise OneseekError(f"cannot read the metadata file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise OneseekError(f"the metadata file {path} is not a JSON object")
    names = [str(n) for n in data.get("baseModels") or []]
    keys = [str(k) for k in data.get("trained_models") or []]
    legacy = not keys
    if legacy:
        keys = [normalize_model_name(n) for n in names]
    raw = data.get("modelSpecificWeights") or data.get("final_weights") or {}
    weights = (
        {
            normalize_model_name(str(k)): float(v)
            for k, v in raw.items()
            if isinstance(v, int | float)
        }
        if isinstance(raw, dict)
        else {}
    )
    match = _VERSION_IN_NAME.search(path.name)
    version = str(data.get("version") or (match.group(1) if match else ""))
    return Metadata(
        version=version,
        base_models=names,
        model_keys=keys,
        weights=weights,
        created_at=data.get("createdAt"),
        training_type=data.get("trainingType"),
        dna=data.get("dna"),
        legacy=legacy,
    )
