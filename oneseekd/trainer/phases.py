"""The phases of a model's training outside its optimizer steps, and how long they may take.

After the last step a run still evaluates the trained model on the held-out rows, measures the
current model on them, generates the samples and certifies: on a 7B model, minutes. Each phase
is named in the run's progress (with a count: `3/12 batches`), logged (`phase_started`,
`phase_finished`), and counted in the ETA from what this attempt has measured: one held-out
evaluation's seconds (the base model's before the first step, or the last epoch's). The
phases nothing measured beforehand (the samples' generation, certifying's hashing) are not
guessed: the progress names them in `eta_excludes`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

BASE = "evaluating held-out: base"
TRAINED = "evaluating held-out: trained"
COMPARING = "comparing with current"
SAMPLES = "writing samples"
CERTIFYING = "certifying"

# every phase, in the order a run goes through them (oneseekctl status names them)
ORDER = (BASE, TRAINED, COMPARING, SAMPLES, CERTIFYING)
EVALUATIONS = (BASE, TRAINED, COMPARING)  # the same batches through the same model: alike


@dataclass
class Timing:
    """What this attempt has measured of its phases, for the ETA."""

    evaluation_seconds: float | None = None  # one held-out evaluation, all its batches
    spent: float = 0.0  # seconds in phases so far: not training steps, left out of step speed
    done: set[str] = field(default_factory=set)  # the phases that have run (for this model)


@dataclass(frozen=True)
class Ahead:
    """What is still to come for a model after now: training steps and their measured pace,
    held-out evaluations (whole ones, and the part left of the one under way), whether the
    current model is compared, and whether samples are generated."""

    steps: int
    step_seconds: float
    evaluations: int
    evaluation_left: float = 0.0  # the fraction of the evaluation under way still to run
    compares: bool = False
    samples: bool = False


def eta(ahead: Ahead, timing: Timing) -> tuple[float, list[str]]:
    """The seconds left for the model, and the phases they do not count (nothing measured
    tells how long they take)."""
    seconds = ahead.steps * ahead.step_seconds
    excluded: list[str] = []
    evaluations = ahead.evaluations + ahead.evaluation_left + (1 if ahead.compares else 0)
    if evaluations > 0:
        if timing.evaluation_seconds is None:
            excluded.append("evaluation")
        else:
            seconds += evaluations * timing.evaluation_seconds
    if ahead.samples:
        excluded.append(SAMPLES)
    excluded.append(CERTIFYING)
    return seconds, excluded
