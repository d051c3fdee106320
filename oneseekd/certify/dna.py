"""The DNA and the ensemble weights: pure functions of what went in and what came out.

Nothing hashed here may depend on where the home lives: paths are home-relative, a base model
is hashed by its file names and contents, and adapter_config.json names its base by display
name (trainer/outputs.py), so the same training in two home folders gives the same DNA."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

from oneseekd.certify.artifacts import sha256_file
from oneseekd.certify.layout import DNA_PREFIX
from oneseekd.certify.ledger import canonical_json

WEIGHT_FILE_SUFFIXES = (".safetensors", ".bin")


def final_weights(val_losses: dict[str, float], weighting: str) -> dict[str, float]:
    """How much each model counts in the ensemble.

    `val_loss` (the default): a softmax over the negative final validation losses,
    w_i = exp(-L_i) / sum_j exp(-L_j), so a model whose loss is lower by ln 2 counts twice as
    much. `equal`: 1/n each. The weights sum to 1."""
    keys = list(val_losses)
    if weighting == "equal" or not keys:
        return {k: 1 / len(keys) for k in keys} if keys else {}
    low = min(val_losses.values())
    raw = {k: math.exp(-(val_losses[k] - low)) for k in keys}
    total = sum(raw.values())
    return {k: raw[k] / total for k in keys}


def canonical_hash(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj)).hexdigest()


def dataset_hash(path: Path) -> str:
    return sha256_file(path)


def base_weights_hash(folder: Path) -> str:
    """One hash over a base model's weight files and config.json (names and contents; never
    the folder's own path)."""
    digest: dict[str, str] = {}
    for path in sorted(folder.iterdir()):
        if path.name.endswith(WEIGHT_FILE_SUFFIXES) or path.name == "config.json":
            digest[path.name] = sha256_file(path)
    return canonical_hash(digest)


def make_dna(version: str, inputs: dict[str, Any], outputs: dict[str, str]) -> str:
    """`OneSeek-7B-Zero.v<version>.<6 hex>`: the hex from what went in and what came out."""
    return f"{DNA_PREFIX}{version}.{canonical_hash({'in': inputs, 'out': outputs})[:6]}"
