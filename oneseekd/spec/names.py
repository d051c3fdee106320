"""The other spellings of the run spec's options: CivicAI's admin panel and train_dna_v2.py.

The admin panel posts flat camelCase names (`loraRank`, `loadIn4Bit`, `maxSeqLength`,
`targetModules: "q_proj,v_proj"`, `autoStopThreshold`, ...), and `scripts/train_dna_v2.py`
takes the same options as flags (`--lora-rank`, `--no-gradient-checkpointing`, ...).
`normalize` turns any of these spellings into the spec's own nested snake_case fields,
reporting a field given twice with two values; `FLAGS` maps every flag to the field it sets,
for `oneseekctl train` and `submit`. No pydantic model here (spec/request.py imports this).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic.alias_generators import to_camel

# spellings that are not the field's name or its camelCase, and where the value goes
ALIASES: dict[str, str] = {
    "loadIn4Bit": "load_in_4bit",
    "loadIn8Bit": "load_in_8bit",
    "maxSeqLength": "max_seq_len",
    "max_seq_length": "max_seq_len",
    "packingEnabled": "packing",
    "packing_enabled": "packing",
    "useNestedQuant": "double_quantization",
    "use_nested_quant": "double_quantization",
    "loraRank": "lora.r",
    "lora_rank": "lora.r",
    "loraAlpha": "lora.alpha",
    "lora_alpha": "lora.alpha",
    "dropout": "lora.dropout",
    "loraDropout": "lora.dropout",
    "lora_dropout": "lora.dropout",
    "targetModules": "lora.target_modules",
    "target_modules": "lora.target_modules",
    "useRslora": "lora.use_rslora",
    "use_rslora": "lora.use_rslora",
    # alpha / r (alpha / sqrt(r) with use_rslora): sets lora.alpha, see spec.request.LoraOptions
    "loraScalingFactor": "lora.scaling_factor",
    "lora_scaling_factor": "lora.scaling_factor",
    "autoStopThreshold": "auto_stop.threshold",
    "auto_stop_threshold": "auto_stop.threshold",
    "autoStopPatience": "auto_stop.patience",
    "auto_stop_patience": "auto_stop.patience",
    "autoStopMinEpochs": "auto_stop.min_epochs",
    "auto_stop_min_epochs": "auto_stop.min_epochs",
}
# the admin panel's GPU switches, turned into `gpus` and `sharding` below
GPU_NAMES = {"numGpus": "num_gpus", "useMultiGpu": "use_multi_gpu", "useDdp": "use_ddp"}
NESTED = ("lora", "auto_stop")
NO_DEEPSPEED = (
    'oneseekd does not run DeepSpeed; ask for sharding "fsdp" (the GPUs share one copy of the '
    "model, as DeepSpeed ZeRO-3 does) and leave the DeepSpeed settings out"
)


class _Out:
    """The canonical fields being built, with every conflict noted."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.given: dict[str, str] = {}  # path -> the spelling that set it
        self.problems: list[str] = []

    def put(self, path: str, value: Any, spelling: str) -> None:
        head, _, leaf = path.partition(".")
        target = self.data
        if leaf:
            inner = self.data.setdefault(head, {})
            if not isinstance(inner, dict):  # auto_stop: null beside autoStopThreshold
                self.problems.append(f"{spelling}: {head} is {inner!r}, so it cannot be set")
                return
            target, head = inner, leaf
        if path in self.given and target.get(head) != value:
            self.problems.append(
                f"{self.given[path]} and {spelling} disagree ({target.get(head)!r} and "
                f"{value!r}): give one of them"
            )
            return
        target[head] = value
        self.given[path] = spelling


def normalize(
    data: Mapping[str, Any], fields: Iterable[str], nested: Mapping[str, Iterable[str]]
) -> tuple[dict[str, Any], list[str]]:
    """`data` in the spec's own field names (nested lora and auto_stop), and the problems.
    `fields` are the spec's top-level fields, `nested` the fields of lora and auto_stop.
    Names that are none of these pass through, for the schema to report as unknown."""
    names = {n: n for n in fields} | {to_camel(n): n for n in fields}
    inner = {
        group: {n: n for n in nf} | {to_camel(n): n for n in nf} for group, nf in nested.items()
    }
    out = _Out()
    gpu: dict[str, Any] = {}
    for key, value in data.items():
        name = names.get(key)
        if name in NESTED and isinstance(value, dict):
            out.data.setdefault(name, {})
            for sub, item in value.items():
                leaf = inner[name].get(sub) or ALIASES.get(sub, "").partition(".")[2] or sub
                out.put(f"{name}.{leaf}", item, f"{name}.{sub}")
        elif name is not None:
            out.put(name, value, key)
        elif key in ALIASES:
            out.put(ALIASES[key], value, key)
        elif key in GPU_NAMES or key in GPU_NAMES.values():
            gpu[GPU_NAMES.get(key, key)] = (key, value)
        elif key.lower().replace("_", "").startswith("deepspeed"):
            out.problems.append(f"{key}: {NO_DEEPSPEED}")
        else:
            out.data[key] = value
    _gpus(gpu, out)
    return out.data, out.problems


