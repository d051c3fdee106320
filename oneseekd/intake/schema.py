"""The request schema of CONTRACT.md section 4, and problems worded for the person who wrote it.

pydantic checks shapes, types and ranges and reports every problem at once; strict mode keeps
"3" from passing for 3 and true from passing for 1. camelCase spellings are accepted.
"""

from __future__ import annotations

import difflib
import re
from typing import Annotated, Any, Literal, cast

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    field_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import ErrorDetails

from oneseekd.config import FSDP_AUTO_FRACTION

VERSION = re.compile(r"^v?(\d{1,4})\.(\d{1,4})$")
# a run id asked for by name (CivicAI's RUN_ID, run-YYYY-MM-DD-HH-MM-SS): it names a folder
RUN_ID = r"^run-[A-Za-z0-9][A-Za-z0-9_-]{0,59}$"
MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]{0,99}$")

DEFAULTS: dict[str, Any] = {
    "epochs": 3,
    "batch_size": 8,
    "learning_rate": 1e-4,
    "seed": 42,
    "max_seq_len": 512,
    "gradient_accumulation_steps": 1,
    "warmup_ratio": 0.03,
    "val_fraction": 0.1,
    "checkpoint_every": 50,
    "lora": {"r": 8, "alpha": 32, "dropout": 0.1, "target_modules": None},
}


def _modules(value: list[str] | None) -> list[str] | None:
    if value is None:
        return None
    bad = [m for m in value if not MODULE_NAME.match(m)]
    if bad:
        raise ValueError(f"{', '.join(map(repr, bad))} is not a module name like q_proj")
    if len(set(value)) != len(value):
        raise ValueError("names a module twice")
    return value


Finite = float  # NaN and infinities are refused by the model config (allow_inf_nan=False)
Modules = Annotated[list[str] | None, Field(min_length=1, max_length=64), AfterValidator(_modules)]


def _gpus(value: Any) -> int | Literal["all"]:
    if value == "all" or (type(value) is int and 1 <= value <= 1024):
        return "all" if value == "all" else int(value)
    raise ValueError('must be a whole number of GPUs from 1 to 1024, or "all"')


# processes (one per GPU) a model trains with; "all" is every GPU of the host
Gpus = Annotated[int | Literal["all"], PlainValidator(_gpus)]


def _sharding(value: Any) -> Literal["ddp", "fsdp", "auto"]:
    if isinstance(value, str) and value in ("ddp", "fsdp", "auto"):
        return cast(Literal["ddp", "fsdp", "auto"], value)
    raise ValueError(
        'must be "ddp" (each GPU holds the whole model), "fsdp" (the GPUs share one copy, '
        f'for a model too large for one) or "auto" (fsdp when the weights take more than '
        f"{FSDP_AUTO_FRACTION:.0%} of one GPU's memory)"
    )


# how the processes of a multi-GPU model hold it (docs/training.md); one process ignores it
Sharding = Annotated[Literal["ddp", "fsdp", "auto"], PlainValidator(_sharding)]


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


class LoraOverride(_Strict):
    r: int | None = Field(None, ge=1, le=1024)
    alpha: int | None = Field(None, ge=1, le=8192)
    dropout: Finite | None = Field(None, ge=0, lt=1)
    target_modules: Modules = None


class LoraSettings(_Strict):
    r: int = Field(DEFAULTS["lora"]["r"], ge=1, le=1024)
    alpha: int = Field(DEFAULTS["lora"]["alpha"], ge=1, le=8192)
    dropout: Finite = Field(DEFAULTS["lora"]["dropout"], ge=0, lt=1)
    target_modules: Modules = None


class ModelOverrides(_Strict):
    learning_rate: Finite | None = Field(None, gt=0, le=1)
    epochs: int | None = Field(None, ge=1, le=1000)
    batch_size: int | None = Field(None, ge=1, le=4096)
    lora: LoraOverride | None = None
    gpus: Gpus | None = None
    sharding: Sharding | None = None
    train_on_prompt: bool | None = None


