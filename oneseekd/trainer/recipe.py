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
from dataclasses import dataclass
from typing import Any

import structlog
import torch
from peft import LoraConfig, TaskType, get_peft_model, get_peft_model_state_dict

from oneseekd.trainer import sharding
from oneseekd.trainer.checkpoint import Checkpoints, Position, rng_state
from oneseekd.trainer.context import ModelSpec, Progress
from oneseekd.trainer.data import Encoded, batch_order, collate, encode, padding_fraction, render
from oneseekd.trainer.loading import (
    Device,
    ModelRefused,
    check_folder,
    load_model,
    load_tokenizer,
    lora_targets,
)
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


def lr_lambda(warmup: int, total: int) -> Callable[[int], float]:
    """Linear warm-up, then cosine decay to 10% of the peak rate."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(total - warmup, 1)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


class LoraRecipe:
    def __init__(
        self,
        spec: ModelSpec,
        hyper: dict[str, Any],
        records: list[dict[str, Any]],
        split: tuple[list[int], list[int]],
        device: Device,
        checkpoints: Checkpoints,
        progress: Progress,
        should_stop: Callable[[], bool],
        label: dict[str, Any],
        on_epoch: Callable[[str, list[float]], None] = lambda key, losses: None,
        world: World | None = None,
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
        self.world = world or World()

    # --- setup -------------------------------------------------------------------------------
    def setup(self) -> None:
        hp = self.hp
        config = check_folder(self.spec.path)
        self.tokenizer = load_tokenizer(self.spec.path)
        torch.manual_seed(int(hp["seed"]))
        base = load_model(self.spec.path, self.device)
        vocab = int(base.get_input_embeddings().num_embeddings)
        if self.tokenizer.pad_token_id >= vocab:  # a pad token added past the embeddings
            self.tokenizer.pad_token = self.tokenizer.eos_token
        texts = [render(r, self.tokenizer) for r in self.records]
        encoded = encode(texts, self.tokenizer, int(hp["max_seq_len"]))
        largest = max(max(ids) for ids in encoded.ids)
        if largest >= vocab or self.tokenizer.pad_token_id >= vocab:
            raise ModelRefused(
                f"{self.spec.key}: its tokenizer produces token id {largest}, but "
                f"the model has only {vocab} embeddings",
                ["the tokenizer files do not belong to this model"],
            )
        self.train_data = Encoded([encoded.ids[i] for i in self.train_idx])
        self.val_data = Encoded([encoded.ids[i] for i in self.val_idx])
        self.targets = lora_targets(base, config["model_type"], hp["lora"].get("target_modules"))
        lora = LoraConfig(
            r=int(hp["lora"]["r"]),
            lora_alpha=int(hp["lora"]["alpha"]),
            lora_dropout=float(hp["lora"]["dropout"]),
            target_modules=self.targets,
            task_type=TaskType.CAUSAL_LM,
        )
        if hp.get("gradient_checkpointing"):
            # DDP cannot follow reentrant checkpointing's second backward pass
            base.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
                if self.world.distributed
                else None
            )
            base.enable_input_require_grads()
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
        )
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.params, lr=float(hp["learning_rate"]), weight_decay=0.0
        )
        self.batch_size = int(hp["batch_size"])
        self.accum = int(hp["gradient_accumulation_steps"])
        batches = math.ceil(len(self.train_data.ids) / self.batch_size)
        self.steps_per_epoch = math.ceil(batches / self.accum)
        self.total_steps = self.steps_per_epoch * int(hp["epochs"])
        warmup = max(1, round(self.total_steps * float(hp["warmup_ratio"])))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(warmup, self.total_steps)
        )
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
        started = time.monotonic()
        self._start = (pos.step, pos.tokens_seen)
        padding = padding_fraction(
            lengths, batch_order(lengths, self.batch_size, int(self.hp["seed"]), 0)
        )
        self.model.train()
        while pos.epoch < epochs:
            batches = batch_order(lengths, self.batch_size, int(self.hp["seed"]), pos.epoch)
            while pos.batch < len(batches):
                boundary = self._micro_step(batches, pos, pad_id)
                if not boundary:
                    continue
                if self.world.main:
                    self._report(pos, started, epochs)
                if pos.step % int(self.hp["checkpoint_every"]) == 0:
                    self.save_checkpoint()
                if self.world.any(self.should_stop()):
                    self.save_checkpoint()
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
            time.monotonic() - started,
            padding,
            self.targets,
            self.model,
            self.tokenizer,
            sharding.trainable_state(self.model) if self.sharded else None,
        )

    def _micro_step(self, batches: list[list[int]], pos: Position, pad_id: int) -> bool:
        """One micro-batch; True when it completed an optimizer step."""
        whole = batches[pos.batch]
        rows, weight = self.world.shard(whole)
        batch = collate(self.train_data, rows, pad_id)
        batch = {k: v.to(self.device.type) for k, v in batch.items()}
        boundary = (pos.batch + 1) % self.accum == 0 or pos.batch + 1 == len(batches)
        world = self.world
        # under DDP, gradients are averaged over the ranks at the accumulation boundary only;
        # FSDP reduces each micro-batch's into the shards (unsharded ones would cost memory)
        skip = world.distributed and not boundary and not self.sharded
        sync = self.net.no_sync() if skip else nullcontext()
        tokens = int((batch["labels"][:, 1:] != -100).sum())
        share = 1.0
        if world.distributed:  # the loss is a mean over this rank's tokens: reweigh it
            lengths = self.train_data.lengths()
            total = sum(max(lengths[i] - 1, 0) for i in whole)
            share = weight * tokens * world.size / max(total, 1)
        with sync:
            with self._autocast():
                loss = self.net(**batch).loss
            scaled = loss * share / self.accum if world.distributed else loss / self.accum
            (self.scaler.scale(scaled) if self.scaler else scaled).backward()
        loss_sum, loss_tokens, seen = world.sum(
            [
                float(loss.detach()) * tokens * weight,
                tokens * weight,
                int(batch["attention_mask"].sum()) * weight,
            ]
        )
        pos.loss_sum += loss_sum
        pos.loss_tokens += int(loss_tokens)
        pos.tokens_seen += int(seen)
        pos.batch += 1
        if not boundary:
            return False
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        pos.step += 1
        return True

    def _report(self, pos: Position, started: float, epochs: int) -> None:
        elapsed = max(time.monotonic() - started, 1e-9)
        first_step, first_tokens = self._start
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

    @torch.no_grad()
    def evaluate(self, pad_id: int) -> float:
        """Token-weighted mean loss on the validation split (the train split if it is empty)."""
        data = self.val_data if self.val_data.ids else self.train_data
        self.model.eval()
        total, count = 0.0, 0
        order = sorted(range(len(data.ids)), key=lambda i: len(data.ids[i]))
        starts = list(range(0, len(order), self.batch_size))
        mine: list[int | None] = list(starts[self.world.rank :: self.world.size])
        if self.sharded:  # every forward pass gathers weights: all ranks run as many
            rounds = math.ceil(len(starts) / self.world.size)
            mine += [None] * (rounds - len(mine))
        for start in mine:  # each rank its batches; None: the first one again, not counted
            first = starts[0] if start is None else start
            batch = collate(data, order[first : first + self.batch_size], pad_id)
            batch = {k: v.to(self.device.type) for k, v in batch.items()}
            with self._autocast():
                loss = self.model(**batch).loss
            tokens = int((batch["labels"][:, 1:] != -100).sum()) if start is not None else 0
            total += float(loss) * tokens
            count += tokens
        self.model.train()
        total, summed = self.world.sum([total, float(count)])
        return total / max(summed, 1)

    def save_checkpoint(self) -> None:
        """Written by rank 0, with every rank's RNG state; the others wait until it is in
        place. Under DDP the weights and optimizer are the same on every rank; sharded, every
        rank first helps gather them whole onto rank 0."""
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
        self.world.barrier()
