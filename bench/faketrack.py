"""The memory plan's 7-8B shapes against a traced training step: fake tensors, no memory.

Each model is built on the meta device as the trainer holds it on a GPU (a bf16 base, the lean
SwiGLU MLPs, gradient checkpointing when asked, LoRA with the request's defaults on the
family's default targets, the LoRA weights in fp32), its parameters and buffers then replaced
by fake tensors (torch's FakeTensorMode: shapes, dtypes and a device, no storage). One
training step runs as the recipe runs it (trainer/recipe.py `_micro_step`: the chunked loss's
forward under bf16 autocast, backward, gradient clipping, AdamW's step, zero_grad), then the
held-out evaluation's forward (trainer/evaluate.py `measure`: no gradient, chunked scores),
under torch's MemTracker (torch.distributed._tools.mem_tracker), which follows every storage
an op makes until it is freed. Its peak is printed beside what spec/plan.py predicts for the
same config (the weights counted from config.json, as bench/memplan.py's table counts them).

What it is, and is not:
- The device is the CPU. torch here is a CPU build, and a fake CUDA tensor fails the first
  index op ("PyTorch is not linked with support for cuda devices"), so the kernels picked are
  the CPU's (its SDPA path with a padding mask, CPU autocast's op lists); the CUDA
  allocator's rounding, fragmentation and context are not in it.
- MemTracker refuses a module with frozen parameters (it hooks every parameter's gradient,
  and torch cannot hook a tensor that needs none); the frozen base's parameters are handed
  a no-op hook handle first, so it tracks them without one.
- The chunked loss reads on the CPU which chunks hold a label (loss.labelled_chunks: a
  `.tolist()`), which a fake tensor cannot answer; the bench answers it from a real copy of
  the batch's labels, the same list the trainer would compute.
- The step traced is the second one (the first makes AdamW's state), as every step but the
  first holds.
- Layers: with --layers N (4 or more) the peaks are traced at N and N/2 decoder layers and
  extrapolated to the full depth: from two layers on, every term of a peak grows linearly
  with the layers (the weights, the kept activations) or not at all. One layer is not on
  that line: its evaluation peaks 32 MiB lower at Llama-3.1-8B's 8 x 512 than the line
  through 2, 3 and 4 layers says. --layers 4 gives the full depth's bytes exactly for the
  three models here, in about a minute instead of about thirteen (2 shared cores).

Run: .venv/bin/python bench/faketrack.py [--models Llama-3.1-8B] [--seqs 512 2048]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from peft import LoraConfig, TaskType, get_peft_model
from torch._subclasses.fake_tensor import FakeTensorMode, unset_fake_temporarily
from torch.distributed._tools.mem_tracker import MemTracker
from transformers import AutoConfig, AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from bigmodels import MODELS

from oneseekd.spec.memory import Held
from oneseekd.spec.plan import Plan, plan
from oneseekd.spec.request import LoraOptions
from oneseekd.trainer import loss, swiglu
from oneseekd.trainer.data import IGNORE_INDEX
from oneseekd.trainer.evaluate import scorer
from oneseekd.trainer.loading import lora_targets
from oneseekd.trainer.loss import ChunkedCausalLM
from oneseekd.trainer.optim import build_optimizer

DEVICE = "cpu"
HELD: Held = "16-bit"  # a bf16 base under bf16 autocast: how a GPU holds it
BATCH = 8
SEQS = (512, 2048)
MIN_LAYERS = 4  # --layers: the fewest traced (with half as many), so that neither has one
GIB = 2**30


class _NoHook:
    """A hook handle with nothing to remove: what MemTracker is handed for a frozen
    parameter, which no gradient hook can be registered on."""

    def remove(self) -> None:
        pass


def tracker(model: torch.nn.Module, *external: Any) -> MemTracker:
    """A MemTracker that counts `model`'s parameters and buffers (and `external`: the
    optimizer) from the start, frozen parameters included."""
    mt = MemTracker()
    mt.track_external(model, *external)
    for param in model.parameters():
        if not param.requires_grad:
            mt._param_to_grad_hook_handles[param] = (_NoHook(), _NoHook())
    return mt


def _faked(model: torch.nn.Module, mode: FakeTensorMode) -> None:
    """Every parameter and buffer of the (meta) `model` replaced by a fake one on DEVICE of
    the same shape, dtype and trainability; a tensor two modules share stays shared."""
    made: dict[int, torch.Tensor] = {}

    def fake(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in made:
            with mode:
                made[id(t)] = torch.empty_like(t, device=DEVICE)
        return made[id(t)]

    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is not None:
                module._parameters[name] = torch.nn.Parameter(
                    fake(param), requires_grad=param.requires_grad
                )
        for name, buffer in list(module._buffers.items()):
            if buffer is not None:
                module._buffers[name] = fake(buffer)


def build(config: dict[str, Any], checkpointing: bool, mode: FakeTensorMode | None) -> Any:
    """The PEFT model as trainer/setup.py builds it for a 16-bit base on a GPU, in fake
    tensors on DEVICE (real ones without a fake `mode`: tests compare the two)."""
    fields = {k: v for k, v in config.items() if k != "model_type"}
    hf_config = AutoConfig.for_model(config["model_type"], **fields)
    with torch.device("meta" if mode is not None else DEVICE):
        base = AutoModelForCausalLM.from_config(hf_config, dtype=torch.bfloat16)
    if checkpointing:
        base.activation_checkpointing_enable()
    swiglu.lean_mlps(base)
    options = LoraOptions()
    lora = LoraConfig(
        r=options.r,
        lora_alpha=options.alpha,
        lora_dropout=options.dropout,
        target_modules=lora_targets(base, config["model_type"], None),
        task_type=TaskType.CAUSAL_LM,
    )
    model = get_peft_model(base, lora)
    for param in model.parameters():
        if param.requires_grad:
            param.data = param.data.float()  # trainable weights in fp32 under autocast
    if mode is not None:
        _faked(model, mode)
    model.train()
    return model


@dataclass(frozen=True)
class Batch:
    """A padded batch (the last row a quarter padding, as the trainer's batches are padded),
    its inputs fake, its labels real too (for the chunks' CPU-side question)."""

    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor  # fake
    real_labels: torch.Tensor

    @classmethod
    def make(cls, vocab: int, batch: int, seq: int, mode: FakeTensorMode | None) -> Batch:
        ids = torch.randint(3, vocab, (batch, seq), generator=torch.Generator().manual_seed(0))
        mask = torch.ones_like(ids)
        if batch > 1:
            mask[-1, seq * 3 // 4 :] = 0
        real = ids.masked_fill(mask == 0, IGNORE_INDEX)
        if mode is None:
            return cls({"input_ids": ids, "attention_mask": mask}, real, real)
        inputs = {"input_ids": mode.from_tensor(ids), "attention_mask": mode.from_tensor(mask)}
        return cls(inputs, mode.from_tensor(real), real)

    @contextmanager
    def chunks_answered(self) -> Iterator[None]:
        """loss.labelled_chunks answered from the real labels (a fake tensor has no values
        for its `.tolist()`): the chunks the trainer would run for this batch."""
        original = loss.labelled_chunks

        def answered(targets: torch.Tensor, step: int) -> list[int]:
            with unset_fake_temporarily():
                return original(loss._targets(self.real_labels), step)

        with mock.patch.object(loss, "labelled_chunks", answered):
            yield

    @property
    def label_count(self) -> int:
        with unset_fake_temporarily():
            return int((loss._targets(self.real_labels) != IGNORE_INDEX).sum())


def autocast() -> Any:
    return torch.autocast(DEVICE, dtype=torch.bfloat16)


def train_step(model: Any, optimizer: torch.optim.Optimizer, batch: Batch) -> None:
    """One optimizer step of one micro-batch, as LoraRecipe._micro_step takes it (chunked
    loss, one process, max_grad_norm 1.0)."""
    net = ChunkedCausalLM(model)
    with batch.chunks_answered():
        with autocast():
            summed = net(labels=batch.labels, **batch.inputs).loss_sum * 1.0
        scaled = summed * (1 / max(batch.label_count, 1))
        scaled.backward()
    params = [p for p in model.parameters() if p.requires_grad]
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def evaluation(model: Any, batch: Batch) -> None:
    """The held-out evaluation's forward of one batch, as evaluate.measure takes it (the
    chunked scores, no gradient, the model in eval mode); its figures are not read."""
    model.eval()
    try:
        with batch.chunks_answered(), torch.no_grad(), autocast():
            scorer(model, False)(**batch.inputs, labels=batch.labels, scores=True)
    finally:
        model.train()


def peak(run: Callable[[], None], model: Any, *external: Any) -> int:
    """MemTracker's peak of everything `run` holds, with `model` and `external`. Its module
    tracker warns that a module is entered again while it runs (the chunked loss calls the
    decoder and the head itself, not through the model's forward): that moves only which
    module a snapshot is put down to, not the peak, which is the same to the byte as
    tests/peakmem.py's on real tensors (tests/test_faketrack.py)."""
    mt = tracker(model, *external)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The module hierarchy tracking maybe be messed up")
        with mt:
            run()
    return int(mt.get_tracker_snapshot("peak")[torch.device(DEVICE)]["Total"])


@dataclass(frozen=True)
class Measured:
    step_off: int
    step_on: int
    evaluation: int


def measure(config: dict[str, Any], batch: int, seq: int, fake: bool = True) -> Measured:
    """The tracked peaks of a step without and with checkpointing, and of the evaluation:
    in fake tensors, or (`fake` False, for small configs) in real ones."""
    found = {}
    for checkpointing in (False, True):
        mode = FakeTensorMode(allow_non_fake_inputs=True) if fake else None
        model = build(config, checkpointing, mode)
        optimizer = build_optimizer("adamw_torch", model, 1e-4, device=DEVICE)
        data = Batch.make(int(config["vocab_size"]), batch, seq, mode)
        with mode or nullcontext():
            train_step(model, optimizer, data)  # AdamW's state, which every later step holds
            step = partial(train_step, model, optimizer, data)
            found[checkpointing] = peak(step, model, optimizer)
            if checkpointing:  # the evaluation does not checkpoint
                continue
            found[None] = peak(partial(evaluation, model, data), model, optimizer)
    return Measured(found[False], found[True], found[None])


def with_layers(config: dict[str, Any], layers: int) -> dict[str, Any]:
    return {**config, "num_hidden_layers": layers}


def measure_deep(config: dict[str, Any], batch: int, seq: int, layers: int | None) -> Measured:
    """measure() at the config's depth, or at `layers` and `layers` / 2 (at least 2: see the
    module's docstring) and extrapolated linearly to the config's depth."""
    full = int(config["num_hidden_layers"])
    if layers is None or layers >= full:
        return measure(config, batch, seq)
    if layers < MIN_LAYERS:
        raise ValueError(
            f"--layers {layers}: a one-layer trace is not on the line the deeper ones are; "
            f"trace at least {MIN_LAYERS} layers"
        )
    half = layers // 2
    a = measure(with_layers(config, half), batch, seq)
    b = measure(with_layers(config, layers), batch, seq)

    def at(x: int, y: int) -> int:
        return round(x + (y - x) * (full - half) / (layers - half))

    return Measured(
        at(a.step_off, b.step_off), at(a.step_on, b.step_on), at(a.evaluation, b.evaluation)
    )


def predicted(config: dict[str, Any], batch: int, seq: int) -> Plan:
    """spec/plan.py's numbers for this config (its weights from config.json)."""
    return plan(config, batch, seq, HELD, 2**60)


def rows(
    name: str, config: dict[str, Any], batch: int, seq: int, layers: int | None
) -> list[tuple[str, str, int, int]]:
    """(model and shape, phase, predicted, measured) of one shape."""
    m = measure_deep(config, batch, seq, layers)
    p = predicted(config, batch, seq)
    where = f"{name} | {batch} x {seq}"
    return [
        (where, "step, ckpt off", p.step_off, m.step_off),
        (where, "step, ckpt on", p.step_on, m.step_on),
        (where, "evaluation", p.evaluation, m.evaluation),
    ]


def table(found: list[tuple[str, str, int, int]]) -> str:
    lines = [
        "| model | tokens | phase | predicted | MemTracker | predicted / measured |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for where, phase, want, got in found:
        lines.append(
            f"| {where} | {phase} | {want / GIB:.2f} GiB | {got / GIB:.2f} GiB | {want / got:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["Llama-3.1-8B"], choices=list(MODELS))
    parser.add_argument("--seqs", nargs="+", type=int, default=list(SEQS))
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument(
        "--layers", type=int, help="trace this many layers (and half) and extrapolate"
    )
    args = parser.parse_args()
    if args.layers is not None and args.layers < MIN_LAYERS:
        parser.error(f"--layers must be at least {MIN_LAYERS}")
    found = []
    for name in args.models:
        for seq in args.seqs:
            started = time.monotonic()
            found += rows(name, MODELS[name], args.batch, seq, args.layers)
            took = time.monotonic() - started
            print(f"{name} {args.batch} x {seq}: traced in {took:.0f} s", file=sys.stderr)
    print(table(found))


if __name__ == "__main__":
    main()
