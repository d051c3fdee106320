"""One command that proves the trainer's CUDA path (issue 25), on one GPU in a few minutes.

Every check drives the trainer's own code (LoraRecipe: setup, its micro-steps, its evaluation,
its checkpoints) on SmolLM2-135M-Instruct, built locally from the GGUF file the demo ships
(`oneseekd.trainer.embedded`), and prints one line:

    <check>: ok: <figures>          it held
    <check>: FAILED: <why>          it did not (the exit status is then 1)
    <check>: skipped: no CUDA       this host has no CUDA GPU

The checks, in order:

- bf16 lora: precision "bf16"; the loss of the last steps is below the first steps', and the
  adapter saved by PEFT reloads onto a fresh base to the trained model's logits;
- fp16 scaler: precision "fp16" forced, so the gradient scaler runs; the loss stays finite;
- qlora 4-bit: load_in_4bit (NF4, double quantization) on bitsandbytes' CUDA kernels;
- paged_adamw_8bit resume: a run stopped after one step with a checkpoint, resumed by a new
  recipe; the resumed optimizer holds as many paged state tensors as the first one did
  (bitsandbytes pages only state of at least 1e5 values: LoRA r 128 on every linear layer);
- packing: accepted by the recipe's setup, and the isolation figure (packing.isolation_error,
  in units of rounding) under the kernels CUDA picks;
- torch.compile: torch_compile on; the compiled step's loss matches the eager step's;
- chunked evaluation: trainer/evaluate.measure through the chunked head against the same
  figures from the whole logits tensor;
- memory <held>: torch.cuda.max_memory_allocated of the base model's evaluation (what
  train() runs before its first step) and of one optimizer step, against spec.memory's
  eval_bytes and step_bytes, at --batch x --seq: 16-bit with checkpointing off and on, 4-bit
  (FAILED when either is more than 15 % off: the line still gives both numbers);
- throughput: tokens/s of --steps timed steps (bf16, no checkpointing) and the model FLOPs
  utilisation: spec.plan.token_flops a token (4 N + 12 L h s: the forward pass and the
  backward pass to the activations; the frozen base computes no weight gradients) over the
  GPU's dense bf16 peak.

Run, on any host with one CUDA GPU (after `make install`):

    .venv/bin/python bench/gpu.py [--model PATH] [--batch 8] [--seq 512] [--steps 10]
        [--peak-tflops N]  (the GPU's dense bf16 TFLOPS, when its name is not in PEAK_TFLOPS)
        [--device cpu]     (run here what a CPU can, on --model: a smoke test of this file)

Without CUDA every check is listed as skipped (tests/test_bench_gpu.py runs it so).
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
import torch
from transformers.utils import logging as hf_logging

from oneseekd.trainer.hubless import import_bitsandbytes

# before peft: bitsandbytes without its Hub lookup for kernels (as the trainer's entry does)
import_bitsandbytes()

from gpuharness import Bench, Skip, civic_texts, falls, steps  # noqa: E402

from oneseekd.spec.memory import Shape, eval_bytes, step_bytes  # noqa: E402
from oneseekd.spec.plan import token_flops  # noqa: E402
from oneseekd.trainer import embedded, packing  # noqa: E402
from oneseekd.trainer.evaluate import measure  # noqa: E402
from oneseekd.trainer.optim import uses_8bit_state  # noqa: E402
from oneseekd.trainer.recipe import LoraRecipe, Stopped  # noqa: E402
from oneseekd.trainer.setup import PACKING_TOLERANCE  # noqa: E402
from oneseekd.trainer.world import World  # noqa: E402

# dense bf16 tensor-core peaks (no sparsity), TFLOPS, by a part of torch's device name
PEAK_TFLOPS = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 80GB HBM3": 989.0,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H100": 756.0,
    "A100": 312.0,
    "L40S": 362.0,
    "A10G": 70.0,
    "A10": 125.0,
    "L4": 121.0,
    "RTX 4090": 165.0,
    "RTX 3090": 71.0,
}


def check_bf16(b: Bench) -> str:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    r = b.recipe("bf16", rows=b.batch * 2, lora={"dropout": 0.05})
    r.setup()
    first, last = falls(steps(r, 12))
    saved = b.work / "bf16-adapter"
    r.model.save_pretrained(saved)
    dtype = r.precision.weights
    base = AutoModelForCausalLM.from_pretrained(b.model, dtype=dtype).to(b.device)
    reloaded = PeftModel.from_pretrained(base, saved).eval()
    r.model.eval()
    ids = torch.tensor([r.train_data.ids[0][:64]], device=b.device)
    with torch.no_grad(), r._autocast():
        want = r.model(input_ids=ids).logits.float()
        got = reloaded(input_ids=ids).logits.float()
    moved = float((want - got).abs().max())
    unit = torch.finfo(dtype).eps * float(want.abs().max())
    if moved > unit:
        raise AssertionError(f"the reloaded adapter's logits moved by {moved:.3g} (> {unit:.3g})")
    return f"loss {first:.3f} -> {last:.3f}; reloaded adapter's logits within {moved:.2g}"


def check_fp16(b: Bench) -> str:
    b.need_cuda()
    r = b.recipe("fp16", rows=b.batch * 2, precision="fp16")
    r.setup()
    if r.scaler is None:
        raise AssertionError('precision "fp16" built no gradient scaler')
    first, last = falls(steps(r, 6))
    return f"loss {first:.3f} -> {last:.3f}; scaler at {r.scaler.get_scale():g}"


def check_qlora(b: Bench) -> str:
    r = b.recipe("qlora", rows=b.batch * 2, load_in_4bit=True)
    r.setup()
    quantized = [m for m in r.model.modules() if type(m).__name__ == "Linear4bit"]
    if not quantized or any(m.weight.device.type != b.device for m in quantized):
        raise AssertionError(f"the base's linear layers are not 4-bit on the {b.device}")
    first, last = falls(steps(r, 6))
    mib = r.weight_bytes / 2**20
    return f"{len(quantized)} Linear4bit layers, base {mib:.1f} MiB; loss {first:.3f} -> {last:.3f}"


def _paged(r: LoraRecipe) -> int:
    return sum(
        1
        for state in r.optimizer.state.values()
        for v in state.values()
        if isinstance(v, torch.Tensor) and getattr(v, "is_paged", False)
    )


def check_paged(b: Bench) -> str:
    """On the CPU (a smoke test of the resume) adamw_8bit: bitsandbytes pages only on CUDA."""
    optimizer = "paged_adamw_8bit" if b.device == "cuda" else "adamw_8bit"
    hyper = {"optimizer": optimizer, "lora": {"r": 128, "target_modules": "all-linear"}}
    first = b.recipe("paged", rows=b.batch * 4, should_stop=True, **hyper)
    first.setup()
    try:
        first.train()
        raise AssertionError("the run did not stop when asked")
    except Stopped:
        pass
    before = _paged(first)
    first.cleanup()
    resumed = b.recipe("paged", rows=b.batch * 4, **hyper)
    resumed.setup()
    if resumed.position.step != 1:
        raise AssertionError(f"resumed at step {resumed.position.step}, not 1")
    after = _paged(resumed)
    result = resumed.train()
    if not uses_8bit_state(resumed.optimizer):
        raise AssertionError("the resumed optimizer's state is not 8-bit")
    if b.device == "cuda" and (before == 0 or after != before):
        raise AssertionError(
            f"the first run held {before} paged state tensors, the resumed one {after}"
        )
    losses = ", ".join(f"{x:.3f}" for x in result.evaluation["step_losses"])
    return f"{optimizer}: {after} of {before} paged state tensors on resume; losses {losses}"


def check_packing(b: Bench) -> str:
    r = b.recipe("packing", rows=b.batch * 2, packing=True)
    r.setup()  # refuses a model whose packed records see each other
    vocab = int(r.model.config.vocab_size)
    leak = packing.isolation_error(r.model, vocab, b.device)
    attention = r.model.config._attn_implementation
    first, last = falls(steps(r, 3))
    return (
        f"accepted ({attention} attention); isolation {leak:.3g} units of rounding "
        f"(limit {PACKING_TOLERANCE:g}); loss {first:.3f} -> {last:.3f}"
    )


def check_compile(b: Bench) -> str:
    b.need_cuda()
    eager = b.recipe("eager", rows=b.batch * 3)
    eager.setup()
    want = steps(eager, 3)
    eager.cleanup()
    compiled = b.recipe("compiled", rows=b.batch * 3, torch_compile=True)
    compiled.setup()
    started = time.perf_counter()
    got = steps(compiled, 3)
    seconds = time.perf_counter() - started
    worst = max(abs(g - w) / abs(w) for g, w in zip(got, want, strict=True))
    if worst > 0.01:
        raise AssertionError(f"compiled losses {got} differ from eager {want}")
    return f"3 steps in {seconds:.1f} s (compiling included); losses within {worst:.2%} of eager"


def check_evaluation(b: Bench) -> str:
    r = b.recipe("evaluation", rows=b.batch)
    r.setup()
    pad = int(r.tokenizer.pad_token_id)
    net = r.model
    with r._autocast():
        chunked = measure(net, r.held, pad, b.batch, World(), False, r.device)
        # sharded=True makes measure take the whole logits tensor, as a sharded model does
        whole = measure(net, r.held, pad, b.batch, World(), True, r.device)
    gap = abs(chunked.loss - whole.loss) / whole.loss
    if gap > 5e-3 or chunked.tokens != whole.tokens:
        raise AssertionError(f"chunked loss {chunked.loss:.5f}, whole logits {whole.loss:.5f}")
    return (
        f"loss {chunked.loss:.4f} over {chunked.tokens} tokens, whole logits {whole.loss:.4f} "
        f"({gap:.1e} apart); "
        f"accuracy {chunked.accuracy:.4f} against {whole.accuracy:.4f}"
    )


def _peaks(b: Bench, name: str, **hyper: Any) -> str:
    b.need_cuda()
    r = b.recipe(name, rows=b.batch * 2, **hyper)
    r.setup()
    shape = Shape.from_config(r.config)
    tokens = b.batch * b.seq
    held = r._held()
    pad = int(r.tokenizer.pad_token_id)
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    r.evaluate_base(pad)  # before the first step, as train() runs it
    evaluated = torch.cuda.max_memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    steps(r, 1)
    stepped = torch.cuda.max_memory_allocated()
    want_step = step_bytes(r.weight_bytes, shape, tokens, held, r.checkpointing, r.chunked)
    want_eval = eval_bytes(r.weight_bytes, shape, tokens, held)
    r.cleanup()
    lines = []
    for what, got, want in (("step", stepped, want_step), ("eval", evaluated, want_eval)):
        lines.append(f"{what} {got / 2**30:.2f} GiB vs {want / 2**30:.2f} ({got / want - 1:+.0%})")
    worst = max(abs(stepped / want_step - 1), abs(evaluated / want_eval - 1))
    text = f"{b.batch}x{b.seq}, checkpointing {r.checkpointing}: measured {'; '.join(lines)}"
    if worst > 0.15:  # spec/memory.py holds itself to 15 % on the CPU: this GPU says otherwise
        raise AssertionError(f"{text}: the plan is off by more than 15 %")
    return f"{text}: within 15 %"


def check_throughput(b: Bench) -> str:
    b.need_cuda()
    r = b.recipe("throughput", rows=b.batch * (b.steps + 2), gradient_checkpointing=False)
    r.setup()
    steps(r, 2)  # warm-up: kernels chosen, the optimizer's state made
    started = time.perf_counter()
    steps(r, b.steps)
    seconds = time.perf_counter() - started
    rate = b.steps * b.batch * b.seq / seconds
    per_token = token_flops(r.config, b.seq)
    name = torch.cuda.get_device_name()
    peak = b.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    mfu = (
        f"MFU {rate * per_token / (peak * 1e12):.1%} of {peak:g} TFLOPS"
        if peak
        else (f"MFU unknown: pass --peak-tflops for {name}")
    )
    return f"{rate:,.0f} tokens/s at {b.batch}x{b.seq} on {name}; {mfu}"


CHECKS: list[tuple[str, Callable[[Bench], str]]] = [
    ("bf16 lora", check_bf16),
    ("fp16 scaler", check_fp16),
    ("qlora 4-bit", check_qlora),
    ("paged_adamw_8bit resume", check_paged),
    ("packing", check_packing),
    ("torch.compile", check_compile),
    ("chunked evaluation", check_evaluation),
    ("memory 16-bit", lambda b: _peaks(b, "mem16", gradient_checkpointing=False)),
    ("memory 16-bit checkpointed", lambda b: _peaks(b, "mem16c", gradient_checkpointing=True)),
    ("memory 4-bit", lambda b: _peaks(b, "mem4", load_in_4bit=True, gradient_checkpointing=False)),
    ("throughput", check_throughput),
]


def quiet() -> None:
    """No log lines, progress bars or warnings between the checks' lines."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    warnings.filterwarnings("ignore")


def run(b: Bench, out: Any = sys.stdout) -> int:
    failed = 0
    for name, check in CHECKS:
        started = time.perf_counter()
        try:
            line = f"ok: {check(b)} ({time.perf_counter() - started:.1f} s)"
        except Skip as exc:
            line = f"skipped: {exc}"
        except Exception as exc:  # one check's failure must not hide the others'
            failed += 1
            line = f"FAILED: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        finally:
            gc.collect()  # a recipe's cycles hold GPU memory until collected
            if b.device == "cuda":
                torch.cuda.empty_cache()
        print(f"{name}: {line}", file=out, flush=True)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a model folder (default: SmolLM2-135M)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--steps", type=int, default=10, help="timed steps of the throughput")
    parser.add_argument("--peak-tflops", type=float)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        for name, _ in CHECKS:
            print(f"{name}: skipped: no CUDA", flush=True)
        return 0
    quiet()
    with tempfile.TemporaryDirectory(prefix="oneseek-gpu-") as tmp:
        work = Path(tmp)
        model = args.model or embedded.install(work / "models")
        b = Bench(model, args.device, args.batch, args.seq, args.steps, args.peak_tflops, work)
        b.texts = civic_texts()
        return run(b)


if __name__ == "__main__":
    sys.exit(main())
