"""The recipe's side of `keep` (trainer/keep.py decides which epoch ships): the best epoch's
LoRA weights kept beside the checkpoints as training goes, and put back into the model, on
every rank, when the shipped epoch is not the last."""

from __future__ import annotations

from typing import Any

import structlog
import torch

from oneseekd.trainer import keep, sharding
from oneseekd.trainer.checkpoint import Position
from oneseekd.trainer.loading import ModelRefused
from oneseekd.trainer.setup import RecipeSetup

log = structlog.get_logger("oneseekd.trainer")


class KeepsBestEpoch(RecipeSetup):
    def _keeps_best(self) -> bool:
        """Whether the best epoch's weights are kept: asked for (the default), and measured on
        held-out rows (without them, nothing tells the epochs apart)."""
        return self.hp.get("keep", "best") == "best" and self.held.source == "validation"

    def _lora(self) -> dict[str, torch.Tensor]:
        """The LoRA weights, whole, under the PEFT model's parameter names, on rank 0 ({} on
        the others; every rank gathers when the model is sharded)."""
        if self.sharded:
            return self._trainable()
        if not self.world.main:
            return {}
        return {
            name: p.detach().cpu().contiguous()
            for name, p in self.model.named_parameters()
            if p.requires_grad
        }

    def _keep_best(self, epoch: int) -> None:
        """Keep this epoch's LoRA weights beside the checkpoints, as the best so far."""
        lora = self._lora()
        if self.world.main:
            self.checkpoints.save_best(lora, epoch)

    def _ship(self, pos: Position) -> dict[str, Any]:
        """Decide which epoch the model ships (trainer/keep.py) and, when it is not the last,
        put its kept LoRA weights back into the model on every rank; returns `shipped`."""
        asked = str(self.hp.get("keep", "best"))
        stopped_at = self.auto_stop.stopped_at if self.auto_stop is not None else None
        last = len(pos.val_losses)
        epoch, reason = keep.choose(asked, self._keeps_best(), pos, stopped_at)
        if epoch != last:
            lora = self.checkpoints.load_best(epoch)  # every rank reads the whole file
            if self.world.any(lora is None):
                log.warning("best_epoch_lost", model=self.spec.key, epoch=epoch)
                epoch, reason = last, keep.gone(epoch)
            elif lora is not None:
                self._restore(lora)
        log.info("model_shipped", model=self.spec.key, epoch=epoch, epochs=last, reason=reason)
        return keep.shipped(epoch, last, asked, reason)

    def _restore(self, lora: dict[str, torch.Tensor]) -> None:
        """Kept LoRA weights (`_lora`'s) back into the model: into each rank's shards when it
        is sharded, else into every rank's whole copy."""
        params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        if set(lora) != set(params):
            raise ModelRefused(
                f"{self.spec.key}: the LoRA weights kept of its best epoch are not this model's "
                f"({len(lora)} tensors against {len(params)})",
                ["cancel the run and submit it again, to train it from the start"],
            )
        if self.sharded:
            prefix = "" if self.inner is self.model else "model."  # the chunked wrapper's
            sharding.load_trainable_state(self.inner, {prefix + k: v for k, v in lora.items()})
            return
        with torch.no_grad():
            for name, value in lora.items():
                params[name].copy_(value)

    def _trainable(self) -> dict[str, Any]:
        """The full LoRA weights of a sharded model (every rank gathers; rank 0 keeps them),
        under the PEFT model's names: gathered from the root FSDP sharded (the chunked-loss
        wrapper, when there is one, holds the PEFT model as `model`)."""
        state = sharding.trainable_state(self.inner)
        if self.inner is self.model:
            return state
        return {k.removeprefix("model."): v for k, v in state.items()}