class TrainingRequestModel(_Strict):
    base_models: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        min_length=1, max_length=16
    )
    dataset: str = Field(min_length=1, max_length=1000)
    version: str | None = Field(None, max_length=20)
    epochs: int = Field(DEFAULTS["epochs"], ge=1, le=1000)
    batch_size: int = Field(DEFAULTS["batch_size"], ge=1, le=4096)
    learning_rate: Finite = Field(DEFAULTS["learning_rate"], gt=0, le=1)
    seed: int = Field(DEFAULTS["seed"], ge=0, le=2**32 - 1)
    max_seq_len: int = Field(DEFAULTS["max_seq_len"], ge=16, le=131072)
    gradient_accumulation_steps: int = Field(DEFAULTS["gradient_accumulation_steps"], ge=1, le=4096)
    warmup_ratio: Finite = Field(DEFAULTS["warmup_ratio"], ge=0, le=0.5)
    val_fraction: Finite = Field(DEFAULTS["val_fraction"], ge=0, le=0.5)
    checkpoint_every: int = Field(DEFAULTS["checkpoint_every"], ge=1, le=10_000_000)
    weighting: Literal["val_loss", "equal"] = "val_loss"
    # None: on when the base weights take a large share of the GPU (docs/training.md)
    gradient_checkpointing: bool | None = None
    # false: the loss is on the responses only (docs/training.md); true: on every token
    train_on_prompt: bool = False
    # which end a record longer than max_seq_len loses: "right" (the end) or "left" (the
    # start of the prompt, keeping the answer)
    truncation_side: Literal["right", "left"] = "right"
    export_merged: bool = False
    gpus: Gpus = 1
    sharding: Sharding = "ddp"
    lora: LoraSettings = LoraSettings()
    per_model: dict[Annotated[str, Field(min_length=1, max_length=200)], ModelOverrides] = Field(
        default_factory=dict, max_length=16
    )
    request_id: str | None = Field(None, min_length=1, max_length=200)
    priority: int = Field(0, ge=-100, le=100)
    # the run's id instead of a generated one (oneseek-certified/<run_id>/ while it trains)
    run_id: str | None = Field(None, pattern=RUN_ID)
    # what the model speaks, for metadata.json (CivicAI's --language); not a training option
    language: str | None = Field(None, pattern=r"^[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8})*$")

    @field_validator("version")
    @classmethod
    def _version(cls, value: str | None) -> str | None:
        if value is None:
            return None
        match = VERSION.match(value)
        if not match:
            raise ValueError("must be MAJOR.MINOR, like 1.0 or v1.1")
        return f"{int(match.group(1))}.{int(match.group(2))}"


KNOWN_FIELDS = sorted(TrainingRequestModel.model_fields)

# the fields of each nested object, by the name of the field that holds it
_NESTED: dict[str, type[_Strict]] = {"lora": LoraSettings, "per_model": ModelOverrides}


def _known_in(scope: str) -> list[str]:
    """The field names allowed where an unknown one was found ("" for the request itself)."""
    if not scope:
        return KNOWN_FIELDS
    head = scope.split(".")[-1]
    if head in _NESTED:
        return sorted(_NESTED[head].model_fields)
    parent = scope.split(".")[0]  # per_model.<name>: a model's overrides
    if parent == "per_model":
        return sorted(ModelOverrides.model_fields)
    return []


def did_you_mean(name: str, known: list[str]) -> str:
    """' (did you mean 'epochs'?)' for a close known name, else ''. camelCase is compared
    in snake_case, as the schema accepts both spellings."""
    snake = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()
    close = difflib.get_close_matches(snake, known, n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _where(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "request"


def _describe(error: ErrorDetails) -> str:
    where = _where(tuple(error["loc"]))
    kind = error["type"]
    given = error.get("input")
    if kind == "extra_forbidden":
        field = where.rsplit(".", 1)[-1]
        scope = where.rsplit(".", 1)[0] if "." in where else ""
        hint = did_you_mean(field, _known_in(scope))
        return f"unknown field {field!r}" + (f" in {scope}" if scope else "") + hint
    if kind == "missing":
        return f"{where} is required"
    shown = repr(given)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{where}: {message[0].lower()}{message[1:]} (got {shown})"


def _known_lists(errors: list[ErrorDetails]) -> list[str]:
    """The known fields, once per object that had an unknown one (not once per field)."""
    scopes: list[str] = []
    for error in errors:
        if error["type"] == "extra_forbidden":
            where = _where(tuple(error["loc"]))
            scope = where.rsplit(".", 1)[0] if "." in where else ""
            if scope not in scopes:
                scopes.append(scope)
    lines = []
    for scope in sorted(scopes):  # the request's own fields ("") first
        known = _known_in(scope)
        if known:
            lines.append(f"known fields{' of ' + scope if scope else ''}: {', '.join(known)}")
    return lines


def parse_request(data: Any) -> tuple[TrainingRequestModel | None, list[str]]:
    """The request and no problems, or None and every problem found."""
    if not isinstance(data, dict):
        return None, [f"a request is a JSON object, got {type(data).__name__}"]
    try:
        return TrainingRequestModel.model_validate(data), []
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        return None, [_describe(e) for e in errors] + _known_lists(errors)


def checkable_parts(data: Any) -> tuple[list[str] | None, str | None]:
    """The base model names and the dataset of a request the schema refused, where those two
    fields are well-formed themselves: the model and dataset checks run on them anyway, so
    that one verdict lists every problem (CONTRACT.md section 4)."""
    if not isinstance(data, dict):
        return None, None
    names = data.get("base_models", data.get("baseModels"))
    models: list[str] | None = None
    if (
        isinstance(names, list)
        and 1 <= len(names) <= 16
        and all(isinstance(n, str) and 1 <= len(n) <= 200 for n in names)
    ):
        models = list(names)
    dataset = data.get("dataset")
    if not isinstance(dataset, str) or not 1 <= len(dataset) <= 1000:
        dataset = None
    return models, dataset
