"""The types of option values: what the request schema and the run spec check field by
field (kept apart so that oneseekd/spec/request.py and oneseekd/intake/schema.py do not import each
other), and what the trainer reads them as."""

from __future__ import annotations

import difflib
import re
from typing import Annotated, Any, Literal, cast, get_args

from pydantic import BeforeValidator, PlainValidator

from oneseekd.spec import REPORTERS

# sharding "auto" shards a model whose weights take more than this share of one GPU's memory
FSDP_AUTO_FRACTION = 0.5

MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]{0,99}$")


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


Scheduler = Literal[
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "cosine_with_min_lr",
]
Optimizer = Literal["adamw_torch", "adamw_8bit", "paged_adamw_8bit", "sgd", "adafactor"]
SCHEDULERS: tuple[str, ...] = get_args(Scheduler)  # the names a request may give
OPTIMIZERS: tuple[str, ...] = get_args(Optimizer)


def _targets(value: Any) -> Any:
    """A list of module names, the admin panel's comma string, or "all-linear"."""
    given = value
    if isinstance(value, str) and value != "all-linear":
        value = [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list):
        bad = [m for m in value if not (isinstance(m, str) and MODULE_NAME.match(m))]
        if bad and isinstance(given, list) and all(isinstance(m, str) for m in bad):
            # a list's offenders are named; a comma string is shown whole below
            raise ValueError(f"{', '.join(map(repr, bad))} is not a module name like q_proj")
        if bad or not value:
            raise ValueError(
                'must name modules like "q_proj,v_proj" (a list or a comma string) or be '
                '"all-linear"'
            )
        if len(set(value)) != len(value):
            raise ValueError("names a module twice")
    return value


MEMORY_UNITS = {"GB": 10**9, "GiB": 2**30, "MB": 10**6, "MiB": 2**20}


def memory_bytes(text: str) -> int:
    """A max_memory_per_gpu value ("9.5GB", "20GiB", "800MiB") in bytes: GB and MB are
    decimal, GiB and MiB binary, as transformers' max_memory reads them."""
    for unit, size in MEMORY_UNITS.items():
        if text.endswith(unit):
            return int(float(text.removesuffix(unit)) * size)
    raise ValueError(f"{text!r} is not a size like 9.5GB or 20GiB")


Targets = Annotated[list[str] | Literal["all-linear"] | None, BeforeValidator(_targets)]
SIZE = re.compile(r"^\d{1,6}(\.\d{1,3})?(GB|GiB|MB|MiB)$")


def _memory(value: Any) -> Any:
    if value is not None and not (isinstance(value, str) and SIZE.match(value)):
        raise ValueError('must be a size like "9.5GB" or "20GiB" (GB, GiB, MB or MiB)')
    return value


Memory = Annotated[str | None, BeforeValidator(_memory)]


def _micro_batch(value: Any) -> int | Literal["auto"] | None:
    if value is None or value == "auto":
        return cast(Literal["auto"] | None, value)
    if isinstance(value, str) and value.isdigit():  # a flag's value
        value = int(value)
    if type(value) is int and 1 <= value <= 4096:
        return value
    raise ValueError(
        'must be a whole number of rows from 1 to 4096, or "auto" (the largest share of '
        "batch_size whose step fits the GPU, with the same effective batch)"
    )


# rows a batch is split into for the forward and backward passes (gradient accumulation
# within the batch: the optimizer step is the same); None: the whole batch at once
MicroBatch = Annotated[int | Literal["auto"] | None, PlainValidator(_micro_batch)]


def _report_to(value: Any) -> list[str] | None:
    """A list of reporters, one reporter's name, or "none" (an empty list); None: the home's
    `[trainer] report_to`."""
    if value is None:
        return None
    if value == "none":
        return []
    names = [value] if isinstance(value, str) else value
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise ValueError(
            'must be a list of reporters like ["tensorboard"], one reporter\'s name, or "none"'
        )
    for name in names:
        if name not in REPORTERS:
            close = difflib.get_close_matches(name.lower(), REPORTERS, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(
                f"{name!r} is not a reporter oneseekd writes{hint}; known: {', '.join(REPORTERS)}"
            )
    if len(set(names)) != len(names):
        raise ValueError("names a reporter twice")
    return list(names)


# where a run reports its curves (trainer/curves.py); None: the home's [trainer] report_to.
# Not a training option: it changes no weight, so the DNA does not hash it (request.py)
ReportTo = Annotated[list[str] | None, PlainValidator(_report_to)]
