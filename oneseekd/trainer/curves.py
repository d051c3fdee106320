"""A run's curves in TensorBoard (`report_to: ["tensorboard"]`, or `[trainer] report_to`).

Rank 0 writes event files under HOME/runs/<run_id>/tensorboard/<key>/, one folder per model,
every tag under the model's key: per optimizer step the training loss, the learning rate,
tokens/s and the gradient norm; per epoch the held-out figures of the trained model and of its
base (a flat line to beat). `tensorboard --logdir HOME/runs` compares runs.

tensorboardX is the writer: with torch and transformers loaded it imports in about half the time
of torch.utils.tensorboard (docs/training.md, "Curves in TensorBoard"), and it is imported only
by a run that asks for curves. Each attempt writes a file of its own, its model's writer
started with `purge_step` one past the step it resumes from, so TensorBoard hides the steps an
earlier attempt logged after its last checkpoint, and the curve shows each step once. The
gradient norm is read one step late, once the next step's loss has been read (the one device
read of a step), so curves add no wait on the device.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from oneseekd.home import HomePaths

FOLDER = "tensorboard"
# the held-out figures of an epoch drawn as curves (trainer/evaluate.py)
HELD_OUT = ("loss", "bits_per_byte", "accuracy", "perplexity")


def reports_curves(asked: list[str] | None, default: tuple[str, ...]) -> bool:
    """Whether a run writes TensorBoard curves: its request's report_to, else the home's."""
    return FOLDER in (default if asked is None else asked)


def curves_path(home: HomePaths, run_id: str) -> Path:
    return home.root / "runs" / run_id / FOLDER


def relative_path(run_id: str) -> str:
    """Where a run's curves lie, relative to the home (training_results.json names it)."""
    return f"runs/{run_id}/{FOLDER}"


class Curves:
    """One model's event files. Values are plain floats except the gradient norm, a tensor
    read when the next step (or the epoch's end, or close) comes."""

    def __init__(self, folder: Path, key: str, resumed_at_step: int = 0) -> None:
        # only a run that asks for curves imports it (untyped: no stubs exist)
        from tensorboardX import SummaryWriter  # type: ignore[import-untyped]

        self.key = key
        self._writer = SummaryWriter(
            str(folder / key),
            # what an earlier attempt logged past the step this one starts from is hidden
            purge_step=resumed_at_step + 1,
            flush_secs=30,
            # the file's name has the second it was made in and the host: an attempt started
            # within the same second would take the same name and overwrite the last one's
            # file; nanoseconds keep the names apart, in the order TensorBoard reads them
            filename_suffix=f".{time.time_ns()}",
        )
        self._pending: tuple[int, Any] | None = None  # (step, gradient norm tensor)
        self._clock: tuple[float, float, int] | None = None  # (time, phase time, tokens)

    def _add(self, tag: str, value: float | None, step: int) -> None:
        if value is not None:
            self._writer.add_scalar(f"{self.key}/{tag}", float(value), step)

    def _flush_norm(self) -> None:
        if self._pending is not None:
            step, norm = self._pending
            self._pending = None
            self._add("train/grad_norm", float(norm), step)

    def start(self, tokens: int, phase_seconds: float) -> None:
        """The clock tokens/s is measured from: training (re)starts at `tokens` seen."""
        self._clock = (time.monotonic(), phase_seconds, tokens)

    def step(
        self,
        step: int,
        loss: float,
        learning_rate: float,
        tokens: int,
        phase_seconds: float,
        grad_norm: Any = None,
    ) -> None:
        """One optimizer step: its loss and learning rate, the tokens/s since the last step
        (time spent in phases, the held-out evaluations, left out), its gradient norm (a
        tensor, or None when not measured)."""
        self._flush_norm()
        now = time.monotonic()
        if self._clock is not None:
            then, spent, seen = self._clock
            seconds = (now - then) - (phase_seconds - spent)
            if seconds > 0:
                self._add("train/tokens_per_s", (tokens - seen) / seconds, step)
        self._clock = (now, phase_seconds, tokens)
        self._add("train/loss", loss, step)
        self._add("train/learning_rate", learning_rate, step)
        if grad_norm is not None:
            self._pending = (step, grad_norm.detach())

    def epoch(
        self,
        step: int,
        train_loss: float,
        figures: dict[str, Any],
        base: dict[str, Any] | None,
        first: bool,
    ) -> None:
        """An epoch's end (at the step it ended on): its mean training loss, the trained
        model's held-out figures and the base model's (also at step 0 after the first epoch,
        so that the base's line spans the run)."""
        self._flush_norm()
        self._add("epoch/train_loss", train_loss, step)
        for name in HELD_OUT:
            self._add(f"held_out/{name}", figures.get(name), step)
            if base is not None:
                for at in (0, step) if first else (step,):
                    self._add(f"base/{name}", base.get(name), at)
        self._writer.flush()

    def close(self) -> None:
        self._flush_norm()
        self._writer.close()
