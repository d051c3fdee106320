"""The LoRA recipe's setup, step by step (LoraRecipe inherits it): precision, the base model
(quantized for QLoRA, checkpointed, checked for packing), the data, LoRA, the parallel
wrappers (chunked loss, DDP or FSDP, compile), the optimizer and schedule, and the state of
a checkpoint to resume from. Each step reads what the ones before it set; `cleanup` lets go
of all of it."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
import torch
from peft import LoraConfig, TaskType, get_peft_model

from oneseekd.spec.fields import memory_bytes
from oneseekd.spec.memory import Held
from oneseekd.trainer import hostprobe, packing, precision, quant, sharding, swiglu, tokcache
from oneseekd.trainer.autostop import AutoStop
from oneseekd.trainer.batching import Batch, epoch_batches, order_digest
from oneseekd.trainer.checkpoint import Checkpoints, Position
from oneseekd.trainer.context import ModelSpec
from oneseekd.trainer.data import Encoded, Records
from oneseekd.trainer.evaluate import HeldOut, autocast, held_out
from oneseekd.trainer.labels import Encoder, encode_records
from oneseekd.trainer.loading import (
    Device,
    ModelRefused,
    check_folder,
    device_memory,
    load_model,
    load_tokenizer,
    lora_targets,
    memory_cap,
)
from oneseekd.trainer.loss import ChunkedCausalLM
from oneseekd.trainer.optim import (
    OptimizerRefused,
    build_optimizer,
    build_scheduler,
    keep_paging,
)
from oneseekd.trainer.passes import plan_passes
from oneseekd.trainer.schedule import lr_lambda
from oneseekd.trainer.tokcache import TokenCache
from oneseekd.trainer.tokenizer import MEMO as TOKENIZER_MEMO
from oneseekd.trainer.world import World

log = structlog.get_logger("oneseekd.trainer")
# the most a record's logits may move when the record packed before it changes
# (packing.isolation_error, in units of the logits' rounding): isolated records move by
# exactly 0, a leak by about 80 units in bf16 on the tests' tiny model and far more in fp32
PACKING_TOLERANCE = 8.0


class RecipeSetup:
    """What LoraRecipe.__init__ sets, and the steps that build the rest."""

    spec: ModelSpec
    hp: dict[str, Any]
    records: Records
    train_idx: list[int]
    val_idx: list[int]
    device: Device
    checkpoints: Checkpoints
    world: World
    cache: Path | None
    tokens: TokenCache | None
    dataset_sha256: str
    dataset: str
    train_data: Encoded
    val_data: Encoded
    held: HeldOut  # the held-out rows every evaluation measures (trainer/evaluate.py)
    position: Position
    _saved: tuple[int, int, int] | None
    _where: Callable[[Position], tuple[int, int, int]]

    # --- setup -------------------------------------------------------------------------------
    def _encode(self, vocab: int) -> None:
        hp = self.hp
        encoder = Encoder(
            self.tokenizer,
            int(hp["max_seq_len"]),
            bool(hp.get("train_on_prompt", False)),
            str(hp.get("truncation_side", "right")),
        )
        encoded, self.truncated = self._encoded(encoder)
        largest = encoded.largest_id()
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
        self.held = held_out(self.val_data, self.train_data, limit)

    def _encoded(self, encoder: Encoder) -> tuple[Encoded, int]:
        """The dataset's rows for this tokenizer and options, from the tokenization cache
        when an earlier run, attempt or launch encoded them (trainer/tokcache.py); the rows
        are the same either way, so the split, the batch order and the DNA are too. Every
        rank reads; rank 0 alone writes."""
        hp = self.hp
        options = {
            "max_seq_len": int(hp["max_seq_len"]),
            "truncation_side": str(hp.get("truncation_side", "right")),
            "train_on_prompt": bool(hp.get("train_on_prompt", False)),
        }
        encoded, truncated, cached = tokcache.cached_or_encoded(
            self.tokens,
            self.dataset_sha256,
            self.spec.path,
            options,
            lambda: encode_records(encoder, self.records, self.dataset, self.spec.key),
            write=self.world.main,
        )
        log.info("dataset_tokenized", model=self.spec.key, cached=cached, rows=len(encoded.ids))
        return encoded, truncated

    def setup(self) -> None:
        """Everything the loop needs, in order; on failure what was built is released."""
        try:
            self._setup_precision()
            base = self._setup_base()
            self._setup_data(base)
            self._setup_lora(base)
            self._setup_parallel()
            self._setup_optimizer()
            self._setup_resume()
        except BaseException:
            self.cleanup()
            raise

    def _setup_precision(self) -> None:
        """The precision option decided for this device; the device value says it."""
        try:
            self.precision = precision.decide(
                self.hp.get("precision", "auto"), precision.probe(self.device.type)
            )
        except precision.PrecisionRefused as exc:
            raise ModelRefused(f"{self.spec.key}: {exc}") from exc
        if self.device.type == "cpu" and self.cache is not None:  # for the next dry run
            hostprobe.remembered_cpu_bf16(self.cache / hostprobe.MEMO)
        self.device = Device(self.device.type, self.precision.dtype, self.precision.scaler)
        self.quantization = quant.quantization(
            bool(self.hp.get("load_in_4bit", False)),
            bool(self.hp.get("load_in_8bit", False)),
            str(self.hp.get("quantization_type", "nf4")),
            str(self.hp.get("compute_dtype", "auto")),
            bool(self.hp.get("double_quantization", True)),
            self.precision.autocast,
        )

    def _setup_base(self) -> Any:
        """The tokenizer and the frozen base: in the precision's weight dtype, or quantized
        (QLoRA); activation checkpointing on when asked or when a step without it would not
        fit the GPU (spec/memory.py)."""
        hp = self.hp
        self.config = check_folder(self.spec.path)
        memo = None if self.cache is None else self.cache / TOKENIZER_MEMO
        self.tokenizer = load_tokenizer(
            self.spec.path, bool(hp.get("use_fast_tokenizer", True)), memo
        )
        torch.manual_seed(int(hp["seed"]))
        memory = device_memory(self.device, self.world.local_rank)
        cap = hp.get("max_memory_per_gpu")
        if cap and memory is not None:  # the GPU's memory this process may take
            memory = memory_cap(memory_bytes(str(cap)), memory, self.world.local_rank)
        q = self.quantization
        if q is not None:
            try:
                base = quant.load_quantized(
                    self.spec.path, q, self.device.type, self.world.local_rank
                )
            except quant.QuantizationRefused as exc:
                raise ModelRefused(f"{self.spec.key}: {exc}") from exc
        else:
            weights = Device(self.device.type, self.precision.weights, self.device.scaler)
            base = load_model(self.spec.path, weights)
        passes = plan_passes(
            hp,
            self.spec.key,
            self.device.type,
            self.world.size,
            sharding.weight_bytes(base),
            self.config,
            self._held(),
            memory,
        )
        self.checkpointing, self.micro = passes.checkpointing, passes.micro
        if q is not None:
            # unquantized parts in fp32, inputs carrying a gradient, non-reentrant checkpoints
            base = quant.prepare(base, self.checkpointing, q.held_dtype)
        elif self.checkpointing:
            # non-reentrant (the default), which DDP and FSDP can follow; it also makes the
            # embeddings' output require grad, so frozen layers pass gradients to LoRA
            base.activation_checkpointing_enable()
        swiglu.lean_mlps(base)  # the gated MLPs keep two tensors for backward, not three
        self.packed = bool(hp.get("packing", False))
        if self.packed:
            leak = packing.isolation_error(base, int(base.config.vocab_size), self.device.type)
            if leak > PACKING_TOLERANCE:
                raise ModelRefused(
                    f"{self.spec.key}: packed records see each other in this "
                    f"{self.config['model_type']} model: changing one record's tokens moved the "
                    f"logits of the record packed after it by {leak:.3g} times their rounding",
                    ["set packing: false for this model (per_model)"],
                )
        return base

    def _held(self) -> Held:
        """How the base is held, as the memory estimate tells its activations apart."""
        if self.quantization is not None:
            return "quantized"
        if self.precision.weights in (torch.bfloat16, torch.float16):
            return "16-bit"
        return "fp32"

    def _setup_data(self, base: Any) -> None:
        vocab = int(base.get_input_embeddings().num_embeddings)
        if self.tokenizer.pad_token_id >= vocab:  # a pad token added past the embeddings
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self._encode(vocab)

    def _setup_lora(self, base: Any) -> None:
        hp = self.hp
        self.targets = lora_targets(
            base, self.config["model_type"], hp["lora"].get("target_modules")
        )
        lora = LoraConfig(
            r=int(hp["lora"]["r"]),
            lora_alpha=int(hp["lora"]["alpha"]),
            lora_dropout=float(hp["lora"]["dropout"]),
            use_rslora=bool(hp["lora"].get("use_rslora", False)),  # alpha / sqrt(r)
            target_modules=self.targets,
            task_type=TaskType.CAUSAL_LM,
        )
        self.sharding = sharding.decide(str(hp.get("sharding", "ddp")), base, self.world)
        if self.sharding == "fsdp" and self.device.scaler:
            raise ModelRefused(
                f'{self.spec.key}: sharding "fsdp" on a GPU without bf16 needs a gradient '
                "scaler that works on sharded gradients, which oneseekd does not have",
                ['ask for sharding "ddp" on this host'],
            )
        self.weight_bytes = sharding.weight_bytes(base)
        self.model = get_peft_model(base, lora)
        for param in self.model.parameters():
            if param.requires_grad:
                param.data = param.data.float()  # trainable weights in fp32 under autocast
        # the LoRA weights start alike on every rank (seeded above); dropout masks must not
        torch.manual_seed(int(hp["seed"]) + self.world.rank)
        self.latest = self.checkpoints.latest()
        if self.latest is not None:  # every rank reads the whole adapter, before any sharding
            self.checkpoints.load_adapter(self.latest, self.model, self.device.type)

    def _setup_parallel(self) -> None:
        """What the forward pass calls: the model (or its chunked-loss wrapper), sharded or
        under DDP, compiled when asked."""
        hp = self.hp
        self.chunked = bool(hp.get("chunked_loss", True))
        # the chunked wrapper is the root everything runs through (DDP's forward, FSDP's root)
        self.inner: Any = ChunkedCausalLM(self.model) if self.chunked else self.model
        self.net: Any
        if self.sharding == "fsdp":
            sharding.shard(self.inner)  # in place: the parameters become this rank's shards
            self.net = self.inner
        else:
            self.net = self.world.wrap(self.inner)  # what the training forward pass calls
        if bool(hp.get("torch_compile", False)):
            self.net = torch.compile(self.net)
        log.info(
            "model_sharding",
            model=self.spec.key,
            sharding=self.sharding,
            weight_bytes=self.weight_bytes,
            gradient_checkpointing=self.checkpointing,
            precision=self.precision.name,
            quantization=self.quantization.describe() if self.quantization else None,
            packing=self.packed,
            chunked_loss=self.chunked,
        )

    def _setup_optimizer(self) -> None:
        hp = self.hp
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        try:
            self.optimizer = build_optimizer(
                str(hp.get("optimizer", "adamw_torch")),
                self.model,
                float(hp["learning_rate"]),
                float(hp.get("weight_decay", 0.0)),
                device=self.device.type,
            )
        except OptimizerRefused as exc:
            raise ModelRefused(f"{self.spec.key}: {exc}") from exc
        self.max_grad_norm = float(hp.get("max_grad_norm", 1.0))
        self.batch_size = int(hp["batch_size"])
        self.accum = int(hp["gradient_accumulation_steps"])
        self.max_len = int(hp["max_seq_len"])
        lengths = self.train_data.lengths()
        # every epoch of a packed run has about as many rows: the first one's sizes the schedule
        rows = len(self._batches(0)) if self.packed else math.ceil(len(lengths) / self.batch_size)
        self.steps_per_epoch = math.ceil(rows / self.accum)
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
        stop = hp.get("auto_stop")
        self.auto_stop = (
            AutoStop(float(stop["threshold"]), int(stop["patience"]), int(stop["min_epochs"]))
            if stop
            else None
        )

    def _setup_resume(self) -> None:
        self.position = Position()
        latest = self.latest
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
            pos = self.position
            if self.auto_stop is not None and pos.auto_stop is not None:
                self.auto_stop.load_state_dict(pos.auto_stop)
            if pos.order and pos.order != order_digest(self._batches(pos.epoch)):
                raise ModelRefused(
                    f"{self.spec.key}: its checkpoint {latest.name} was written over another "
                    "order of batches than this oneseekd makes of the same data and options",
                    ["cancel the run and submit it again, to train it from the start"],
                )
            log.info(
                "checkpoint_loaded",
                model=self.spec.key,
                path=str(latest),
                epoch=pos.epoch,
                step=pos.step,
            )
        self._saved = self._where(self.position) if latest is not None else None

    def cleanup(self) -> None:
        """Let go of the model, its wrappers and the optimizer (a failed setup, or a model
        done), so the next model of the run has the memory."""
        for name in ("net", "inner", "model", "optimizer", "scheduler", "scaler", "params"):
            if hasattr(self, name):
                delattr(self, name)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    @property
    def sharded(self) -> bool:
        return self.sharding == "fsdp"

    def _load_optimizer(self, state: dict[str, Any]) -> None:
        if self.sharded:
            sharding.load_optimizer_state(self.inner, self.optimizer, state)
        else:
            self.optimizer.load_state_dict(state)
            keep_paging(self.optimizer)  # bitsandbytes loads paged state unpaged

    def _autocast(self) -> Any:
        return autocast(self.device)  # the device's dtype is the precision's autocast one

    def _batches(self, epoch: int) -> list[Batch]:
        return epoch_batches(
            self.train_data.lengths(),
            self.batch_size,
            int(self.hp["seed"]),
            epoch,
            self.packed,
            self.max_len,
        )
