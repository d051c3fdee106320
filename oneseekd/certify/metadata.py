"""Reading `weights/oneseek-7b-zero-v<version>.json`, the files this daemon writes (the seed's
shape: `version` "OneSeek-7B-Zero.v1.0", `modelSpecificWeights` naming .pth files, numbers in
`final_weights`, `dna` as {fingerprint, baseModels, finalWeights}) and the legacy ones written
before it (`"baseModels": ["Mistral-7B", "LLaMA-2"]`, weights keyed by display name, no
`trained_models`)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oneseekd.certify.layout import DNA_PREFIX
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
    dna: str | None  # the fingerprint (`dna` is an object in the seed's shape)
    legacy: bool
    is_current: bool = False


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
    version = str(data.get("version") or "")
    if not version:
        match = _VERSION_IN_NAME.search(path.name)
        version = match.group(1) if match else ""
    dna = data.get("dna")
    return Metadata(
        version=version.removeprefix(DNA_PREFIX),
        base_models=names,
        model_keys=keys,
        weights=_weights(data),
        created_at=data.get("createdAt"),
        training_type=data.get("trainingType"),
        dna=dna.get("fingerprint") if isinstance(dna, dict) else dna,
        legacy=legacy,
        is_current=data.get("isCurrent") is True,
    )


def _weights(data: dict[str, Any]) -> dict[str, float]:
    """The numeric weights by model key: `final_weights` (this daemon's, and the seed's), else
    `dna.finalWeights`, else numeric `modelSpecificWeights` (files written before the seed's
    shape, where it held numbers; in the seed it names each model's .pth file)."""
    dna = data.get("dna")
    for raw in (
        data.get("final_weights"),
        dna.get("finalWeights") if isinstance(dna, dict) else None,
        data.get("modelSpecificWeights"),
    ):
        if isinstance(raw, dict):
            numbers = {
                normalize_model_name(str(k)): float(v)
                for k, v in raw.items()
                if isinstance(v, int | float) and not isinstance(v, bool)
            }
            if numbers:
                return numbers
    return {}
