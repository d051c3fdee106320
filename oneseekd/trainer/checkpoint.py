"""Checkpoints: everything needed to go on exactly where training stopped.

A checkpoint is a folder `step-<n>` holding the LoRA weights, optimizer (8-bit state
included), scheduler and scaler states, the RNG states, and the position (state.json: the
epoch and the next batch, which is where an accumulation window starts, auto-stop's counters
and the name of the epoch's packed or grouped batch order). It is written under a temporary
name, fsynced, and renamed into place; `latest` (a small file naming the folder) is replaced
the same way, so a crash at any instant leaves the previous checkpoint usable.

Beside them, `best-e<n>.pt` holds the LoRA weights of epoch n, the best on held-out data so
far (`keep: "best"`, trainer/recipe.py): written whole before the checkpoint that names it
(`Position.best_epoch`), and removed once no kept checkpoint names it, so whichever checkpoint
a resume reads finds the best epoch it names.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import set_peft_model_state_dict

from oneseekd.certify.staging import fsync_dir, fsync_file, write_bytes

KEEP = 2  # checkpoints kept per model: the newest, and the one before in case it is damaged
NAME = re.compile(r"^step-(\d+)-e(\d+)b(\d+)$")
BEST = re.compile(r"^best-e(\d+)\.pt$")


@dataclass
class Position:
    epoch: int = 0  # the epoch in progress
    batch: int = 0  # the next batch of that epoch
    step: int = 0  # optimizer steps done over the whole training of this model
    loss_sum: float = 0.0  # this epoch so far, weighted by tokens
    loss_tokens: int = 0
    tokens_seen: int = 0
    labels_seen: int = 0  # the tokens the loss was taken over (tokens_seen counts all)
    seconds: float = 0.0  # training time of this model, over every attempt until this one
    train_losses: list[float] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)
    # the held-out evaluation (trainer/evaluate.py): the base model's figures, each epoch's,
    # and the training loss of every optimizer step
    base_eval: dict[str, Any] | None = None
    evals: list[dict[str, Any]] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)
    # auto-stop's counters (AutoStop.state_dict), None without auto-stop
    auto_stop: dict[str, Any] | None = None
    # the name of the epoch's batch order (batching.order_digest): a resume must see the same
    order: str = ""
    # the epoch (1-based) with the lowest held-out loss so far, whose LoRA weights are kept
    # beside the checkpoints (Checkpoints.save_best); 0: none kept
    best_epoch: int = 0


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        fsync_file(path)
    fsync_dir(folder)


def rng_state() -> dict[str, Any]:
    """This process's torch (and CUDA) random state."""
    rng: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


