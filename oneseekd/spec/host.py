"""What a host cannot train, found before a GPU is touched: every problem at once, each
with its fix. Intake runs it for the host it judges a run for; the trainer runs it again
with the facts it probes itself (trainer/precision.py)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from importlib.util import find_spec

from oneseekd.spec.request import ModelOptions, RunSpec


@dataclass(frozen=True)
class HostFacts:
    gpus: int = 0  # CUDA GPUs the trainer may use
    # the lowest compute capability among them; None: not known (no torch in the daemon)
    capability: tuple[int, int] | None = None
    bitsandbytes: bool = True
    compiler: bool = True  # a C++ compiler, which torch.compile needs on the CPU

    @classmethod
    def light(cls, gpus: int) -> HostFacts:
        """What is known without importing torch (in the daemon and oneseekctl)."""
        return cls(
            gpus=gpus,
            bitsandbytes=find_spec("bitsandbytes") is not None,
            compiler=any(shutil.which(c) for c in ("c++", "g++", "clang++")),
        )


def _fp16(options: ModelOptions, host: HostFacts) -> bool:
    """Whether the model trains in fp16: asked, or "auto" on GPUs without native bf16."""
    if options.precision == "fp16":
        return True
    old = host.capability is not None and host.capability < (8, 0)
    return options.precision == "auto" and host.gpus > 0 and old


def model_problems(
    options: ModelOptions, host: HostFacts, export_merged: bool, export_dequantized: bool
) -> list[str]:
    """The problems of one model's options on this host."""
    found: list[str] = []
    quant = "load_in_4bit" if options.load_in_4bit else "load_in_8bit"
    gpu = host.gpus > 0
    if options.use_deepspeed:
        found.append(
            'use_deepspeed: oneseekd does not run DeepSpeed; ask for sharding "fsdp" (the '
            "GPUs share one copy of the model, as DeepSpeed ZeRO-3 does)"
        )
    if options.load_in_4bit and options.load_in_8bit:
        found.append("load_in_4bit and load_in_8bit: ask for one of them")
    if options.precision == "fp16" and not gpu:
        found.append(
            'precision "fp16" needs a CUDA GPU, and this host has none; ask for "auto", '
            '"bf16" or "fp32"'
        )
    if options.precision == "bf16" and gpu and host.capability and host.capability < (8, 0):
        found.append(
            f'precision "bf16" needs GPUs of compute capability 8.0 or more, and this '
            f'host\'s is {host.capability[0]}.{host.capability[1]}; ask for "auto" or "fp16"'
        )
    if options.quantized and export_merged and not export_dequantized:
        found.append(
            f"export_merged with {quant}: merging into quantized weights rounds the adapter "
            "away; set export_dequantized: true (the adapter is merged into the dequantized "
            "weights and saved in the base's own dtype, which needs the base's full size in "
            "CPU memory) or export_merged: false"
        )
    if options.optimizer == "paged_adamw_8bit" and not gpu:
        found.append(
            'optimizer "paged_adamw_8bit" pages through CUDA memory, and this host has no '
            'GPU; ask for "adamw_8bit" (the same 8-bit state, unpaged) or "adamw_torch"'
        )
    needs_bnb = [quant] if options.quantized else []
    if options.optimizer in ("adamw_8bit", "paged_adamw_8bit"):
        needs_bnb.append(f'optimizer "{options.optimizer}"')
    if needs_bnb and not host.bitsandbytes:
        found.append(
            f"{' and '.join(needs_bnb)} need bitsandbytes, which this host lacks: "
            "pip install bitsandbytes==0.50.2 (as the README's install does)"
        )
    if options.torch_compile and options.quantized:
        found.append(
            f"torch_compile with {quant}: torch.compile cannot trace bitsandbytes' quantized "
            "layers; set torch_compile: false"
        )
    if options.torch_compile and not gpu and not host.compiler:
        found.append(
            "torch_compile on the CPU needs a C++ compiler, and this host has none; install "
            "g++ or set torch_compile: false"
        )
    if options.max_memory_per_gpu is not None and not gpu:
        found.append(
            f"max_memory_per_gpu {options.max_memory_per_gpu} caps the memory each GPU gives "
            "the trainer, and this host has no GPU; leave it out"
        )
    if options.ddp_backend == "nccl" and not gpu:
        found.append(
            'ddp_backend "nccl" needs CUDA GPUs, and this host has none; ask for "gloo" or '
            "leave it out (nccl on GPUs, gloo on CPUs)"
        )
    if options.sharding == "fsdp":
        if options.quantized:
            found.append(
                f'sharding "fsdp" with {quant}: oneseekd does not shard quantized weights; '
                'ask for sharding "ddp" (quantized, the model may fit one GPU)'
            )
        if options.optimizer in ("adamw_8bit", "paged_adamw_8bit"):
            found.append(
                f'optimizer "{options.optimizer}" with sharding "fsdp": bitsandbytes\' '
                'optimizers do not take sharded parameters; ask for "adamw_torch"'
            )
        if _fp16(options, host):
            found.append(
                'sharding "fsdp" in fp16 needs a gradient scaler for sharded gradients, which '
                'oneseekd does not have; ask for sharding "ddp" or precision "bf16" on GPUs '
                "of compute capability 8.0 or more"
            )
    return found


def check(spec: RunSpec, host: HostFacts) -> list[str]:
    """Every problem of the run on this host: those of all models named once, prefixed with
    the models they concern when they do not concern all of them."""
    by_problem: dict[str, list[str]] = {}
    for key, options in spec.models.items():
        for problem in model_problems(options, host, spec.export_merged, spec.export_dequantized):
            by_problem.setdefault(problem, []).append(key)
    found = [
        problem if len(keys) == len(spec.models) else f"{', '.join(keys)}: {problem}"
        for problem, keys in by_problem.items()
    ]
    backends = {o.ddp_backend for o in spec.models.values() if o.ddp_backend is not None}
    if len(backends) > 1:
        found.append(
            f"ddp_backend differs between the models ({', '.join(sorted(backends))}): a run's "
            "processes join one process group; give one ddp_backend for the whole run"
        )
    stops = [k for k, o in spec.models.items() if o.auto_stop is not None]
    if stops and spec.val_fraction == 0:
        found.append(
            "auto_stop watches the validation loss, and val_fraction is 0 (no validation "
            "split); set val_fraction above 0 or leave auto_stop out"
        )
    return found
