"""Memory and speed of the issue-16 building blocks on SmolLM2-135M (LoRA r 8 on q_proj,
v_proj), each configuration in a fresh child process so that its peak RSS is its own.

- full: today's loss, the whole logits tensor (batch x seq x 49k) and its cross-entropy.
- chunked: oneseekd.trainer.loss.ChunkedCausalLM (the head in checkpointed chunks).
- chunked+ckpt: the same with gradient (activation) checkpointing of the decoder layers.
- 4bit: the base in 4-bit NF4 with double quantization (oneseekd.trainer.quant), chunked.
- packed / grouped: records of 40 to 512 tokens, packed into rows of 512
  (oneseekd.trainer.packing) against length-grouped padded batches of the same records:
  real tokens per second.

Each child runs --steps optimizer steps (AdamW, fp32 on the CPU) on the same token ids and
prints its peak RSS (ru_maxrss), the mean loss and the real tokens/s of its steps after the
first. The machine is shared: tokens/s are rough, memory is not.

The trainer:* configurations run the trainer itself (LoraRecipe, setup then one epoch of
train(), in a child of its own) on the same ids, with the option under test and fp32
elsewhere: its peak RSS, the base's weight memory, the loss and the real tokens/s of the
epoch's steps (evaluation and the epoch-end checkpoint excluded):

- trainer:today (the trainer before issue 16's memory work: the whole logits, the gated MLPs
  run op by op, glibc's malloc left to its rising mmap threshold), trainer:full
  (chunked_loss false, with the rest of today's trainer), trainer:chunked (the default),
  trainer:chunked+ckpt (gradient_checkpointing true), trainer:4bit (load_in_4bit, NF4 + double
  quantization; fp32 compute here) and trainer:4bit-bf16 (the same computing in bf16, as
  "auto" does on a GPU: the frozen embeddings held in bf16 too), on equal-length rows of
  --seq tokens;
- trainer:auto (precision "auto", the default) and trainer:bf16 (bf16 autocast forced)
  against trainer:chunked (fp32) on the same rows;
- trainer:grouped and trainer:packed on records of 40 to --seq tokens (length-grouped
  batches against packing), and hf:group_by_length: transformers' Trainer with
  train_sampling_strategy "group_by_length" (its LengthGroupedSampler), the fair peer, on the
  same records with the same LoRA, optimizer and batch size.

Run: .venv/bin/python bench/options.py [--batch 8] [--seq 512] [--steps 2] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

CACHE = Path("/tmp/oneseekd-bench")
BLOCKS = ("full", "chunked", "chunked+ckpt", "4bit", "grouped", "packed")
TRAINER = {
    "trainer:today": {"chunked_loss": False},
    "trainer:full": {"chunked_loss": False},
    "trainer:chunked": {},
    "trainer:chunked+ckpt": {"gradient_checkpointing": True},
    "trainer:4bit": {"load_in_4bit": True},
    "trainer:4bit-bf16": {"load_in_4bit": True, "compute_dtype": "bfloat16"},
    "trainer:auto": {"precision": "auto"},
    "trainer:bf16": {"precision": "bf16"},
    "trainer:grouped": {"packing": False},
    "trainer:packed": {"packing": True},
}
VARIABLE = ("trainer:grouped", "trainer:packed", "hf:group_by_length")
CONFIGS = (*BLOCKS, *TRAINER, "hf:group_by_length")


def token_ids(name: str, batch: int, seq: int, steps: int, vocab: int) -> list[list[int]]:
    """Equal rows of `seq` tokens, or (VARIABLE) records of 40 to `seq` tokens: the same ids
    for every configuration that uses them."""
    import torch

    g = torch.Generator().manual_seed(1)
    if name in VARIABLE:
        lengths = torch.randint(40, seq + 1, (batch * steps * 2,), generator=g).tolist()
    else:
        lengths = [seq] * (batch * steps)
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lengths]


def weight_bytes(model: object) -> int:
    """The model's weights: every parameter's bytes, a quantized layer's packed weights with
    their block scales (quant.quantized_bytes)."""
    import torch

    from oneseekd.trainer import quant

    assert isinstance(model, torch.nn.Module)
    try:
        from bitsandbytes.nn.modules import Linear4bit, Linear8bitLt

        packed = {id(m.weight) for m in model.modules() if isinstance(m, Linear4bit | Linear8bitLt)}
    except ImportError:
        packed = set()
    plain = sum(p.numel() * p.element_size() for p in model.parameters() if id(p) not in packed)
    return plain + (quant.quantized_bytes(model)[0] if packed else 0)


def trainer_child(name: str, batch: int, seq: int, steps: int) -> dict[str, float]:
    """One epoch of the trainer (LoraRecipe) with the configuration's options."""
    from oneseekd.trainer import heap, swiglu

    if name == "trainer:today":  # the trainer as it was before issue 16's memory work
        swiglu.lean_mlps = lambda model: 0
    else:  # what the trainer child (python -m oneseekd.trainer) does first
        heap.fix_mmap_threshold()

    import tempfile
    from types import SimpleNamespace

    import torch
    from transformers import AutoConfig

    from oneseekd.trainer import embedded
    from oneseekd.trainer import setup as recipe_setup
    from oneseekd.trainer.checkpoint import Checkpoints
    from oneseekd.trainer.context import ModelSpec
    from oneseekd.trainer.data import Encoded, Records
    from oneseekd.trainer.loading import Device
    from oneseekd.trainer.recipe import LoraRecipe, Placement, Reporting, Task

    folder = embedded.install(CACHE)
    vocab = int(AutoConfig.from_pretrained(folder).vocab_size)
    ids = [*token_ids(name, batch, seq, steps, vocab), list(range(3, 19))]  # + 1 validation
    # the trainer's own encoding would tokenize text; the bench hands it the ids directly
    recipe_setup.encode_records = lambda *a: (Encoded(ids, None), 0)  # type: ignore[attr-defined]
    hyper = {
        "epochs": 1,
        "batch_size": batch,
        "learning_rate": 1e-4,
        "seed": 0,
        "max_seq_len": seq,
        "gradient_accumulation_steps": 1,
        "warmup_ratio": 0.0,
        "checkpoint_every": 10**6,
        "precision": "fp32",
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
        **TRAINER[name],
    }
    marks: list[tuple[float, int]] = []
    recipe: LoraRecipe | None = None

    def report(data: dict[str, object], **_: object) -> None:
        assert recipe is not None
        marks.append((time.perf_counter(), recipe.position.tokens_seen))

    with tempfile.TemporaryDirectory() as tmp:
        recipe = LoraRecipe(
            Task(
                ModelSpec("smollm2", "SmolLM2-135M-Instruct", folder, ""),
                hyper,
                Records([{"text": ""}] * len(ids), [f"record {i}" for i in range(len(ids))]),
                (list(range(len(ids) - 1)), [len(ids) - 1]),
            ),
            Placement(Device("cpu", torch.float32, scaler=False), Checkpoints(Path(tmp))),
            Reporting(SimpleNamespace(report=report)),  # type: ignore[arg-type]
        )
        recipe.setup()
        weights = weight_bytes(recipe.model.get_base_model())
        recipe.progress._last = 0.0  # type: ignore[attr-defined]
        started = time.perf_counter()
        result = recipe.train()
    end, tokens = marks[-1]
    return {
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "loss": result.train_losses[0],
        "tokens_per_s": tokens / (end - started),
        "steps": float(result.steps),
        "padding_fraction": result.padding_fraction,
        "base_weight_mb": weights / 2**20,
        "precision": recipe.precision.name,  # type: ignore[dict-item]
    }


