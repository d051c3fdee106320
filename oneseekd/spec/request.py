"""The run spec: every training option of a run, typed, with per-model overrides resolved once.

Intake parses a request's options (`parse_options`, then `parse_overrides` for each
`per_model` entry), builds one `RunSpec` and writes it into the run (`to_config`). Everyone
else reads it back with `load`, which also reads the untyped configs runs stored before the
spec existed (`from_legacy`). `spec/host.py` lists every combination a host cannot train, each
with its fix, before a GPU is touched. No torch here: the daemon and oneseekctl import it.

Every option is a field with a default that keeps what oneseekd did before it existed, except
`precision` ("auto": bf16 where the hardware computes it natively) and `chunked_loss` (equal
loss, less memory). The admin panel's names (`loraRank`, `loadIn4Bit`, `maxSeqLength`, ...)
and train_dna_v2.py's flags are mapped in oneseekd/spec/names.py.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import ErrorDetails

from oneseekd.spec.fields import (
    Gpus,
    Memory,
    MicroBatch,
    Optimizer,
    ReportTo,
    Scheduler,
    Sharding,
    Targets,
)
from oneseekd.spec.names import normalize

SPEC_VERSION = 2  # 1: the untyped Run.config intake wrote before the spec (from_legacy)


class SpecError(ValueError):
    """A stored run config that cannot be read as a run spec."""


class _Strict(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        alias_generator=to_camel,
        populate_by_name=True,
        loc_by_alias=False,
        frozen=True,
        allow_inf_nan=False,
    )


class LoraOptions(_Strict):
    r: int = Field(8, ge=1, le=1024)
    alpha: int = Field(32, ge=1, le=8192)
    dropout: float = Field(0.1, ge=0, lt=1)
    target_modules: Targets = None  # None: the family's attention projections
    use_rslora: bool = False  # scale by alpha / sqrt(r) instead of alpha / r

    @model_validator(mode="before")
    @classmethod
    def _scaling_factor(cls, data: Any) -> Any:
        """The admin panel's loraScalingFactor s is the LoRA scale itself: alpha = s * r
        (s * sqrt(r) with use_rslora), rounded; given with alpha, the two must agree."""
        if not isinstance(data, dict) or "scaling_factor" not in data:
            return data
        data = dict(data)
        factor = data.pop("scaling_factor")
        if isinstance(factor, bool) or not isinstance(factor, int | float) or not 0 < factor <= 16:
            raise ValueError(
                f"lora_scaling_factor must be a number above 0, at most 16 (got {factor!r})"
            )
        r = data.get("r", data.get("rank", cls.model_fields["r"].default))
        if not isinstance(r, int):
            return data  # r's own error is reported
        rslora = data.get("use_rslora", data.get("useRslora", False)) is True
        alpha = round(factor * (math.sqrt(r) if rslora else r))
        given = data.get("alpha")
        if given is not None and given != alpha:
            raise ValueError(
                f"lora alpha {given!r} and lora_scaling_factor {factor} disagree (the factor "
                f"with r {r} makes alpha {alpha}): give one of them"
            )
        data["alpha"] = alpha
        return data


class AutoStopOptions(_Strict):
    # CivicAI's defaults (train_dna_v2.py): stop after 3 epochs improving by under 0.001
    threshold: float = Field(0.001, ge=0, le=1000)
    patience: int = Field(3, ge=1, le=1000)
    min_epochs: int = Field(2, ge=1, le=1000)


class ModelOptions(_Strict):
    """The options one model trains with; each may differ per model (`per_model`)."""

    epochs: int = Field(3, ge=1, le=1000)
    batch_size: int = Field(8, ge=1, le=4096)
    learning_rate: float = Field(1e-4, gt=0, le=1)
    max_seq_len: int = Field(512, ge=16, le=131072)
    gradient_accumulation_steps: int = Field(1, ge=1, le=4096)
    micro_batch_size: MicroBatch = None  # None: a batch is one forward and backward pass
    lr_scheduler: Scheduler = "cosine_with_min_lr"  # cosine to 10 % of the peak
    warmup_ratio: float = Field(0.03, ge=0, le=0.5)
    warmup_steps: int | None = Field(None, ge=0, le=10_000_000)  # wins over warmup_ratio
    weight_decay: float = Field(0.0, ge=0, le=1)
    max_grad_norm: float = Field(1.0, ge=0, le=10_000)  # 0: no clipping
    optimizer: Optimizer = "adamw_torch"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    gradient_checkpointing: bool | None = None  # None: on when a step would not fit the GPU
    torch_compile: bool = False
    use_fast_tokenizer: bool = True
    packing: bool = False
    chunked_loss: bool = True
    train_on_prompt: bool = False
    truncation_side: Literal["right", "left"] = "right"
    load_in_4bit: bool = False
    load_in_8bit: bool = False
    quantization_type: Literal["nf4", "fp4"] = "nf4"
    compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    double_quantization: bool = True
    auto_stop: AutoStopOptions | None = None  # None: every epoch runs
    # the epoch whose weights a model ships: the lowest held-out loss, or the last (keep.py)
    keep: Literal["best", "last"] = "best"
    max_memory_per_gpu: Memory = None
    gpus: Gpus = 1
    sharding: Sharding = "ddp"
    ddp_backend: Literal["nccl", "gloo"] | None = None  # None: nccl on GPUs, gloo on CPUs
    use_deepspeed: bool = False  # accepted so that spec.host.check can refuse it by name
    lora: LoraOptions = LoraOptions()

    @property
    def quantized(self) -> bool:
        return self.load_in_4bit or self.load_in_8bit


class RunOptions(ModelOptions):
    """A request's options: every model's defaults, and what the whole run shares."""

    seed: int = Field(42, ge=0, le=2**32 - 1)
    val_fraction: float = Field(0.1, ge=0, le=0.5)
    checkpoint_every: int = Field(50, ge=1, le=10_000_000)
    # final weights from held-out bits per byte (fair across tokenizers), per-token loss, or 1/n
    weighting: Literal["bits_per_byte", "val_loss", "equal"] = "bits_per_byte"
    export_merged: bool = False
    # merge a quantized base's adapter into its dequantized weights (trainer/merge.py)
    export_dequantized: bool = False
    # where the run's curves go (["tensorboard"]: trainer/curves.py); None: [trainer] report_to
    report_to: ReportTo = None


MODEL_FIELDS = tuple(ModelOptions.model_fields)
RUN_FIELDS = tuple(f for f in RunOptions.model_fields if f not in ModelOptions.model_fields)
# fields of the stored config that say where a run reports, not what it trains: they change no
# weight, so the config hash in the DNA leaves them out (the same training, the same DNA)
NOT_TRAINING = ("report_to",)


def trained_config(config: dict[str, Any]) -> dict[str, Any]:
    """A run's stored config as the DNA hashes it: without the fields of NOT_TRAINING (a run
    stored before they existed hashes as it did)."""
    return {k: v for k, v in config.items() if k not in NOT_TRAINING}


class RunSpec(BaseModel):
    """What a run trains: written once by intake, read by the supervisor, the GPU planner
    and the trainer. Run-wide fields sit at the top (where the old config had them)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    spec_version: Literal[2] = 2  # SPEC_VERSION
    version: str
    base_models: list[str]  # catalog keys, in training order
    requested_names: list[str] = Field(default_factory=list)
    display_names: dict[str, str] = Field(default_factory=dict)
    seed: int = 42
    val_fraction: float = 0.1
    checkpoint_every: int = 50
    # a stored spec without the field was weighted by per-token loss, as oneseekd did then
    weighting: Literal["bits_per_byte", "val_loss", "equal"] = "val_loss"
    export_merged: bool = False
    export_dequantized: bool = False
    # where the run's curves go; None: the training host's [trainer] report_to (NOT_TRAINING)
    report_to: list[str] | None = None
    # what the model speaks, for metadata.json (CivicAI's --language); not a training option
    language: str | None = None
    models: dict[str, ModelOptions]

    def for_model(self, key: str) -> ModelOptions:
        return self.models[key]

    @property
    def uses_bitsandbytes(self) -> bool:
        """Whether any model loads quantized or steps with an 8-bit optimizer: the only runs
        whose trainer imports bitsandbytes (trainer/hubless.py)."""
        eight = ("adamw_8bit", "paged_adamw_8bit")
        return any(o.quantized or o.optimizer in eight for o in self.models.values())

    def to_config(self) -> dict[str, Any]:
        """The JSON Run.config holds."""
        return self.model_dump(mode="json")

    def hyper(self, key: str) -> dict[str, Any]:
        """One model's options with the run's, as the flat dict the trainer read before the
        spec (RunContext.hyper): for readers not yet moved to the typed fields."""
        run = {f: getattr(self, f) for f in RUN_FIELDS}
        return {**run, **self.models[key].model_dump(mode="json")}


