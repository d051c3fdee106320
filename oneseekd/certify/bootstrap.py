"""The paired bootstrap the gate decides on (certify/gate.py): by how much one model's held-out
bits per byte differ from another's on the same records, with the 95 % interval of that
difference.

What makes two measurements of a model on a small held-out set differ is which records it
holds: with 10-20 records the bits per byte of the set moves by several percent from one draw
of records to another. Both models are measured on the same records, so the comparison is
paired: each record's difference in bits (trained minus other) is drawn with its bytes, and a
draw of n records (with replacement, n the records held out) gives the difference of their
bits per byte, Σ bits / Σ bytes, the same ratio the figure itself is. The 2.5th and 97.5th
percentiles of RESAMPLES draws are the interval; the difference on the whole set is the two
models' bits per byte apart.

Seeded (SEED): the same per-record figures give the same interval on every run, so a
certified verdict can be computed again from the figures oneseek_dna.json signs. numpy, never
torch; only the trainer imports this module (the gate imports it when it judges).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 10_000
SEED = 27  # fixed: the interval is a function of the figures alone
# records drawn per block of resamples: 4 M indices (32 MB) whatever the size of the set
_CELLS = 4_000_000


@dataclass(frozen=True)
class Interval:
    difference: float  # bits per byte, trained minus other, on the whole set (below 0: better)
    low: float  # the interval of the difference over the resamples
    high: float


def paired(
    trained_bits: Sequence[float],
    other_bits: Sequence[float],
    record_bytes: Sequence[int],
    *,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    confidence: float = CONFIDENCE,
) -> Interval:
    """The difference in bits per byte of `trained` and `other` over the same records (each
    record's summed target loss in bits, and its target bytes), with its `confidence`
    percentile interval from `resamples` seeded draws of the records."""
    if not len(trained_bits) == len(other_bits) == len(record_bytes) > 0:
        raise ValueError(
            f"a paired comparison needs the same records for both models, got "
            f"{len(trained_bits)} and {len(other_bits)} records and {len(record_bytes)} sizes"
        )
    diff = np.asarray(trained_bits, dtype=np.float64) - np.asarray(other_bits, dtype=np.float64)
    size = np.asarray(record_bytes, dtype=np.float64)
    n = len(diff)
    rng = np.random.default_rng(seed)
    found = np.empty(resamples, dtype=np.float64)
    block = max(1, _CELLS // n)
    for start in range(0, resamples, block):
        count = min(block, resamples - start)
        drawn = rng.integers(0, n, size=(count, n))
        found[start : start + count] = diff[drawn].sum(axis=1) / np.maximum(
            size[drawn].sum(axis=1), 1.0
        )
    tail = (1 - confidence) / 2
    low, high = np.quantile(found, [tail, 1 - tail])
    return Interval(float(diff.sum() / max(size.sum(), 1.0)), float(low), float(high))