def hf_child(batch: int, seq: int, steps: int) -> dict[str, float]:
    """transformers' Trainer, length-grouped, on the trainer:grouped records."""
    import tempfile

    import torch
    from hfargs import quiet_training_args
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Trainer

    from oneseekd.trainer import embedded

    folder = embedded.install(CACHE)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    model = get_peft_model(base, lora)
    ids = token_ids("hf:group_by_length", batch, seq, steps, int(base.config.vocab_size))

    def pad(rows: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        out = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros_like(out)
        for n, r in enumerate(rows):
            out[n, : len(r["input_ids"])] = torch.tensor(r["input_ids"])
            mask[n, : len(r["input_ids"])] = 1
        return {
            "input_ids": out,
            "attention_mask": mask,
            "labels": out.masked_fill(mask == 0, -100),
        }

    with tempfile.TemporaryDirectory() as tmp:
        args = quiet_training_args(tmp, batch, 1e-4, 0, train_sampling_strategy="group_by_length")
        data = [{"input_ids": x} for x in ids]
        trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=pad)
        started = time.perf_counter()
        out = trainer.train()
        seconds = time.perf_counter() - started
    return {
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "loss": float(out.training_loss),
        "tokens_per_s": sum(len(x) for x in ids) / seconds,
        "steps": float(out.global_step),
    }


