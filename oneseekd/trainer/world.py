"""The processes of one training: a single one, or the ranks torchrun started (one per GPU).

Every rank runs the same loop on its own share of each batch; DistributedDataParallel averages
the gradients. Rank 0 alone writes (checkpoints, progress, artifacts, the ledger); the others
wait for it at barriers. On a host without CUDA the ranks talk over gloo, which is how the
multi-GPU path is tested without a GPU. Every collective gives up after the process group's
timeout, so a rank that died or hung ends the run instead of stalling it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from oneseekd import protocol
from oneseekd.config import DEFAULT_COLLECTIVE_TIMEOUT_SECONDS

T = TypeVar("T")
# How long the other ranks wait while rank 0 alone records a model's outputs (under FSDP with
# export_merged that means loading the whole base again on the CPU): far longer than a hung
# collective should be given, so that wait has a process group of its own. A rank 0 that dies
# meanwhile is seen by torchrun at once, which stops the others.
OUTPUTS_WAIT_SECONDS = 6 * 3600


class Relaunch(Exception):
    """The next model asks for another number of processes than this launch has."""


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    plan: dict[str, int] = field(default_factory=dict)  # processes per model key
    # a gloo group of every rank, with OUTPUTS_WAIT_SECONDS as its timeout (wait_for_main)
    slow: Any = field(default=None, compare=False)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def _device(self) -> str:
        return "cuda" if dist.get_backend() == "nccl" else "cpu"

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def wait_for_main(self) -> None:
        """Wait while rank 0 works alone for long (a model's outputs, an export): a barrier
        on the gloo group made for it, on the CPU, out of reach of the collective timeout
        (and of NCCL's watchdog, which sees no pending collective meanwhile)."""
        if self.distributed:
            dist.barrier(group=self.slow)

    def sum(self, values: list[float]) -> list[float]:
        """Each value summed over the ranks (float64, so token counts stay exact)."""
        if not self.distributed:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self._device())
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return [float(v) for v in tensor.tolist()]

    def any(self, flag: bool) -> bool:
        """Whether any rank says so: a stop request reaches the ranks at different moments,
        and they must all stop at the same step."""
        return self.sum([1.0 if flag else 0.0])[0] > 0 if self.distributed else flag

    def gather(self, value: Any) -> list[Any]:
        if not self.distributed:
            return [value]
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, value)
        return out

    def first(self, fn: Callable[..., T], *args: Any) -> T:
        """fn on rank 0 first (it may write), then on the others (which then only read)."""
        if self.main:
            result = fn(*args)
        self.barrier()
        if not self.main:
            result = fn(*args)
        return result

    def shard(self, indices: list[int]) -> tuple[list[int], float]:
        """This rank's share of a batch and its weight: a rank left without rows (a batch
        smaller than the world) runs the first row with weight 0, since DDP needs every rank
        in every backward pass."""
        mine = indices[self.rank :: self.size]
        return (mine, 1.0) if mine else (indices[:1], 0.0)

    def wrap(self, model: Any) -> Any:
        """The model as the training forward pass calls it: under DDP when distributed."""
        if not self.distributed:
            return model
        if self._device() == "cuda":
            return DistributedDataParallel(model, device_ids=[self.local_rank])
        return DistributedDataParallel(model)


def join(env: dict[str, str] | None = None, backend: str | None = None) -> World:
    """The world torchrun's environment describes, its process group joined over `backend`
    (the run's ddp_backend; None: nccl on GPUs, gloo on CPUs); one process (nothing joined)
    when started without torchrun."""
    env = dict(os.environ) if env is None else env
    plan = {k: int(v) for k, v in json.loads(env.get(protocol.ENV_WORLD_SIZES, "{}")).items()}
    size = int(env.get("WORLD_SIZE", "1"))
    if size == 1:
        return World(plan=plan)
    rank, local_rank = int(env["RANK"]), int(env["LOCAL_RANK"])
    timeout = float(env.get(protocol.ENV_COLLECTIVE_TIMEOUT, DEFAULT_COLLECTIVE_TIMEOUT_SECONDS))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)  # "cuda" now means this rank's GPU
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout))
    slow = dist.new_group(backend="gloo", timeout=timedelta(seconds=OUTPUTS_WAIT_SECONDS))
    return World(rank, size, local_rank, plan, slow)


def leave(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()