class Checkpoints:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _valid(self) -> list[Path]:
        """The checkpoint folders in place, oldest first (by step, epoch and batch)."""
        found = []
        for path in self.folder.glob("step-*") if self.folder.is_dir() else []:
            match = NAME.match(path.name)
            if match and (path / "state.json").is_file():
                found.append((tuple(int(g) for g in match.groups()), path))
        return [path for _, path in sorted(found)]

    def latest(self) -> Path | None:
        """The folder `latest` names; when it names none in place (a crash, a lost folder),
        the newest valid checkpoint there is, so training never silently starts over while
        an older kept checkpoint exists."""
        try:
            name = (self.folder / "latest").read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            name = ""
        path = self.folder / name
        if name and NAME.match(name) and (path / "state.json").is_file():
            return path
        valid = self._valid()
        return valid[-1] if valid else None

    def save(
        self,
        adapter: dict[str, torch.Tensor],
        optimizer: dict[str, Any],
        scheduler: Any,
        scaler: torch.amp.GradScaler | None,
        position: Position,
        ranks: list[dict[str, Any]] | None = None,
    ) -> Path:
        """Written by one process from the full LoRA tensors and the full optimizer state
        (gathered first when the model is sharded); `ranks` holds every rank's RNG state in a
        multi-process run."""
        self.folder.mkdir(parents=True, exist_ok=True)
        final = self.folder / f"step-{position.step:08d}-e{position.epoch}b{position.batch}"
        if (final / "state.json").is_file():
            # this very position is saved already (a stop on a checkpoint step): rewriting
            # it would first remove the folder `latest` names
            write_bytes(self.folder / "latest", final.name.encode())
            return final
        tmp = self.folder / f".{final.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        torch.save(adapter, tmp / "adapter.pt")
        torch.save(
            {
                "optimizer": optimizer,
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
            },
            tmp / "optimizer.pt",
        )
        rng = rng_state()
        if ranks is not None:
            rng["ranks"] = ranks
        torch.save(rng, tmp / "rng.pt")
        (tmp / "python_rng.json").write_text(json.dumps(random.getstate()))
        (tmp / "state.json").write_text(json.dumps(asdict(position)))
        _fsync_tree(tmp)
        shutil.rmtree(final, ignore_errors=True)  # a half-removed one, never a whole one
        os.rename(tmp, final)
        write_bytes(self.folder / "latest", final.name.encode())
        self._prune(final)
        return final

    def _prune(self, keep: Path) -> None:
        kept = {*self._valid()[-KEEP:], keep}
        for old in self.folder.glob("step-*"):
            if old.is_dir() and old not in kept:
                shutil.rmtree(old, ignore_errors=True)
        named = {_best_epoch(path) for path in kept}
        for old in self.folder.glob("best-e*.pt"):
            match = BEST.match(old.name)
            if match and int(match.group(1)) not in named:
                old.unlink(missing_ok=True)

    def best_path(self, epoch: int) -> Path:
        return self.folder / f"best-e{epoch}.pt"

    def save_best(self, lora: dict[str, torch.Tensor], epoch: int) -> Path:
        """The LoRA weights of `epoch`, the best so far (under the PEFT model's parameter
        names, whole), written under a temporary name, fsynced and renamed into place. Called
        before the checkpoint that names the epoch is saved: a crash in between leaves the
        previous checkpoint, whose best file is still there."""
        self.folder.mkdir(parents=True, exist_ok=True)
        final = self.best_path(epoch)
        tmp = self.folder / f".{final.name}.tmp"
        torch.save(lora, tmp)
        fsync_file(tmp)
        os.replace(tmp, final)
        fsync_dir(self.folder)
        return final

    def load_best(self, epoch: int) -> dict[str, torch.Tensor] | None:
        """The kept LoRA weights of `epoch` (on the CPU), or None when they are not there."""
        path = self.best_path(epoch)
        if not path.is_file():
            return None
        state: dict[str, torch.Tensor] = torch.load(path, map_location="cpu", weights_only=True)
        return state

    @staticmethod
    def load_adapter(path: Path, model: Any, device: str) -> None:
        """The LoRA weights, into the model before it is wrapped or sharded."""
        adapter = torch.load(path / "adapter.pt", map_location=device, weights_only=True)
        set_peft_model_state_dict(model, adapter)

    def load(
        self,
        path: Path,
        optimizer: Callable[[dict[str, Any]], None],
        scheduler: Any,
        scaler: torch.amp.GradScaler | None,
        device: str,
        rank: int = 0,
        world_size: int = 1,
    ) -> Position:
        """Everything but the LoRA weights (load_adapter); `optimizer` takes the full
        optimizer state (each rank keeps its shard of it when the model is sharded)."""
        states = torch.load(path / "optimizer.pt", map_location=device, weights_only=True)
        optimizer(states["optimizer"])
        scheduler.load_state_dict(states["scheduler"])
        if scaler is not None and states["scaler"] is not None:
            scaler.load_state_dict(states["scaler"])
        rng = torch.load(path / "rng.pt", weights_only=True)
        if world_size > 1 and len(rng.get("ranks", [])) == world_size:
            rng = rng["ranks"][rank]  # each rank goes on with its own dropout masks
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        state = json.loads((path / "python_rng.json").read_text())
        random.setstate((state[0], tuple(state[1]), state[2]))
        return Position(**json.loads((path / "state.json").read_text()))

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _best_epoch(checkpoint: Path) -> int:
    """The best epoch a checkpoint names (0: none, or unreadable)."""
    try:
        return int(json.loads((checkpoint / "state.json").read_text()).get("best_epoch", 0))
    except (OSError, ValueError, TypeError, AttributeError):
        return 0
