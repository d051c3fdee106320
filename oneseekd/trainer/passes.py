"""How a model's training step is run in the device's memory, decided from the memory plan
(spec/memory.py, spec/plan.py) before the first step: activation checkpointing (asked, or on
when a step without it would not fit) and then the rows of one forward and backward pass
(`micro_batch_size`: the whole batch, as asked, or with "auto" the largest share of it that
fits). The optimizer step is the same whatever is picked."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from oneseekd import gpus
from oneseekd.spec.memory import Held, Shape, step_bytes
from oneseekd.spec.plan import micro_batch
from oneseekd.trainer.loading import wants_checkpointing

log = structlog.get_logger("oneseekd.trainer")


@dataclass(frozen=True)
class Passes:
    checkpointing: bool
    micro: int  # rows of one pass


def plan_passes(
    hp: Mapping[str, Any],
    key: str,
    device: str,
    processes: int,
    weights: int,
    config: Mapping[str, Any],
    held: Held,
    memory: int | None,
) -> Passes:
    """The passes of one model's step on `device` ("cuda" or "cpu") with `memory` bytes (None:
    not known, as on a CPU), its base `weights` bytes held as `held`."""
    shape, seq = Shape.from_config(config), int(hp["max_seq_len"])
    chunked = bool(hp.get("chunked_loss", True))

    def need(rows: int, checkpointing: bool) -> int:  # a step, estimated (spec/memory.py)
        return step_bytes(weights, shape, rows * seq, held, checkpointing, chunked)

    # each GPU process takes its share of a batch's rows (World.shard); CPU processes share
    # one RAM, so there the whole batch counts
    batch = int(hp["batch_size"])
    if device == "cuda":
        batch = -(-batch // processes)
    checkpointing = wants_checkpointing(
        hp.get("gradient_checkpointing"), need(batch, False), memory
    )
    # a CPU plans its passes on the host's physical memory, as intake judged it
    room = memory if memory is not None or device != "cpu" else gpus.device_memory(0)
    asked = hp.get("micro_batch_size")
    micro = micro_batch(asked, batch, lambda rows: need(rows, checkpointing), room)
    if micro < batch:
        log.info(
            "micro_batch",
            model=key,
            batch_size=int(hp["batch_size"]),
            rows_per_process=batch,
            micro_batch_size=micro,
            passes=math.ceil(batch / micro),
            gradient_checkpointing=checkpointing,
            why="asked"
            if asked != "auto"
            else f"the plan: a step of {batch} rows would not fit the device's memory",
        )
    return Passes(checkpointing, micro)
