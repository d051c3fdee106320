"""The LoRA recipe for one base model: setup, train (with checkpoints), evaluate.

Laid out like torchtune's single-device LoRA recipe: everything the loop needs is built in
`setup`, the loop only steps, and `save_checkpoint` captures all of its state so a resumed run
ends where an uninterrupted one does.

With several processes (`World`), each rank takes its share of every batch and scales its loss
so that the average of the ranks' gradients (DDP's all-reduce, or FSDP's reduce-scatter when the
model is sharded: see sharding.py) is the gradient of the whole batch: the same optimizer step as
one process taking the batch whole.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
import torch
from peft import get_peft_model_state_dict

from oneseekd.certify.certified import Figures
from oneseekd.trainer import keep, phases, sharding
from oneseekd.trainer.batching import (
    Batch,
    order_digest,
    padding_share,
    row_labels,
    row_tokens,
    tensors,
)
from oneseekd.trainer.checkpoint import Checkpoints, Position, rng_state
from oneseekd.trainer.context import ModelSpec, Progress
from oneseekd.trainer.curves import Curves
from oneseekd.trainer.data import Records
from oneseekd.trainer.evaluate import batch_count, measure
from oneseekd.trainer.loading import Device
from oneseekd.trainer.loss import loss_sum
from oneseekd.trainer.reporting import ReportsProgress
from oneseekd.trainer.tokcache import TokenCache
from oneseekd.trainer.world import World

__all__ = ["LoraRecipe", "ModelResult", "Placement", "Reporting", "Stopped", "Task", "loss_sum"]

log = structlog.get_logger("oneseekd.trainer")


class Stopped(Exception):
    """Training stopped on request after writing a checkpoint."""


@dataclass(frozen=True)
class ModelResult(Figures):
    """A trained model: its figures, and its weights for saving."""

    model: Any  # the PEFT model
    tokenizer: Any
    # the full LoRA weights under the model's names, gathered on rank 0 when the model was
    # sharded (its own parameters then hold only this rank's shard); None otherwise
    trainable: dict[str, Any] | None = None


@dataclass(frozen=True)
class Task:
    """What a recipe trains: one base model with its options, on these records."""

    spec: ModelSpec
    hyper: dict[str, Any]
    records: Records
    split: tuple[list[int], list[int]]  # the training and the validation records' indices
    dataset: str = "dataset"  # the records' file name, for errors
    # the sha256 of the bytes the records were read from: the tokenization cache's key
    dataset_sha256: str = ""


@dataclass(frozen=True)
class Placement:
    """Where a recipe trains: the device, the run's processes, its checkpoint folder."""

    device: Device
    checkpoints: Checkpoints
    world: World = field(default_factory=World)
    cache: Path | None = None  # the home's cache/ (the tokenizer class memo), None: none
    tokens: TokenCache | None = None  # the tokenization cache, None: tokenize every time


def _untold(key: str, value: Any) -> None:
    """A report no one asked for."""


@dataclass(frozen=True)
class Reporting:
    """Where a recipe reports, and who may stop it. The callbacks are rank 0's: they write
    live_metrics.json."""

    progress: Progress
    should_stop: Callable[[], bool] = lambda: False
    label: dict[str, Any] = field(default_factory=dict)  # model index and count, for progress
    # told each finished epoch's position (its losses and evaluations so far)
    on_epoch: Callable[[str, Position], None] = _untold
    on_step: Callable[[str, list[float]], None] = _untold  # every optimizer step's loss so far
    on_auto_stop: Callable[[str, dict[str, Any]], None] = _untold  # auto-stop's state, per epoch
    # the phases after the last step that the ETA counts (trainer/phases.py): the current
    # model measured on the same rows, the samples generated
    compares: bool = False
    samples: bool = False
    # the model's TensorBoard curves (trainer/curves.py), rank 0's; None: not asked for
    curves: Curves | None = None
    # whether every step's gradient norm is measured for the curves: said on every rank,
    # since a sharded model's norm takes a collective
    grad_norms: bool = False


