"""Field types the request schema and the run spec share (kept apart so that
oneseekd/runspec.py and oneseekd/intake/schema.py do not import each other)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, cast

from pydantic import PlainValidator

from oneseekd.config import FSDP_AUTO_FRACTION

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
