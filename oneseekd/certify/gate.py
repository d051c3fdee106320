"""The gate: whether a certified run may become current (docs/training.md, "The gate").

A run is certified when it trained; it is made current only when every model beats its base
model on held-out bits per byte, and (with `[certify] compare_with_current`) none is worse than
the current run's model on the same base, measured on this run's held-out rows. Plain figures
in, a verdict out: nothing here imports torch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from oneseekd import protocol
from oneseekd.errors import OneseekError

NOT_CURRENT_BY_CONFIG = "[certify] make_current is false: left to `oneseekctl promote`"
# a model beats its base when its bits per byte are at least this share lower (and is worse
# than the current model when at least this share higher): smaller differences are the
# rounding of an evaluation in bf16, not something training did
MARGIN = 1e-4


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
class Verdict:
    beat_base: bool  # every model beat its base on held-out bits per byte
    not_worse: bool  # no model is worse than the current run's on the same held-out rows
    made_current: bool
    reasons: list[str] = field(default_factory=list)  # why it was not made current
    measured: bool = True  # False: a model had no held-out rows, so there is no verdict

    def as_dict(self) -> dict[str, Any]:
        shown: dict[str, Any] = {
            "beat_base": self.beat_base,
            "not_worse_than_current": self.not_worse,
            "made_current": self.made_current,
            "reasons": list(self.reasons),
        }
        if not self.measured:  # only then, so the gate of a measured run keeps its shape
            shown["measured"] = False
        return shown


def unmeasured(evaluation: dict[str, Any]) -> bool:
    """Whether the model's figures are on no held-out rows: the evaluation then falls back
    to the rows it trained on (trainer/evaluate.py `held_out`, split "train"), which says
    nothing about what it learned."""
    held = evaluation.get("held_out")
    return isinstance(held, dict) and (held.get("split") != "validation" or not held.get("rows"))


def not_measured_reason(key: str) -> str:
    return (
        f"{key}: not measured: the run held out no validation rows (val_fraction 0, or every "
        "record a copy of one), so there is no verdict on whether it beat its base; it is "
        "certified, not made current"
    )


def bpb(figures: Any) -> float | None:
    value = figures.get("bits_per_byte") if isinstance(figures, dict) else None
    return float(value) if isinstance(value, int | float) else None


def trained_figures(evaluation: dict[str, Any]) -> dict[str, Any] | None:
    """The figures of the trained model: those of its last evaluated epoch."""
    epochs = evaluation.get("epochs") or []
    return epochs[-1] if epochs else None


def judge(models: Sequence[Measured], make_current: bool, compare: bool = True) -> Verdict:
    """The verdict on a run's models, each compared at MARGIN. A model without held-out
    figures (trained before they were measured) cannot show it beat its base, and holds the
    run back; one evaluated on no held-out rows is "not measured", and holds it back too.
    `compare` (`[certify] compare_with_current`): a model worse than the current one holds it
    back."""
    reasons: list[str] = []
    beat = True
    not_worse = True
    measured = True
    for m in models:
        if unmeasured(m.evaluation):  # no held-out data, no verdict
            beat = measured = False
            reasons.append(not_measured_reason(m.key))
            continue
        base = bpb(m.evaluation.get("base"))
        trained = bpb(trained_figures(m.evaluation))
        if base is None or trained is None:
            beat = False
            reasons.append(f"{m.key}: has no held-out bits per byte to compare with its base")
            continue
        if not trained < base * (1 - MARGIN):
            beat = False
            reasons.append(
                f"{m.key}: held-out bits per byte {trained:.4f} does not beat the base "
                f"model's {base:.4f}"
            )
        now = m.evaluation.get("current")
        held = bpb(now.get("figures")) if isinstance(now, dict) else None
        if compare and isinstance(now, dict) and held is not None and trained > held * (1 + MARGIN):
            not_worse = False
            reasons.append(
                f"{m.key}: held-out bits per byte {trained:.4f} is worse than the current "
                f"model's {held:.4f} ({now.get('dna')}, run {now.get('run_id')}) on this run's "
                "held-out data"
            )
    if not make_current:
        reasons.append(NOT_CURRENT_BY_CONFIG)
    return Verdict(beat, not_worse, make_current and beat and not_worse, reasons, measured)


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