def _gpus(gpu: dict[str, tuple[str, Any]], out: _Out) -> None:
    """num_gpus (0: every GPU) and use_multi_gpu into `gpus`; use_ddp into `sharding`."""
    if "num_gpus" in gpu:
        spelling, value = gpu["num_gpus"]
        if type(value) is not int or value < 0:
            out.problems.append(f"{spelling}: must be 0 (every GPU) or a number of GPUs")
        else:
            out.put("gpus", "all" if value == 0 else value, spelling)
    if "use_multi_gpu" in gpu:
        spelling, value = gpu["use_multi_gpu"]
        if type(value) is not bool:
            out.problems.append(f"{spelling}: must be true or false")
        elif "num_gpus" not in gpu or not value:
            out.put("gpus", "all" if value else 1, spelling)
    if "use_ddp" in gpu:
        spelling, value = gpu["use_ddp"]
        if type(value) is not bool:
            out.problems.append(f"{spelling}: must be true or false")
        elif value:
            out.put("sharding", "ddp", spelling)


@dataclass(frozen=True)
class Flag:
    """A train_dna_v2.py flag: the request field it sets (any spelling `normalize` takes),
    and the value a switch sets (None: the flag takes a value, read as `kind`)."""

    flag: str
    field: str
    switch: Any = None
    kind: type = str


FLAGS: tuple[Flag, ...] = (
    Flag("--epochs", "epochs", kind=int),
    Flag("--learning-rate", "learning_rate", kind=float),
    Flag("--batch-size", "batch_size", kind=int),
    Flag("--auto-stop-threshold", "auto_stop_threshold", kind=float),
    Flag("--auto-stop-patience", "auto_stop_patience", kind=int),
    Flag("--seed", "seed", kind=int),
    Flag("--lora-rank", "lora_rank", kind=int),
    Flag("--lora-alpha", "lora_alpha", kind=int),
    Flag("--lr-scheduler", "lr_scheduler"),
    Flag("--warmup-steps", "warmup_steps", kind=int),
    Flag("--micro-batch-size", "micro_batch_size"),
    Flag("--weight-decay", "weight_decay", kind=float),
    Flag("--max-grad-norm", "max_grad_norm", kind=float),
    Flag("--precision", "precision"),
    Flag("--optimizer", "optimizer"),
    Flag("--gradient-checkpointing", "gradient_checkpointing", True),
    Flag("--no-gradient-checkpointing", "gradient_checkpointing", False),
    Flag("--torch-compile", "torch_compile", True),
    Flag("--no-torch-compile", "torch_compile", False),
    Flag("--target-modules", "target_modules"),
    Flag("--dropout", "lora_dropout", kind=float),
    Flag("--load-in-4bit", "load_in_4bit", True),
    Flag("--load-in-8bit", "load_in_8bit", True),
    Flag("--quantization-type", "quantization_type"),
    Flag("--compute-dtype", "compute_dtype"),
    Flag("--double-quantization", "double_quantization", True),
    Flag("--no-double-quantization", "double_quantization", False),
    Flag("--use-nested-quant", "use_nested_quant", True),
    Flag("--gradient-accumulation-steps", "gradient_accumulation_steps", kind=int),
    Flag("--max-seq-length", "max_seq_len", kind=int),
    Flag("--packing-enabled", "packing", True),
    Flag("--no-fast-tokenizer", "use_fast_tokenizer", False),
    Flag("--lora-scaling-factor", "lora_scaling_factor", kind=float),
    Flag("--max-memory-per-gpu", "max_memory_per_gpu"),
    Flag("--use-multi-gpu", "use_multi_gpu", True),
    Flag("--no-multi-gpu", "use_multi_gpu", False),
    Flag("--num-gpus", "num_gpus", kind=int),
    Flag("--use-deepspeed", "use_deepspeed", True),
    Flag("--deepspeed-tp-size", "deepspeed_tp_size", kind=int),
    Flag("--deepspeed-zero-stage", "deepspeed_zero_stage", kind=int),
    Flag("--deepspeed-batch-size", "deepspeed_batch_size", kind=int),
    Flag("--use-ddp", "use_ddp", True),
    Flag("--ddp-backend", "ddp_backend"),
)
BY_FLAG = {f.flag: f for f in FLAGS}
# train_dna_v2.py flags that say what to train rather than how: the CLI handles them
RUN_FLAGS = ("--dataset", "--base-models", "--language", "--output-dir")


def request_from_flags(pairs: Sequence[tuple[str, str | None]]) -> tuple[dict[str, Any], list[str]]:
    """The request fields train_dna_v2.py's option flags ask for: (flag, value) pairs, the
    value None for a switch. Every unknown flag or unreadable value is a problem."""
    fields: dict[str, Any] = {}
    problems: list[str] = []
    for flag, value in pairs:
        spec = BY_FLAG.get(flag)
        if spec is None:
            problems.append(f"{flag}: not an option of train_dna_v2.py that oneseekd knows")
        elif spec.switch is not None:
            if value is not None:
                problems.append(f"{flag} takes no value (got {value!r})")
            else:
                fields[spec.field] = spec.switch
        elif value is None:
            problems.append(f"{flag} needs a value")
        else:
            try:
                fields[spec.field] = spec.kind(value)
            except ValueError:
                problems.append(f"{flag}: {value!r} is not a {spec.kind.__name__}")
    return fields, problems
