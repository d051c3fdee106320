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

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import structlog
import torch
from peft import LoraConfig, TaskType, get_peft_model, get_peft_model_state_dict

from oneseekd.trainer import sharding
from oneseekd.trainer.checkpoint import Checkpoints, Position, rng_state
from oneseekd.trainer.context import ModelSpec, Progress
from oneseekd.trainer.data import (
    Records,
    batch_order,
    collate,
    padding_fraction,
)
from oneseekd.trainer.evaluate import held_out, measure
from oneseekd.trainer.labels import Encoder, encode_records
from oneseekd.trainer.loading import (
    Device,
    ModelRefused,
    check_folder,
    device_memory,
    load_model,
    load_tokenizer,
    lora_targets,
    wants_checkpointing,
)
from oneseekd.trainer.losses import loss_sum, lr_lambda
from oneseekd.trainer.optim import build_optimizer, build_scheduler
from oneseekd.trainer.world import World

log = structlog.get_logger("oneseekd.trainer")


class Stopped(Exception):
    """Training stopped on request after writing a checkpoint."""


@dataclass
class ModelResult:
    key: str
    train_losses: list[float]
    val_losses: list[float]
    steps: int
    tokens: int
    seconds: float
    padding_fraction: float
    targets: list[str]
    model: Any  # the PEFT model, for saving
    tokenizer: Any
    # the full LoRA weights under the model's names, gathered on rank 0 when the model was
    # sharded (its own parameters then hold only this rank's shard); None otherwise
    trainable: dict[str, Any] | None = None
    # label_tokens (what the loss was taken over; `tokens` counts every real token fed) and
    # truncated_records, reported per model in the results
    counts: dict[str, int] = field(default_factory=dict)
    # the held-out evaluation (trainer/evaluate.py): the rows, the base's figures, each
    # epoch's, and the training loss of every optimizer step
    evaluation: dict[str, Any] = field(default_factory=dict)


