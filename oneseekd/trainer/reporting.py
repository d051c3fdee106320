"""The recipe's progress reports: each step's, and each phase's outside the steps (a held-out
evaluation, the comparison with the current model, the samples: trainer/phases.py), with an
ETA that counts the phases still to come."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import structlog
import torch
from torch.distributed.tensor import DTensor

from oneseekd.trainer import phases
from oneseekd.trainer.checkpoint import Position
from oneseekd.trainer.context import Progress
from oneseekd.trainer.curves import Curves
from oneseekd.trainer.keeping import KeepsBestEpoch
from oneseekd.trainer.loading import Device, memory_in_use

log = structlog.get_logger("oneseekd.trainer")


class ReportsProgress(KeepsBestEpoch):
    # set by the recipe's __init__ (and train(), which starts the clock again)
    progress: Progress
    label: dict[str, Any]
    compares: bool
    samples: bool
    timing: phases.Timing
    _started: float
    _before: tuple[int, int, float]
    curves: Curves | None
    grad_norms: bool

    def _grad_norm(self, clipped: Any) -> Any:
        """The step's gradient norm as a tensor (clipping's, or measured here when nothing
        clips) when the curves ask for it; else None. Taken on every rank: a sharded model's
        norm combines the ranks' shards in a collective. Not read here: the curves read it
        once the next step's loss has been read (trainer/curves.py)."""
        if not self.grad_norms:
            return None
        if clipped is None:  # max_grad_norm 0: nothing clipped, so nothing measured it
            grads = [p.grad for p in self.params if p.grad is not None]
            clipped = torch.nn.utils.get_total_norm(grads)
        if isinstance(clipped, DTensor):  # a sharded model's (replicated: a plain tensor now)
            clipped = clipped.full_tensor()
        return clipped

    def _curve_step(self, pos: Position, rate: float, norm: Any) -> None:
        if self.curves is not None:
            loss = pos.step_losses[-1]
            self.curves.step(pos.step, loss, rate, pos.tokens_seen, self.timing.spent, norm)

    def _curve_epoch(self, pos: Position) -> None:
        if self.curves is not None:
            figures = pos.evals[-1] if pos.evals else {}
            first = len(pos.val_losses) == 1
            self.curves.epoch(pos.step, pos.train_losses[-1], figures, pos.base_eval, first)

    def _report(
        self, pos: Position, epochs: int, now: dict[str, Any] | None = None, force: bool = False
    ) -> None:
        """Progress on the run row: the step, and the phase under way (`now`: its name and
        count) if any; the ETA counts the evaluations still to come (trainer/phases.py)."""
        # the steps' own pace: time spent in phases (evaluations) is not training
        elapsed = max(time.monotonic() - self._started - self.timing.spent, 1e-9)
        first_step, first_tokens, _ = self._before
        rate = (pos.tokens_seen - first_tokens) / elapsed
        per_step = elapsed / max(pos.step - first_step, 1)
        evaluations = epochs - len(pos.val_losses)
        left = 0.0
        phase = (now or {}).get("phase")
        if now and phase in phases.EVALUATIONS and now["total"]:
            left = 1 - now["done"] / now["total"]  # the evaluation under way
            evaluations -= 1 if phase == phases.TRAINED else 0  # counted by `left`
        done = self.timing.done
        ahead = phases.Ahead(
            self.total_steps - pos.step,
            per_step,
            max(evaluations, 0),
            left,
            self.compares and phases.COMPARING not in done and phase != phases.COMPARING,
            self.samples and phases.SAMPLES not in done and phase != phases.SAMPLES,
        )
        eta_s, excluded = phases.eta(ahead, self.timing)
        self.progress.report(
            {
                **self.label,
                "model": self.spec.key,
                "epoch": min(pos.epoch + 1, epochs),
                "epochs": epochs,
                "step": pos.step,
                "steps": self.total_steps,
                "loss": round(pos.loss_sum / max(pos.loss_tokens, 1), 5)
                if pos.loss_tokens
                else (round(pos.train_losses[-1], 5) if pos.train_losses else None),
                "tokens_per_s": round(rate, 1),
                "eta_s": round(eta_s, 1),
                "eta_excludes": excluded,
                # each finished epoch's training loss: `oneseekctl train` prints `loss:` at
                # every epoch's end from it, also for an epoch whose end it did not see
                "epoch_losses": [round(loss, 5) for loss in pos.train_losses],
                "device": self.device.name,
                **_held(self.device, self.world.local_rank),
                **(now or {}),
            },
            force=force,
        )

    @contextmanager
    def phase(self, name: str, total: int, unit: str) -> Iterator[Callable[[int, int], None]]:
        """A phase outside the steps (trainer/phases.py): logged as it starts and ends, in
        progress with its count, and timed: an evaluation's seconds feed the ETA."""
        epochs = int(self.hp["epochs"])
        main = self.world.main
        key = self.spec.key
        if main:
            log.info("phase_started", model=key, phase=name, total=total, unit=unit)
            self._report(
                self.position,
                epochs,
                {"phase": name, "done": 0, "total": total, "unit": unit},
                force=True,
            )

        def tick(done: int, of: int) -> None:
            if main:
                self._report(
                    self.position, epochs, {"phase": name, "done": done, "total": of, "unit": unit}
                )

        started = time.monotonic()
        yield tick
        seconds = time.monotonic() - started
        self.timing.spent += seconds
        self.timing.done.add(name)
        if name in phases.EVALUATIONS:
            self.timing.evaluation_seconds = seconds
        if main:
            log.info("phase_finished", model=key, phase=name, seconds=round(seconds, 2))


def _held(device: Device, index: int) -> dict[str, int]:
    """`device_memory_bytes` while the run holds GPU memory (the metrics endpoint's gauge);
    nothing on the CPU, where there is no device memory to report, never a made-up 0."""
    held = memory_in_use(device, index)
    return {} if held is None else {"device_memory_bytes": held}