class LoraRecipe(ReportsProgress):
    def __init__(self, task: Task, place: Placement, reporting: Reporting) -> None:
        self.spec = task.spec
        self.hp = task.hyper
        self.records = task.records
        self.train_idx, self.val_idx = task.split
        self.dataset = task.dataset
        self.device = place.device
        self.checkpoints = place.checkpoints
        self.world = place.world
        self.cache = place.cache
        self.tokens = place.tokens
        self.dataset_sha256 = task.dataset_sha256
        self.micro = int(self.hp["batch_size"])  # rows a pass; setup may pick fewer
        # attributes of their own: a test stops a recipe or listens to it by setting them
        self.progress = reporting.progress
        self.should_stop = reporting.should_stop
        self.label = reporting.label
        self.on_epoch = reporting.on_epoch
        self.on_step = reporting.on_step
        self.on_auto_stop = reporting.on_auto_stop
        self.compares, self.samples = reporting.compares, reporting.samples
        self.curves, self.grad_norms = reporting.curves, reporting.grad_norms
        self.timing = phases.Timing()
        self._started = time.monotonic()  # train() starts the clock again
        self._before = (0, 0, 0.0)
        self._window_loss = torch.zeros(())  # the summed loss of the window so far

    def _loss(self, net: Any, batch: dict[str, torch.Tensor], labels: torch.Tensor) -> Any:
        """The summed loss over the batch's labels, through `net` (the chunked wrapper's own
        forward, or the model's logits). No KV cache: packed records must not see each other,
        and training has no use for one."""
        if self.chunked:
            return net(labels=labels, **batch).loss_sum
        return loss_sum(net(**batch, use_cache=False).logits, labels)

    def _stopped_early(self) -> bool:
        return self.auto_stop is not None and self.auto_stop.stopped

    # --- train -------------------------------------------------------------------------------
    def train(self) -> ModelResult:
        pos = self.position
        epochs = int(self.hp["epochs"])
        lengths = self.train_data.lengths()
        pad_id = int(self.tokenizer.pad_token_id)
        self._started = time.monotonic()
        self._before = (pos.step, pos.tokens_seen, pos.seconds)
        if self.curves is not None:
            self.curves.start(pos.tokens_seen, self.timing.spent)
        padding = padding_share(lengths, self._batches(0), self.packed)
        if pos.base_eval is None:  # before the first step; kept in the checkpoints
            pos.base_eval = self.evaluate_base(pad_id)
        self.model.train()
        while pos.epoch < epochs and not self._stopped_early():
            batches = self._batches(pos.epoch)
            pos.order = order_digest(batches)
            while pos.batch < len(batches):
                boundary = self._micro_step(batches, pos, pad_id)
                if not boundary:
                    continue
                if self.world.main:
                    self._report(pos, epochs)
                if pos.step % int(self.hp["checkpoint_every"]) == 0:
                    self.save_checkpoint()
                if self.world.any(self.should_stop()):
                    self.save_checkpoint()  # not again when the step above just saved it
                    raise Stopped
            pos.train_losses.append(pos.loss_sum / max(pos.loss_tokens, 1))
            pos.val_losses.append(self.evaluate(pad_id))
            if self._keeps_best() and keep.better(pos):
                pos.best_epoch = len(pos.val_losses)
                self._keep_best(pos.best_epoch)  # before the checkpoint that names it
            stopping = self.auto_stop is not None and self.auto_stop.update(pos.val_losses[-1])
            log.info(
                "epoch_finished",
                model=self.spec.key,
                epoch=pos.epoch + 1,
                train_loss=round(pos.train_losses[-1], 5),
                val_loss=round(pos.val_losses[-1], 5),
                auto_stopped=stopping,
            )
            if self.world.main:
                self.on_epoch(self.spec.key, pos)
                self._curve_epoch(pos)
                if self.auto_stop is not None:
                    self.on_auto_stop(self.spec.key, self.auto_stop.info())
            pos.epoch += 1
            pos.batch = 0
            pos.loss_sum, pos.loss_tokens = 0.0, 0
            pos.order = ""
            self.save_checkpoint()
            done = pos.epoch >= epochs or self._stopped_early()
            if self.world.any(self.should_stop()) and not done:
                raise Stopped
        shipped = self._ship(pos)  # before the weights are gathered for the result
        return ModelResult(
            self.spec.key,
            pos.train_losses,
            pos.val_losses,
            pos.step,
            pos.tokens_seen,
            self._seconds(),
            padding,
            self.targets,
            self.model,
            self.tokenizer,
            self._trainable() if self.sharded else None,
            counts={"label_tokens": pos.labels_seen, "truncated_records": self.truncated},
            evaluation={
                "held_out": self.held.describe(),
                "base": pos.base_eval,
                "epochs": list(pos.evals),
                "step_losses": list(pos.step_losses),
                "shipped": shipped,
            },
            auto_stop=self.auto_stop.info() if self.auto_stop is not None else None,
            quantization=self.quantization.describe() if self.quantization else None,
        )

    def _seconds(self) -> float:
        """This model's training time: earlier attempts' (from the checkpoint) and this one's."""
        return self._before[2] + time.monotonic() - self._started

    def _micro_step(self, batches: list[Batch], pos: Position, pad_id: int) -> bool:
        """One micro-batch; True when it completed an optimizer step.

        The gradient is that of the summed loss over every label token of the accumulation
        window (all its micro-batches, on every rank) divided by their number: each token
        counts once, whatever the length of its row or the size of its micro-batch, and an
        epoch's last, shorter window is a whole step too. Token counts come from the CPU-side
        data (every rank knows every batch), so the loop reads the device once per step."""
        whole = batches[pos.batch]
        world = self.world
        rows, weight = world.shard(whole)
        counts = self.train_counts
        first = pos.batch - pos.batch % self.accum
        window = batches[first : first + self.accum]
        window_labels = sum(row_labels(counts, row) for batch in window for row in batch)
        boundary = pos.batch + 1 == first + len(window)
        # the batch in passes of `micro` rows (setup: asked, or what fits the device), each
        # weighted as the whole batch's tokens are: the same gradient, less memory
        passes = [rows[i : i + self.micro] for i in range(0, len(rows), self.micro)] or [rows]
        summed_batch: Any = 0
        for n, part in enumerate(passes):
            batch = tensors(self.train_data, part, pad_id, self.packed)
            labels = batch.pop("labels")
            batch = {k: v.to(self.device.type) for k, v in batch.items()}
            # under DDP, gradients are averaged over the ranks at the window's last pass
            # only; FSDP reduces each pass's into the shards (unsharded ones would cost memory)
            last = boundary and n == len(passes) - 1
            skip = world.distributed and not last and not self.sharded
            sync = self.net.no_sync() if skip else nullcontext()
            with sync:
                with self._autocast():
                    summed = self._loss(self.net, batch, labels) * weight
                # DDP and FSDP average the ranks' gradients: each rank's counts size times
                scaled = summed * (world.size / max(window_labels, 1))
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            summed_batch = summed.detach() + summed_batch
        self._window_loss = summed_batch + (self._window_loss if pos.batch > first else 0)
        pos.tokens_seen += sum(row_tokens(self.train_data, row) for row in whole)
        pos.batch += 1
        if not boundary:
            return False
        [loss] = world.sum([float(self._window_loss)])  # the one read of the device per step
        pos.loss_sum += loss
        pos.step_losses.append(loss / max(window_labels, 1))
        pos.loss_tokens += window_labels
        pos.labels_seen += window_labels
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        norm = None
        if self.max_grad_norm > 0:  # 0: no clipping
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        norm = self._grad_norm(norm)  # None unless the curves ask for it
        rate = float(self.optimizer.param_groups[0]["lr"])  # the rate this step applies
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        pos.step += 1
        if world.main:
            self.on_step(self.spec.key, pos.step_losses)
            self._curve_step(pos, rate, norm)
        return True

    def evaluate(self, pad_id: int) -> float:
        """Token-weighted mean loss on the held-out rows (trainer/evaluate.py: the validation
        split, the train split if it is empty), over the same labels training uses; every
        figure of it is kept in the position (checkpointed) for certification."""
        with self.phase(phases.TRAINED, self.eval_batches(), "batches") as tick:
            figures = self._measure(pad_id, tick)
        self.position.evals.append(figures)
        return float(figures["loss"])

    def evaluate_base(self, pad_id: int) -> dict[str, Any]:
        """The base model's figures on the same rows and batches: the adapter disabled."""
        with (
            self.phase(phases.BASE, self.eval_batches(), "batches") as tick,
            self.model.disable_adapter(),
        ):
            return self._measure(pad_id, tick)

    def eval_batches(self) -> int:
        """The batches of one held-out evaluation on this rank."""
        return batch_count(self.held, self.batch_size, self.world)

    def _measure(
        self, pad_id: int, on_batch: Callable[[int, int], None] | None = None
    ) -> dict[str, Any]:
        # sharded, the forward must go through the root that gathers the weights (the chunked
        # wrapper, asked for no labels, answers with the model's own output and its logits)
        net = self.inner if self.sharded else self.model
        world, device = self.world, self.device
        with self._autocast():
            return measure(
                net, self.held, pad_id, self.batch_size, world, self.sharded, device, on_batch
            ).as_dict()

    def _where(self, pos: Position) -> tuple[int, int, int]:
        return (pos.epoch, pos.batch, pos.step)

    def save_checkpoint(self) -> None:
        """Written by rank 0, with every rank's RNG state; the others wait until it is in
        place. Under DDP the weights and optimizer are the same on every rank; sharded, every
        rank first helps gather them whole onto rank 0. A position saved already is not
        saved again (a stop that lands on a checkpoint step)."""
        if self._saved == self._where(self.position):
            return
        self.position.seconds = self._seconds()
        if self.auto_stop is not None:
            self.position.auto_stop = self.auto_stop.state_dict()
        ranks = self.world.gather(rng_state()) if self.world.distributed else None
        if self.sharded:
            adapter = sharding.adapter_state(self.model, self._trainable())
            optimizer = sharding.optimizer_state(self.inner, self.optimizer)
        elif self.world.main:
            adapter = {
                k: v.detach().cpu().contiguous()
                for k, v in get_peft_model_state_dict(self.model).items()
            }
            optimizer = self.optimizer.state_dict()
        if self.world.main:
            self.checkpoints.save(
                adapter, optimizer, self.scheduler, self.scaler, self.position, ranks
            )
        self._saved = self._where(self.position)
        self.world.barrier()
