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


def final_weights(figures: dict[str, float], weighting: str) -> dict[str, float]:
    """How much each model counts in the ensemble, from one figure per model (`weight_inputs`
    picks it): lower is better. The weights sum to 1.

    `bits_per_byte` (the default): w_i = 2^(-b_i) / sum_j 2^(-b_j) over the held-out bits per
    byte b_i: each model's geometric-mean probability of a byte of held-out text, so models
    with different tokenizers are weighed on the same unit. `val_loss` (as oneseekd weighed
    before): a softmax over the negative final per-token validation losses,
    w_i = exp(-L_i) / sum_j exp(-L_j), which favours a tokenizer that cuts text finer.
    `equal`: 1/n each."""
    keys = list(figures)
    if weighting == "equal" or not keys:
        return {k: 1 / len(keys) for k in keys} if keys else {}
    scale = math.log(2) if weighting == "bits_per_byte" else 1.0
    low = min(figures.values())
    raw = {k: math.exp(-(figures[k] - low) * scale) for k in keys}
    total = sum(raw.values())
    return {k: raw[k] / total for k in keys}


def weight_inputs(
    val_losses: dict[str, float], bits_per_byte: dict[str, float | None], weighting: str
) -> dict[str, float]:
    """The figure `final_weights` weighs each model by: its held-out bits per byte under
    `bits_per_byte` (its per-token loss for a model measured before bits per byte were),
    its final validation loss otherwise."""
    if weighting != "bits_per_byte":
        return dict(val_losses)
    if any(bits_per_byte.get(k) is None for k in val_losses):  # one unit for all, or none
        return dict(val_losses)
    return {k: float(bits_per_byte[k] or 0.0) for k in val_losses}


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
