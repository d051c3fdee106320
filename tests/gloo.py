"""Ranks over gloo inside a test: `spawn(fn, 2, *args)` starts fn(*args) in two fresh
processes that joined one process group as torchrun's ranks would (World from join()), and
returns what each returned. The rank functions live here so that spawned processes import
them by name."""

from __future__ import annotations

import os
import pickle
import socket
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.multiprocessing as mp

from oneseekd import protocol
from oneseekd.trainer.checkpoint import Checkpoints
from oneseekd.trainer.context import ModelSpec
from oneseekd.trainer.data import Records, collate
from oneseekd.trainer.loading import Device
from oneseekd.trainer.recipe import LoraRecipe, Placement, Reporting, Task
from oneseekd.trainer.world import World, join, leave

CPU = Device("cpu", torch.float32, scaler=False)
HYPER: dict[str, Any] = {
    "epochs": 1,
    "batch_size": 2,
    "learning_rate": 1e-2,
    "seed": 3,
    "max_seq_len": 128,
    "gradient_accumulation_steps": 3,
    "warmup_ratio": 0.0,
    "checkpoint_every": 1000,
    "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": None},
    # exact arithmetic: "auto" would compute in bf16 on a CPU that has it natively
    "precision": "fp32",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rank(
    rank: int, size: int, port: int, timeout: float, out: Path, fn: Callable[..., Any], args: Any
) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(size),
    )
    os.environ[protocol.ENV_COLLECTIVE_TIMEOUT] = str(timeout)
    torch.set_num_threads(1)
    world = join()
    try:
        result = fn(world, *args)
    finally:
        leave(world)
    (out / f"rank-{rank}.pkl").write_bytes(pickle.dumps(result))


def spawn(
    fn: Callable[..., Any], size: int, out: Path, *args: Any, timeout: float = 60.0
) -> list[Any]:
    """fn(world, *args) on `size` gloo ranks (collective timeout `timeout` seconds); what
    each returned, by rank. A rank that raises fails the call with its traceback."""
    out.mkdir(parents=True, exist_ok=True)
    mp.start_processes(
        _rank,
        args=(size, _free_port(), timeout, out, fn, args),
        nprocs=size,
        start_method="spawn",
    )
    return [pickle.loads((out / f"rank-{r}.pkl").read_bytes()) for r in range(size)]


# --- recipes without a database ----------------------------------------------------------------
def recipe(
    model: Path,
    records: list[dict[str, Any]],
    folder: Path,
    world: World | None = None,
    **hyper: Any,
) -> LoraRecipe:
    """A LoRA recipe over the records, every one of them in training."""
    where = [f"line {i + 1}" for i in range(len(records))]
    lora = {**HYPER["lora"], **hyper.pop("lora", {})}
    return LoraRecipe(
        Task(
            ModelSpec("tiny-llama", "Tiny-Llama", model, ""),
            {**HYPER, **hyper, "lora": lora},
            Records(records, where),
            (list(range(len(records))), []),
        ),
        Placement(CPU, Checkpoints(folder), world or World()),
        Reporting(SimpleNamespace(report=lambda *a, **k: None)),  # type: ignore[arg-type]
    )


def window_gradients(
    world: World, model: Path, records: list[dict[str, Any]], batches: list[list[int]], out: Path
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """For each accumulation window of `batches`: the LoRA gradient the recipe steps with
    (before clipping), and the gradient of one batch of all the window's rows with the
    token-mean loss, taken from the same weights."""
    r = recipe(model, records, out / "checkpoints", world if world.distributed else None)
    r.setup()
    pad = int(r.tokenizer.pad_token_id)
    taken: list[torch.Tensor] = []
    clip = torch.nn.utils.clip_grad_norm_

    def record(params: Any, max_norm: float) -> Any:
        taken.append(torch.cat([p.grad.detach().flatten() for p in r.params]))
        return clip(params, max_norm)

    torch.nn.utils.clip_grad_norm_ = record  # type: ignore[assignment]
    pairs = []
    try:
        while r.position.batch < len(batches):
            first = r.position.batch
            rows = [i for b in batches[first : first + r.accum] for i in b]
            with r.net.no_sync() if world.distributed else nullcontext():
                r.net(**collate(r.train_data, rows, pad)).loss.backward()
            want = torch.cat([p.grad.detach().flatten() for p in r.params])
            r.optimizer.zero_grad(set_to_none=True)
            while not r._micro_step(batches, r.position, pad):
                pass
            pairs.append((taken[-1], want))
    finally:
        torch.nn.utils.clip_grad_norm_ = clip
    return pairs


def dropout_masks(world: World, model: Path, records: list[dict[str, Any]], out: Path) -> Any:
    """The mask this rank's first LoRA dropout draws right after setup."""
    r = recipe(model, records, out / "checkpoints", world, lora={"dropout": 0.5})
    r.setup()
    dropout = next(m for n, m in r.model.named_modules() if n.endswith("lora_dropout.default"))
    dropout.train()
    return (dropout(torch.ones(4096)) != 0).tolist()


def train_slowly_exported(
    world: World, root: Path, db_url: str, run_id: str, seconds: float
) -> str:
    """train_run, rank 0 taking `seconds` longer over each model's outputs (as an export of
    a large merged model does)."""
    import oneseekd.trainer.onemodel as onemodel
    import oneseekd.trainer.run as run
    from oneseekd.db.engine import make_engine
    from oneseekd.home import HomePaths

    save = onemodel.save_model_outputs

    def slow(*args: Any) -> Any:
        time.sleep(seconds)
        return save(*args)

    onemodel.save_model_outputs = slow
    engine = make_engine(db_url)
    try:
        return run.train_run(engine, HomePaths(root), run_id, world=world)
    finally:
        engine.dispose()
