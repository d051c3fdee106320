"""The gate: whether a certified run may become current (docs/training.md, "The gate").

A run is certified when it trained; it is made current only when every model measurably beats
its base model on held-out bits per byte, and (with `[certify] compare_with_current`) none is
measurably worse than the current run's model on the same base, measured on this run's
held-out records. "Measurably": the 95 % interval of the difference, from a paired bootstrap
over the held-out records (certify/bootstrap.py), lies on one side of zero, by more than
MIN_EFFECT; otherwise the verdict is "no measurable difference". Too few held-out records or
bytes give no verdict at all, and say what `val_fraction` would give one. Plain figures in, a
verdict out: nothing here imports torch (nor numpy, but when it judges)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from oneseekd import protocol
from oneseekd.errors import OneseekError

NOT_CURRENT_BY_CONFIG = "[certify] make_current is false: left to `oneseekctl promote`"
# the defaults of `[certify] min_held_out_records` and `min_held_out_bytes`: below these a
# bootstrap over the held-out records says little about the next ones (the interval of a
# percentile bootstrap runs narrow on a handful of records; a few hundred bytes are a few
# sentences)
MIN_RECORDS = 10
MIN_TARGET_BYTES = 256
# a difference within this share of the other model's bits per byte counts as none, whatever
# its interval: held-out records that are copies of one another (the split keeps copies
# together) leave the bootstrap no spread to see, and nobody would notice a change that small
MIN_EFFECT = 1e-4
# the largest val_fraction the gate suggests before it says to add records instead
MOST_HELD_OUT = 0.5

IMPROVED, BETTER, WORSE, SAME = "improved", "better", "worse", "no measurable difference"
TOO_FEW, NOT_MEASURED = "too few held-out data", "not measured"


class Measured(Protocol):
    """What the gate reads of a trained model (certify/certified.py's TrainedModel)."""

    @property
    def key(self) -> str: ...

    @property
    def evaluation(self) -> dict[str, Any]: ...


class NotImproved(OneseekError):
    """`[certify] require_improvement`: a run whose model did not beat its base."""

    exit_code = protocol.EXIT_REFUSED


@dataclass(frozen=True)
class HeldOutSize:
    """How much held-out data gives a verdict (`[certify] min_held_out_records` and
    `min_held_out_bytes`), and what the gate needs to say which `val_fraction` would hold out
    that much: the run's records (both splits, 0: unknown), how many the validation split
    holds, and `[certify] eval_tokens` (which caps the rows evaluated)."""

    records: int = 0
    validation: int = 0
    eval_tokens: int = 0
    min_records: int = MIN_RECORDS
    min_bytes: int = MIN_TARGET_BYTES


@dataclass(frozen=True)
class Verdict:
    beat_base: bool  # every model measurably beat its base on held-out bits per byte
    not_worse: bool  # no model is measurably worse than the current run's on the same rows
    made_current: bool
    reasons: list[str] = field(default_factory=list)  # why it was not made current
    measured: bool = True  # False: a model had no or too few held-out rows: no verdict
    # per model: the differences and their intervals against the base and the current model
    # (Comparison.as_dict), or why there are none
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    size: HeldOutSize = HeldOutSize()

    def as_dict(self) -> dict[str, Any]:
        shown: dict[str, Any] = {
            "beat_base": self.beat_base,
            "not_worse_than_current": self.not_worse,
            "made_current": self.made_current,
            "reasons": list(self.reasons),
            "models": self.models,
            "method": method(self.size),
        }
        if not self.measured:  # only then, so the gate of a measured run keeps its shape
            shown["measured"] = False
        return shown


def method(size: HeldOutSize = HeldOutSize()) -> dict[str, Any]:
    """How the intervals were taken: enough to compute them again from the signed figures."""
    from oneseekd.certify import bootstrap

    return {
        "test": "paired bootstrap over held-out records",
        "confidence": bootstrap.CONFIDENCE,
        "resamples": bootstrap.RESAMPLES,
        "seed": bootstrap.SEED,
        "min_records": size.min_records,
        "min_target_bytes": size.min_bytes,
        "min_effect": MIN_EFFECT,
    }


@dataclass(frozen=True)
class Comparison:
    """The trained model against another (its base, or the current model) on the same
    held-out records: the difference of their bits per byte (trained minus other: below 0,
    the trained model predicts the text better) and its interval."""

    difference: float
    low: float
    high: float
    floor: float  # MIN_EFFECT of the other model's bits per byte

    def outcome(self, lower: str) -> str:
        """`lower` (improved, better) when the interval lies below zero, worse when above,
        otherwise no measurable difference."""
        if self.high < -self.floor:
            return lower
        if self.low > self.floor:
            return WORSE
        return SAME

    def as_dict(self, lower: str) -> dict[str, Any]:
        return {
            "difference": self.difference,
            "interval": [self.low, self.high],
            "verdict": self.outcome(lower),
        }


def compared(
    trained_bits: list[float], other_bits: list[float], record_bytes: list[int], other: float
) -> Comparison:
    from oneseekd.certify.bootstrap import paired

    got = paired(trained_bits, other_bits, record_bytes)
    return Comparison(got.difference, got.low, got.high, MIN_EFFECT * abs(other))


def shown_difference(c: dict[str, Any]) -> str:
    """`-0.4123 bits per byte (95 % interval -0.5301 to -0.3011)`"""
    low, high = c["interval"]
    return f"{c['difference']:+.4f} bits per byte (95 % interval {low:+.4f} to {high:+.4f})"


def unmeasured(evaluation: dict[str, Any]) -> bool:
    """Whether the model's figures are on no held-out rows: the evaluation then falls back
    to the rows it trained on (trainer/evaluate.py `held_out`, split "train"), which says
    nothing about what it learned."""
    held = evaluation.get("held_out")
    return isinstance(held, dict) and (held.get("split") != "validation" or not held.get("rows"))


def enough(evaluation: dict[str, Any], size: HeldOutSize) -> tuple[str, dict[str, Any]]:
    """What would hold out enough for a verdict, in words and as figures: a `val_fraction`,
    or a larger `[certify] eval_tokens` when it is what cut the held-out rows short."""
    held = evaluation.get("held_out")
    held = held if isinstance(held, dict) else {}
    rows, nbytes = int(held.get("rows") or 0), int(held.get("target_bytes") or 0)
    per_record = nbytes / rows if rows else 0.0
    needed = size.min_records
    if per_record > 0:
        needed = max(needed, math.ceil(size.min_bytes / per_record))
    if size.records <= 0:
        return f"hold out at least {needed} records", {}
    if held.get("split") == "validation" and 0 < rows < size.validation:
        tokens = math.ceil(needed * int(held.get("tokens") or 0) / rows)
        return (
            f"[certify] eval_tokens {size.eval_tokens} evaluates {rows} of the "
            f"{size.validation} validation records: about {tokens} would evaluate enough"
        ), {"eval_tokens": tokens}
    fraction = -(-100 * needed // size.records) / 100  # rounded up to a hundredth
    if fraction > MOST_HELD_OUT:
        return (
            f"val_fraction {fraction:.2f} would hold out {needed} of the {size.records} records, "
            "leaving too few to train on: add records (at val_fraction 0.2, about "
            f"{math.ceil(needed / 0.2)} in all)"
        ), {"val_fraction": fraction}
    return (
        f"val_fraction {fraction:.2f} would hold out enough ({needed} of the {size.records} "
        "records)"
    ), {"val_fraction": fraction}


def not_measured_reason(key: str, advice: str = "") -> str:
    return (
        f"{key}: not measured: the run held out no validation rows (val_fraction 0, or every "
        "record a copy of one), so there is no verdict on whether it beat its base"
        + (f"; {advice}" if advice else "")
        + "; it is certified, not made current"
    )


def bpb(figures: Any) -> float | None:
    value = figures.get("bits_per_byte") if isinstance(figures, dict) else None
    return float(value) if isinstance(value, int | float) else None


def record_bits(figures: Any, rows: int) -> list[float] | None:
    """A model's per-record bits on the held-out rows, or None (figures measured before the
    gate compared record by record, or on other rows)."""
    found = figures.get("record_bits") if isinstance(figures, dict) else None
    if not isinstance(found, list) or len(found) != rows:
        return None
    return [float(x) for x in found]


def trained_figures(evaluation: dict[str, Any]) -> dict[str, Any] | None:
    """The figures of the trained model: those of the epoch it ships (`shipped`, trainer/
    keep.py), else of its last evaluated epoch (a model trained before it kept the best)."""
    epochs = evaluation.get("epochs") or []
    shipped = evaluation.get("shipped")
    epoch = shipped.get("epoch") if isinstance(shipped, dict) else None
    if not epochs:
        return None
    picked: dict[str, Any] = (
        epochs[epoch - 1] if isinstance(epoch, int) and 1 <= epoch <= len(epochs) else epochs[-1]
    )
    return picked


@dataclass
class _Judging:
    """The verdict as it is built, model by model."""

    beat: bool = True
    not_worse: bool = True
    measured: bool = True
    reasons: list[str] = field(default_factory=list)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)

    def hold(self, reason: str) -> None:
        self.beat = False
        self.reasons.append(reason)


def _judge_one(m: Measured, compare_now: bool, size: HeldOutSize, j: _Judging) -> None:
    key, ev = m.key, m.evaluation
    found = ev.get("held_out")
    held: dict[str, Any] = found if isinstance(found, dict) else {}
    shape = {"records": held.get("rows"), "target_bytes": held.get("target_bytes")}
    if unmeasured(ev):  # no held-out data, no verdict
        advice, figures = enough(ev, size)
        j.measured = False
        j.hold(not_measured_reason(key, advice))
        j.models[key] = {"verdict": NOT_MEASURED, **shape, **figures}
        return
    base, trained = bpb(ev.get("base")), bpb(trained_figures(ev))
    listed = held.get("record_bytes")
    sizes: list[Any] = listed if isinstance(listed, list) else []
    rows = len(sizes)
    base_bits = record_bits(ev.get("base"), rows)
    trained_bits = record_bits(trained_figures(ev), rows)
    if base is None or trained is None or base_bits is None or trained_bits is None or not rows:
        j.hold(f"{key}: has no held-out bits per byte of each record to compare with its base")
        j.models[key] = {"verdict": NOT_MEASURED, **shape}
        return
    record_bytes = [int(b) for b in sizes]
    if rows < size.min_records or sum(record_bytes) < size.min_bytes:
        advice, figures = enough(ev, size)
        j.measured = False
        j.hold(
            f"{key}: too few held-out data for a verdict: {rows} records and "
            f"{sum(record_bytes)} target bytes, where it takes {size.min_records} records and "
            f"{size.min_bytes} bytes; {advice}; it is certified, not made current"
        )
        j.models[key] = {"verdict": TOO_FEW, **shape, **figures}
        return
    against = compared(trained_bits, base_bits, record_bytes, base).as_dict(IMPROVED)
    j.models[key] = {**shape, "base": against}
    if against["verdict"] == WORSE:
        j.hold(
            f"{key}: held-out bits per byte {trained:.4f} is worse than the base model's "
            f"{base:.4f}: {shown_difference(against)}"
        )
    elif against["verdict"] == SAME:
        j.hold(
            f"{key}: held-out bits per byte {trained:.4f} does not measurably beat the base "
            f"model's {base:.4f}: {shown_difference(against)}"
        )
    now = ev.get("current")
    now_figures = now.get("figures") if isinstance(now, dict) else None
    held_now, now_bits = bpb(now_figures), record_bits(now_figures, rows)
    if not compare_now or not isinstance(now, dict) or held_now is None or now_bits is None:
        return
    versus = compared(trained_bits, now_bits, record_bytes, held_now).as_dict(BETTER)
    j.models[key]["current"] = {**versus, "dna": now.get("dna"), "run_id": now.get("run_id")}
    if versus["verdict"] == WORSE:
        j.not_worse = False
        j.reasons.append(
            f"{key}: held-out bits per byte {trained:.4f} is worse than the current model's "
            f"{held_now:.4f} ({now.get('dna')}, run {now.get('run_id')}) on this run's "
            f"held-out data: {shown_difference(versus)}"
        )


def judge(
    models: Sequence[Measured],
    make_current: bool,
    compare: bool = True,
    size: HeldOutSize = HeldOutSize(),
) -> Verdict:
    """The verdict on a run's models. A model must measurably beat its base; one without
    per-record held-out figures (trained before they were measured) cannot show it, and holds
    the run back; one evaluated on no, or too few, held-out rows has no verdict ("not
    measured", `measured: false`), and holds it back too, saying what `val_fraction` (from
    `size`) would hold out enough. `compare` (`[certify] compare_with_current`): a model
    measurably worse than the current one holds it back; one of no measurable difference
    does not."""
    j = _Judging()
    for m in models:
        _judge_one(m, compare, size, j)
    if not make_current:
        j.reasons.append(NOT_CURRENT_BY_CONFIG)
    made = make_current and j.beat and j.not_worse
    return Verdict(j.beat, j.not_worse, made, j.reasons, j.measured, j.models, size)


def interval_notes(gate: Any) -> list[str]:
    """One line a model for `status` and `show`: each difference with its interval and
    verdict, or why there is none. Empty for a gate certified before the intervals."""
    found = gate.get("models") if isinstance(gate, dict) else None
    if not isinstance(found, dict):
        return []
    notes = []
    for key, m in found.items():
        if not isinstance(m, dict):
            continue
        parts = []
        for name, label in (("base", "against its base"), ("current", "against the current model")):
            c = m.get(name)
            if isinstance(c, dict) and isinstance(c.get("interval"), list):
                parts.append(f"{label} {shown_difference(c)}: {c.get('verdict')}")
        if not parts:
            what = str(m.get("verdict") or NOT_MEASURED)
            parts.append(f"{what} ({m.get('records')} records, {m.get('target_bytes')} bytes)")
            if m.get("val_fraction") is not None:
                parts[-1] += f": val_fraction {m['val_fraction']:.2f} would give a verdict"
            elif m.get("eval_tokens") is not None:
                parts[-1] += f": eval_tokens {m['eval_tokens']} would give a verdict"
        notes.append(f"{key}: " + "; ".join(parts))
    return notes


def refuse(run_id: str, verdict: Verdict) -> NotImproved:
    """The error of a run `[certify] require_improvement` does not certify."""
    return NotImproved(
        f"run {run_id} is not certified: a model did not beat its base on held-out bits per "
        "byte, and [certify] require_improvement is true",
        [
            *[r for r in verdict.reasons if r != NOT_CURRENT_BY_CONFIG],
            "train longer, with a higher learning_rate or on more data, and submit again",
            "or set [certify] require_improvement = false: the run is then certified, but "
            "not made current",
        ],
    )


def not_current_note(gate: Any) -> str | None:
    """One line for `status`, `runs` and `show`: why a certified run was not made current
    (None when it was, or when its folder predates the gate)."""
    if not isinstance(gate, dict) or gate.get("made_current", True):
        return None
    reasons = [str(r) for r in gate.get("reasons") or []]
    return "; ".join(reasons) if reasons else "not made current"


def overridden(gate: Any) -> str | None:
    """What `promote` overrides when it makes this run current: the measured reasons it was
    held back (not `[certify] make_current = false`, an operator's choice), or None."""
    if not isinstance(gate, dict) or gate.get("made_current", True):
        return None
    reasons = [str(r) for r in gate.get("reasons") or [] if r != NOT_CURRENT_BY_CONFIG]
    return "; ".join(reasons) if reasons else None