class LoraRecipe:
    def __init__(
        self,
        spec: ModelSpec,
        hyper: dict[str, Any],
        records: Records,
        split: tuple[list[int], list[int]],
        device: Device,
        checkpoints: Checkpoints,
        progress: Progress,
        should_stop: Callable[[], bool],
        label: dict[str, Any],
        on_epoch: Callable[[str, list[float]], None] = lambda key, losses: None,
        world: World | None = None,
        dataset: str = "dataset",
    ) -> None:
        self.spec = spec
        self.hp = hyper
        self.records = records
        self.train_idx, self.val_idx = split
        self.device = device
        self.checkpoints = checkpoints
        self.progress = progress
        self.should_stop = should_stop
        self.label = label  # model index and count, for progress
        self.on_epoch = on_epoch  # told each epoch's validation losses (live_metrics.json)
        # told every optimizer step's training loss so far (live_metrics.json), on rank 0
        self.on_step: Callable[[str, list[float]], None] = lambda key, losses: None
        self.world = world or World()
        self.dataset = dataset  # its file name, for errors
        self._window_loss = torch.zeros(())  # the summed loss of the window so far

    # --- setup -------------------------------------------------------------------------------
    def _encode(self, vocab: int) -> None:
        hp = self.hp
        encoder = Encoder(
            self.tokenizer,
            int(hp["max_seq_len"]),
            bool(hp.get("train_on_prompt", False)),
            str(hp.get("truncation_side", "right")),
        )
        encoded, self.truncated = encode_records(encoder, self.records, self.dataset, self.spec.key)
        largest = max(max(ids) for ids in encoded.ids)
        if largest >= vocab or self.tokenizer.pad_token_id >= vocab:
            raise ModelRefused(
                f"{self.spec.key}: its tokenizer produces token id {largest}, but "
                f"the model has only {vocab} embeddings",
                ["the tokenizer files do not belong to this model"],
            )
        self.train_data = encoded.subset(self.train_idx)
        self.val_data = encoded.subset(self.val_idx)
        self.train_counts = self.train_data.label_counts()
        limit = int(self.hp.get("eval_tokens", 50_000))
        self.held = held_out(self.val_data, self.train_data, self.tokenizer, limit)

    def setup(self) -> None:
        hp = self.hp
        config = check_folder(self.spec.path)
        self.tokenizer = load_tokenizer(self.spec.path, bool(hp.get("use_fast_tokenizer", True)))
        torch.manual_seed(int(hp["seed"]))
        base = load_model(self.spec.path, self.device)
        vocab = int(base.get_input_embeddings().num_embeddings)
        if self.tokenizer.pad_token_id >= vocab:  # a pad token added past the embeddings
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self._encode(vocab)
        self.targets = lora_targets(base, config["model_type"], hp["lora"].get("target_modules"))
        lora = LoraConfig(
            r=int(hp["lora"]["r"]),
            lora_alpha=int(hp["lora"]["alpha"]),
            lora_dropout=float(hp["lora"]["dropout"]),
            use_rslora=bool(hp["lora"].get("use_rslora", False)),  # alpha / sqrt(r)
            target_modules=self.targets,
            task_type=TaskType.CAUSAL_LM,
        )
        memory = device_memory(self.device, self.world.local_rank)
        self.checkpointing = wants_checkpointing(
            hp.get("gradient_checkpointing"), sharding.weight_bytes(base), memory
        )
        if self.checkpointing:
            # non-reentrant (the default), which DDP and FSDP can follow; it also makes the
            # embeddings' output require grad, so frozen layers pass gradients to LoRA
            base.activation_checkpointing_enable()
        self.sharding = sharding.decide(str(hp.get("sharding", "ddp")), base, self.world)
        if self.sharding == "fsdp" and self.device.scaler:
            raise ModelRefused(
                f'{self.spec.key}: sharding "fsdp" on a GPU without bf16 needs a gradient '
                "scaler that works on sharded gradients, which oneseekd does not have",
                ['ask for sharding "ddp" on this host'],
            )
        self.model = get_peft_model(base, lora)
        for param in self.model.parameters():
            if param.requires_grad:
                param.data = param.data.float()  # trainable weights in fp32 under autocast
        # the LoRA weights start alike on every rank (seeded above); dropout masks must not
        torch.manual_seed(int(hp["seed"]) + self.world.rank)
        latest = self.checkpoints.latest()
        if latest is not None:  # every rank reads the whole adapter, before any sharding
            self.checkpoints.load_adapter(latest, self.model, self.device.type)
        if self.sharding == "fsdp":
            sharding.shard(self.model)  # in place: the parameters become this rank's shards
            self.net = self.model
        else:
            self.net = self.world.wrap(self.model)  # what the training forward pass calls
        log.info(
            "model_sharding",
            model=self.spec.key,
            sharding=self.sharding,
            weight_bytes=sharding.weight_bytes(base),
            gradient_checkpointing=self.checkpointing,
        )
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(
            str(hp.get("optimizer", "adamw_torch")),
            self.model,
            float(hp["learning_rate"]),
            float(hp.get("weight_decay", 0.0)),
            device=self.device.type,
        )
        self.max_grad_norm = float(hp.get("max_grad_norm", 1.0))
        self.batch_size = int(hp["batch_size"])
        self.accum = int(hp["gradient_accumulation_steps"])
        batches = math.ceil(len(self.train_data.ids) / self.batch_size)
        self.steps_per_epoch = math.ceil(batches / self.accum)
        self.total_steps = self.steps_per_epoch * int(hp["epochs"])
        steps = hp.get("warmup_steps")
        if steps is not None:
            warmup = min(int(steps), self.total_steps)
        else:
            warmup = max(1, round(self.total_steps * float(hp["warmup_ratio"])))
        name = str(hp.get("lr_scheduler", "cosine_with_min_lr"))
        if name == "cosine_with_min_lr":  # oneseekd's own cosine to 10 %, as it always ran
            self.scheduler: Any = torch.optim.lr_scheduler.LambdaLR(
                self.optimizer, lr_lambda(warmup, self.total_steps)
            )
        else:  # transformers' schedule of that name; its state is checkpointed like ours
            self.scheduler = build_scheduler(name, self.optimizer, self.total_steps, warmup)
        self.scaler = torch.amp.GradScaler("cuda") if self.device.scaler else None
        self.position = Position()
        if latest is not None:
            self.position = self.checkpoints.load(
                latest,
                self._load_optimizer,
                self.scheduler,
                self.scaler,
                self.device.type,
                self.world.rank,
                self.world.size,
            )
            log.info(
                "checkpoint_loaded",
                model=self.spec.key,
                path=str(latest),
                epoch=self.position.epoch,
                step=self.position.step,
            )
        self._saved = self._where(self.position) if latest is not None else None

    @property
    def sharded(self) -> bool:
        return self.sharding == "fsdp"

    def _load_optimizer(self, state: dict[str, Any]) -> None:
        if self.sharded:
            sharding.load_optimizer_state(self.model, self.optimizer, state)
        else:
            self.optimizer.load_state_dict(state)

    def _autocast(self) -> Any:
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=self.device.dtype)
        return nullcontext()

    # --- train -------------------------------------------------------------------------------
    def train(self) -> ModelResult:
        pos = self.position
        epochs = int(self.hp["epochs"])
        lengths = self.train_data.lengths()
        pad_id = int(self.tokenizer.pad_token_id)
        self._started = time.monotonic()
        self._before = (pos.step, pos.tokens_seen, pos.seconds)
        padding = padding_fraction(
            lengths, batch_order(lengths, self.batch_size, int(self.hp["seed"]), 0)
        )
        if pos.base_eval is None:  # before the first step; kept in the checkpoints
            pos.base_eval = self.evaluate_base(pad_id)
        self.model.train()
        while pos.epoch < epochs:
            batches = batch_order(lengths, self.batch_size, int(self.hp["seed"]), pos.epoch)
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
            log.info(
                "epoch_finished",
                model=self.spec.key,
                epoch=pos.epoch + 1,
                train_loss=round(pos.train_losses[-1], 5),
                val_loss=round(pos.val_losses[-1], 5),
            )
            if self.world.main:
                self.on_epoch(self.spec.key, list(pos.val_losses))
            pos.epoch += 1
            pos.batch = 0
            pos.loss_sum, pos.loss_tokens = 0.0, 0
            self.save_checkpoint()
            if self.world.any(self.should_stop()) and pos.epoch < epochs:
                raise Stopped
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
            sharding.trainable_state(self.model) if self.sharded else None,
            {"label_tokens": pos.labels_seen, "truncated_records": self.truncated},
            {
                "held_out": self.held.describe(),
                "base": pos.base_eval,
                "epochs": list(pos.evals),
                "step_losses": list(pos.step_losses),
            },
        )

    def _seconds(self) -> float:
        """This model's training time: earlier attempts' (from the checkpoint) and this one's."""
        return self._before[2] + time.monotonic() - self._started

    def _micro_step(self, batches: list[list[int]], pos: Position, pad_id: int) -> bool:
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
        window_labels = sum(counts[i] for batch in window for i in batch)
        boundary = pos.batch + 1 == first + len(window)
        batch = collate(self.train_data, rows, pad_id)
        labels = batch.pop("labels")
        batch = {k: v.to(self.device.type) for k, v in batch.items()}
        # under DDP, gradients are averaged over the ranks at the accumulation boundary only;
        # FSDP reduces each micro-batch's into the shards (unsharded ones would cost memory)
        skip = world.distributed and not boundary and not self.sharded
        sync = self.net.no_sync() if skip else nullcontext()
        with sync:
            with self._autocast():
                summed = loss_sum(self.net(**batch).logits, labels) * weight
            # DDP and FSDP average the ranks' gradients: each rank's counts size times
            scaled = summed * (world.size / max(window_labels, 1))
            (self.scaler.scale(scaled) if self.scaler else scaled).backward()
        self._window_loss = summed.detach() + (self._window_loss if pos.batch > first else 0)
        pos.tokens_seen += sum(len(self.train_data.ids[i]) for i in whole)
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
        if self.max_grad_norm > 0:  # 0: no clipping
            torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
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
        return True

    def _report(self, pos: Position, epochs: int) -> None:
        elapsed = max(time.monotonic() - self._started, 1e-9)
        first_step, first_tokens, _ = self._before
        rate = (pos.tokens_seen - first_tokens) / elapsed
        per_step = elapsed / max(pos.step - first_step, 1)
        remaining = self.total_steps - pos.step
        self.progress.report(
            {
                **self.label,
                "model": self.spec.key,
                "epoch": pos.epoch + 1,
                "epochs": epochs,
                "step": pos.step,
                "steps": self.total_steps,
                "loss": round(pos.loss_sum / max(pos.loss_tokens, 1), 5),
                "tokens_per_s": round(rate, 1),
                "eta_s": round(per_step * remaining, 1),
                "device": self.device.name,
            }
        )

    def evaluate(self, pad_id: int) -> float:
        """Token-weighted mean loss on the held-out rows (trainer/evaluate.py: the validation
        split, the train split if it is empty), over the same labels training uses; every
        figure of it is kept in the position (checkpointed) for certification."""
        figures = self._measure(pad_id)
        self.position.evals.append(figures)
        return float(figures["loss"])

    def evaluate_base(self, pad_id: int) -> dict[str, Any]:
        """The base model's figures on the same rows and batches: the adapter disabled."""
        with self.model.disable_adapter():
            return self._measure(pad_id)

    def _measure(self, pad_id: int) -> dict[str, Any]:
        world, device = self.world, self.device
        with self._autocast():
            return measure(
                self.model, self.held, pad_id, self.batch_size, world, self.sharded, device
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
        ranks = self.world.gather(rng_state()) if self.world.distributed else None
        if self.sharded:
            adapter = sharding.adapter_state(self.model, sharding.trainable_state(self.model))
            optimizer = sharding.optimizer_state(self.model, self.optimizer)
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
