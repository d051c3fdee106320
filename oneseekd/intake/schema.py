"""The request schema of CONTRACT.md section 4, and problems worded for the person who wrote it.

pydantic checks shapes, types and ranges and reports every problem at once; strict mode keeps
"3" from passing for 3 and true from passing for 1. camelCase spellings are accepted.
"""

from __future__ import annotations

import difflib
import re
from typing import Annotated, Any

from pydantic import Field, ValidationError, field_validator
from pydantic_core import ErrorDetails

from oneseekd.spec.fields import MODULE_NAME, Gpus, Sharding
from oneseekd.spec.request import (
    AutoStopOptions,
    LoraOptions,
    ModelOptions,
    RunOptions,
    normalize_options,
    parse_overrides,
)

__all__ = ["MODULE_NAME", "Gpus", "Sharding", "TrainingRequestModel", "parse_request"]

VERSION = re.compile(r"^v?(\d{1,4})\.(\d{1,4})$")
# a run id asked for by name (CivicAI's RUN_ID, run-YYYY-MM-DD-HH-MM-SS): it names a folder
RUN_ID = r"^run-[A-Za-z0-9][A-Za-z0-9_-]{0,59}$"

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


class TrainingRequestModel(RunOptions):
    """A request: every option of the run spec (oneseekd/spec/request.py RunOptions, so there is
    one list of them), and the fields that say what to train and how to file it."""

    base_models: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        min_length=1, max_length=16
    )
    dataset: str = Field(min_length=1, max_length=1000)
    version: str | None = Field(None, max_length=20)
    # each model's own options (any of the request's model options), by the name it was asked by;
    # parse_request resolves and checks them with spec.request.parse_overrides
    # (Any: a non-object is reported by parse_overrides; once parsed, each is a ModelOptions)
    per_model: dict[Annotated[str, Field(min_length=1, max_length=200)], Any] = Field(
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
# the order problems are reported in: what to train first, then the options in the order
# requests had them before the run spec, then the spec's newer ones; unknown fields last
_ORDER = [
    *("base_models", "dataset", "version", "epochs", "batch_size", "learning_rate", "seed"),
    *("max_seq_len", "gradient_accumulation_steps", "warmup_ratio", "val_fraction"),
    *("checkpoint_every", "weighting", "gradient_checkpointing", "train_on_prompt"),
    *("truncation_side", "export_merged", "gpus", "sharding", "lora", "per_model"),
    *("request_id", "priority", "run_id", "language"),
]
_ORDER += [f for f in TrainingRequestModel.model_fields if f not in _ORDER]


def _rank(error: ErrorDetails) -> int:
    loc = tuple(error["loc"])
    if not loc or (error["type"] == "extra_forbidden" and len(loc) == 1):
        return len(_ORDER)
    return _ORDER.index(str(loc[0])) if loc[0] in _ORDER else len(_ORDER)


# the fields of each nested object, by the name of the field that holds it
_NESTED: dict[str, type[Any]] = {
    "lora": LoraOptions,
    "auto_stop": AutoStopOptions,
    "per_model": ModelOptions,
}


def _known_in(scope: str) -> list[str]:
    """The field names allowed where an unknown one was found ("" for the request itself)."""
    if not scope:
        return KNOWN_FIELDS
    head = scope.split(".")[-1]
    if head in _NESTED:
        return sorted(_NESTED[head].model_fields)
    parent = scope.split(".")[0]  # per_model.<name>: a model's overrides
    if parent == "per_model":
        return sorted(ModelOptions.model_fields)
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
    """The request and no problems, or None and every problem found. Any spelling of an
    option is read (snake_case, camelCase, the admin panel's names: oneseekd/spec/names.py)."""
    if not isinstance(data, dict):
        return None, [f"a request is a JSON object, got {type(data).__name__}"]
    canonical, problems = normalize_options(data)
    try:
        request = TrainingRequestModel.model_validate(canonical)
    except ValidationError as exc:
        errors = sorted(exc.errors(include_url=False), key=_rank)
        return None, problems + [_describe(e) for e in errors] + _known_lists(errors)
    resolved, more = resolve_per_model(request)
    problems += more
    if problems:
        return None, problems
    # each model's options resolved once: what the spec and the GPU checks read
    return request.model_copy(update={"per_model": resolved}), []


def resolve_per_model(
    request: TrainingRequestModel,
) -> tuple[dict[str, ModelOptions], list[str]]:
    """Each per_model entry (as the request gave it) laid over the request's options, by
    the name it was given under, and every problem of them."""
    resolved: dict[str, ModelOptions] = {}
    problems: list[str] = []
    for name, data in request.per_model.items():
        options, more = parse_overrides(request, name, data)
        problems += more
        if options is not None:
            resolved[name] = options
    return resolved, problems


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