def _where(loc: tuple[int | str, ...], prefix: str) -> str:
    parts = [prefix] if prefix else []
    for item in loc:
        parts.append(f"[{item}]" if isinstance(item, int) else str(item))
    return ".".join(parts).replace(".[", "[") or "request"


def _describe(error: ErrorDetails, prefix: str = "") -> str:
    where = _where(tuple(error["loc"]), prefix)
    if error["type"] == "extra_forbidden":
        return f"unknown field {where!r}"
    shown = repr(error.get("input"))
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{where}: {message[0].lower()}{message[1:]} (got {shown})"


def _canonical(data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    nested = {
        "lora": [*LoraOptions.model_fields, "scaling_factor"],
        "auto_stop": list(AutoStopOptions.model_fields),
    }
    return normalize(data, RunOptions.model_fields, nested)


def normalize_options(data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """`data` with every option in the spec's own spelling (other fields pass through), and
    the problems of spellings that disagree."""
    return _canonical(data)


def parse_options(data: dict[str, Any]) -> tuple[RunOptions | None, list[str]]:
    """A request's options (any spelling: snake_case, camelCase, the admin panel's names),
    and every problem found. Fields that are not options (base_models, dataset, per_model,
    ...) must be taken out first."""
    canonical, problems = _canonical(data)
    try:
        options = RunOptions.model_validate(canonical)
    except ValidationError as exc:
        return None, problems + [_describe(e) for e in exc.errors(include_url=False)]
    return (None, problems) if problems else (options, [])


def parse_overrides(
    base: RunOptions, name: str, data: dict[str, Any]
) -> tuple[ModelOptions | None, list[str]]:
    """One model's options: `data` (per_model[name], any spelling) laid over the request's,
    nested lora and auto_stop field by field. Problems are located at per_model.<name>."""
    where = f"per_model.{name}"
    if not isinstance(data, dict):
        return None, [f"{where}: must be an object of options"]
    canonical, found = _canonical(data)
    problems = [f"{where}.{p}" for p in found]
    shared = sorted(set(canonical) & set(RUN_FIELDS))
    problems += [f"{where}.{f}: is the same for every model of a run" for f in shared]
    merged = base.model_dump(include=set(MODEL_FIELDS))
    for field, value in canonical.items():
        if field in shared:
            continue
        if field in ("lora", "auto_stop") and isinstance(value, dict):
            inherited = dict(merged.get(field) or {})
            if "scaling_factor" in value and "alpha" not in value:
                inherited.pop("alpha", None)  # the model's own factor sets its alpha
            value = {**inherited, **value}
        merged[field] = value
    try:
        options = ModelOptions.model_validate(merged)
    except ValidationError as exc:
        return None, problems + [_describe(e, where) for e in exc.errors(include_url=False)]
    return (None, problems) if problems else (options, [])


def build(
    options: RunOptions,
    keys: list[str],
    version: str,
    overrides: dict[str, ModelOptions] | None = None,
    requested_names: list[str] | None = None,
    display_names: dict[str, str] | None = None,
    language: str | None = None,
) -> RunSpec:
    """The spec of a run over the models `keys`, each with its overrides (by key) or the
    request's options."""
    overrides = overrides or {}
    shared = ModelOptions.model_validate(options.model_dump(include=set(MODEL_FIELDS)))
    return RunSpec(
        version=version,
        base_models=list(keys),
        requested_names=list(requested_names or []),
        display_names=dict(display_names or {}),
        models={key: overrides.get(key, shared) for key in keys},
        language=language,
        **{f: getattr(options, f) for f in RUN_FIELDS},
    )


# the old config's fields that are not options: the run's own, or kept in Run's columns
LEGACY_RUN_KEYS = {
    "version",
    "base_models",
    "requested_names",
    "display_names",
    "per_model",
    "dataset",
    "request_id",
    "priority",
    "language",
}


def from_legacy(config: dict[str, Any]) -> RunSpec:
    """The spec of a run stored before the spec existed: the request's fields at the top,
    per_model overrides by model key (oneseekd/intake/accept.py `_run_config`). Missing
    fields (runs queued before they existed) take their defaults."""
    try:
        keys = [str(k) for k in config["base_models"]]
        version = str(config["version"])
    except (KeyError, TypeError) as exc:
        raise SpecError(f"the run's stored config lacks {exc}") from exc
    fields = {k: v for k, v in config.items() if k not in LEGACY_RUN_KEYS}
    unknown = sorted(set(fields) - set(RunOptions.model_fields))
    if unknown:
        raise SpecError(
            f"the run's stored config has fields this oneseekd does not know "
            f"({', '.join(unknown)}): it was written by a newer version"
        )
    options, problems = parse_options(fields)
    overrides: dict[str, ModelOptions] = {}
    for key, override in (config.get("per_model") or {}).items():
        if options is not None:
            resolved, more = parse_overrides(options, str(key), override)
            problems += more
            if resolved is not None:
                overrides[str(key)] = resolved
    if options is None or problems:
        raise SpecError(f"the run's stored config is not valid: {'; '.join(problems)}")
    return build(
        options,
        keys,
        version,
        overrides,
        [str(n) for n in config.get("requested_names") or []],
        {str(k): str(v) for k, v in (config.get("display_names") or {}).items()},
        config.get("language"),
    )


def load(config: dict[str, Any]) -> RunSpec:
    """The spec of a run from its stored config, whichever version wrote it."""
    stored = config.get("spec_version")
    if stored is None:
        return from_legacy(config)
    if not isinstance(stored, int) or stored > SPEC_VERSION:
        raise SpecError(
            f"the run's spec has version {stored!r}, and this oneseekd reads up to "
            f"{SPEC_VERSION}: upgrade oneseekd to train it"
        )
    try:
        return RunSpec.model_validate(config)
    except ValidationError as exc:
        raise SpecError(
            "the run's stored spec is not valid: "
            + "; ".join(_describe(e) for e in exc.errors(include_url=False))
        ) from exc