def child(name: str, batch: int, seq: int, steps: int) -> dict[str, float]:
    import hfargs  # noqa: F401  # bitsandbytes imported first, without the Hub kernel lookup
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from oneseekd.trainer import embedded, packing, quant
    from oneseekd.trainer.loss import ChunkedCausalLM

    folder = embedded.install(CACHE)
    torch.manual_seed(0)
    if name == "4bit":
        q = quant.Quantization(4, "nf4", torch.float32, True)
        base = quant.prepare(quant.load_quantized(folder, q, "cpu"), gradient_checkpointing=False)
    else:
        base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    if name == "chunked+ckpt":
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        base.enable_input_require_grads()
    base.config.use_cache = False
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    model = get_peft_model(base, lora)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    vocab = int(base.config.vocab_size)
    g = torch.Generator().manual_seed(1)
    if name in ("grouped", "packed"):
        lengths = [int(x) for x in torch.randint(40, seq + 1, (batch * steps * 3,), generator=g)]
        ids = [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]
        if name == "packed":
            rows = packing.pack(lengths, seq, seed=0, epoch=0)
        else:
            order = sorted(range(len(ids)), key=lambda i: lengths[i])
            rows = [[i] for i in order]
        groups = [rows[i : i + batch] for i in range(0, len(rows), batch)][:steps]
        batches = [packing.collate_packed(ids, None, group, pad_id=0) for group in groups]
        if name == "grouped":  # padded rows with an attention mask, no packing
            for b, group in zip(batches, groups, strict=True):
                real = torch.zeros_like(b["input_ids"])
                for r, row in enumerate(group):
                    real[r, : lengths[row[0]]] = 1
                b["attention_mask"] = real
                del b["position_ids"]
    else:
        ids_t = torch.randint(0, vocab, (batch, seq), generator=g)
        batches = [{"input_ids": ids_t, "labels": ids_t.clone()}] * steps
    wrapped = ChunkedCausalLM(model) if name != "full" else None
    losses, tokens, seconds = [], 0, 0.0
    for n, b in enumerate(batches):
        start = time.perf_counter()
        labels = b["labels"]
        inputs = {k: v for k, v in b.items() if k != "labels"}
        if wrapped is None:
            logits = model(**inputs, use_cache=False).logits
            shifted = torch.nn.functional.pad(labels, (0, 1), value=-100)[:, 1:]
            summed = torch.nn.functional.cross_entropy(
                logits.float().reshape(-1, vocab), shifted.reshape(-1), reduction="sum"
            )
            count = (shifted != -100).sum()
        else:
            summed, count = wrapped(labels=labels, **inputs)
        (summed / count).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(summed.detach() / count))
        if n > 0:
            seconds += time.perf_counter() - start
            tokens += int((labels != -100).sum()) + len(labels)
    held, full = quant.quantized_bytes(model) if name == "4bit" else (0, 0)
    return {
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "loss": sum(losses) / len(losses),
        "tokens_per_s": tokens / seconds if seconds else 0.0,
        "weight_mb": sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20,
        "quantized_layers_ratio": held / full if full else 0.0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--only", nargs="*", choices=CONFIGS)
    parser.add_argument("--child", choices=CONFIGS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        if args.child in TRAINER:
            got = trainer_child(args.child, args.batch, args.seq, args.steps)
        elif args.child == "hf:group_by_length":
            got = hf_child(args.batch, args.seq, args.steps)
        else:
            got = child(args.child, args.batch, args.seq, args.steps)
        print(json.dumps(got))
        return 0
    results: dict[str, dict[str, float]] = {}
    for name in args.only or BLOCKS:
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                name,
                "--batch",
                str(args.batch),
                "--seq",
                str(args.seq),
                "--steps",
                str(args.steps),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
        print(name, json.dumps(results[name]), flush=True)
    base = results.get("full")
    for name, got in results.items():
        if base and name in BLOCKS and name != "full":
            print(
                f"{name}: peak RSS {got['peak_rss_mb'] / base['peak_rss_mb']:.2f}x full's, "
                f"loss {got['loss']:.5f} vs {base['loss']:.5f}"
            )
    if "packed" in results and "grouped" in results:
        ratio = results["packed"]["tokens_per_s"] / max(results["grouped"]["tokens_per_s"], 1e-9)
        print(f"packed: {ratio:.2f}x the tokens/s of length-grouped batches")
    ratios(results)
    return 0


def ratios(results: dict[str, dict[str, float]]) -> None:
    """The trainer's figures against each other, as the issue asks for them."""

    def vs(name: str, other: str, key: str) -> str:
        if name not in results or other not in results:
            return "not run"
        return f"{results[name][key] / max(results[other][key], 1e-9):.2f}x"

    today, full = "trainer:today", "trainer:full"
    for name in ("trainer:full", "trainer:chunked", "trainer:chunked+ckpt", "trainer:4bit"):
        print(
            f"{name}: peak RSS {vs(name, today, 'peak_rss_mb')} of today's, "
            f"{vs(name, full, 'peak_rss_mb')} of chunked_loss false; "
            f"tokens/s {vs(name, today, 'tokens_per_s')} of today's"
        )
    for name in ("trainer:4bit", "trainer:4bit-bf16"):
        print(f"{name}: base weights {vs(name, full, 'base_weight_mb')} of fp32")
    for name in ("trainer:auto", "trainer:bf16"):
        print(f"{name}: tokens/s {vs(name, 'trainer:chunked', 'tokens_per_s')} of fp32")
    print(f"trainer:packed: tokens/s {vs('trainer:packed', 'trainer:grouped', 'tokens_per_s')}")
    peer = "hf:group_by_length"
    print(f"trainer:grouped: tokens/s {vs('trainer:grouped', peer, 'tokens_per_s')} of {peer}")
    print(f"trainer:packed: tokens/s {vs('trainer:packed', peer, 'tokens_per_s')} of {peer}")


if __name__ == "__main__":
    sys.exit(main())
