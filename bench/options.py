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
CONFIGS = ("full", "chunked", "chunked+ckpt", "4bit", "grouped", "packed")


def child(name: str, batch: int, seq: int, steps: int) -> dict[str, float]:
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
        print(json.dumps(child(args.child, args.batch, args.seq, args.steps)))
        return 0
    results: dict[str, dict[str, float]] = {}
    for name in args.only or CONFIGS:
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
        if base and name != "full":
            print(
                f"{name}: peak RSS {got['peak_rss_mb'] / base['peak_rss_mb']:.2f}x full's, "
                f"loss {got['loss']:.5f} vs {base['loss']:.5f}"
            )
    if "packed" in results and "grouped" in results:
        ratio = results["packed"]["tokens_per_s"] / max(results["grouped"]["tokens_per_s"], 1e-9)
        print(f"packed: {ratio:.2f}x the tokens/s of length-grouped batches")
    return 0


if __name__ == "__main__":
    sys.exit(main())
