"""One model of a run: train it with the recipe, record its outputs and figures (rank 0),
or read back the figures of one an earlier attempt of the run trained and recorded."""

from __future__ import annotations

import gc
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import structlog
import torch
from sqlalchemy import Engine, select

from oneseekd import queue
from oneseekd.certify.current import current_adapter
from oneseekd.certify.ledger import Ledger
from oneseekd.certify.live import LiveMetrics
from oneseekd.certify.publish import publish
from oneseekd.certify.shipped import shipped_epoch
from oneseekd.config import CertifyConfig
from oneseekd.db.engine import read_session, write_session
from oneseekd.db.models import LedgerEvent, ModelTraining, utcnow
from oneseekd.errors import OneseekError
from oneseekd.trainer.checkpoint import Checkpoints, Position
from oneseekd.trainer.context import Progress, RunContext, this_attempt, update_training
from oneseekd.trainer.curves import Curves
from oneseekd.trainer.data import Records
from oneseekd.trainer.loading import Device
from oneseekd.trainer.measured import compare_with_current, held_out_samples
from oneseekd.trainer.outputs import save_model_outputs
from oneseekd.trainer.recipe import LoraRecipe, ModelResult, Placement, Reporting, Task
from oneseekd.trainer.tokcache import TokenCache
from oneseekd.trainer.world import World

log = structlog.get_logger("oneseekd.trainer")


class TrainingDiverged(OneseekError):
    """A loss that is not a finite number: nothing is certified from it."""


@dataclass(frozen=True)
class SharedRun:
    """What every model of a run trains with: the run, its data and split, where it trains,
    and where it reports."""

    engine: Engine
    ctx: RunContext
    ledger: Ledger
    records: Records
    parts: tuple[list[int], list[int]]  # train and validation record indices
    device: Device
    world: World
    progress: Progress
    live: LiveMetrics | None  # rank 0's live_metrics.json
    should_stop: Callable[[], bool]
    settings: CertifyConfig
    dataset_sha256: str = ""  # the bytes the records were read from (datahash.load_dataset)
    cache_bytes: int = 0  # [trainer] cache_bytes: the tokenization cache's bound
    # where the run's TensorBoard curves go (trainer/curves.py); None: it asked for none
    curves: Path | None = None


def train_one(run: SharedRun, key: str, position: int, row_id: int) -> ModelResult:
    """Train one model of the run (`position` in request order, its training row `row_id`),
    record its outputs and figures, and return them without its weights."""
    engine, ctx, ledger, world, live = run.engine, run.ctx, run.ledger, run.world, run.live
    records, device, settings = run.records, run.device, run.settings
    spec = next(m for m in ctx.models if m.key == key)
    if world.main:
        update_training(engine, row_id, state="training", started_at=utcnow())
    checkpoints = Checkpoints(ctx.home.root / "checkpoints" / ctx.run_id / key)
    reporting = Reporting(
        run.progress,
        run.should_stop,
        {"model_index": position + 1, "models": len(ctx.models)},
        # the phases after the last step, for the ETA (the current run's base is checked
        # when it is measured: a current adapter of this key is the estimate's signal)
        compares=settings.compare_with_current and current_adapter(ctx.home, key) is not None,
        samples=settings.sample_prompts > 0,
        grad_norms=run.curves is not None,
    )
    if live is not None:
        told = live  # for the closure: a name mypy sees is not None

        def on_epoch(key: str, pos: Position) -> None:
            told.epoch_end(
                key,
                list(pos.val_losses),
                bits_per_byte=[e.get("bits_per_byte") for e in pos.evals],
                step_losses=pos.step_losses,
            )

        reporting = replace(
            reporting, on_epoch=on_epoch, on_step=live.step, on_auto_stop=live.auto_stop
        )
    recipe = LoraRecipe(
        Task(
            spec,
            {**ctx.hyper(key), "eval_tokens": settings.eval_tokens},
            records,
            run.parts,
            ctx.dataset.name,
            run.dataset_sha256,
        ),
        Placement(
            device,
            checkpoints,
            world,
            ctx.home.cache,
            TokenCache(ctx.home.cache, run.cache_bytes),
        ),
        reporting,
    )
    recipe.setup()
    log.info(
        "model_training",
        model=key,
        targets=recipe.targets,
        steps=recipe.total_steps,
        resumed_at_step=recipe.position.step,
    )
    if run.curves is not None and world.main:
        recipe.curves = Curves(run.curves, key, recipe.position.step)
    try:
        result = recipe.train()
    finally:
        if recipe.curves is not None:
            recipe.curves.close()
    check_finite(result)
    result.evaluation["current"] = compare_with_current(recipe, spec, settings, ctx.home)
    result.evaluation["samples"] = held_out_samples(recipe, records, settings)
    if world.main:
        _record_model(engine, ctx, ledger, result, row_id)
        checkpoints.remove()
        if live is not None:
            live.shipped(key, shipped_epoch(result))
    if position < len(ctx.models) - 1:  # after the last model the others are done: released
        world.wait_for_main()  # the next model starts once this one's outputs are recorded
    log.info(
        "model_trained",
        model=key,
        val_loss=result.val_losses[shipped_epoch(result) - 1],
        shipped_epoch=shipped_epoch(result),
    )
    result = replace(result, model=None)  # free the weights before the next model
    recipe.cleanup()
    del recipe
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def _record_model(
    engine: Engine, ctx: RunContext, ledger: Ledger, result: ModelResult, row_id: int
) -> None:
    key = result.key
    with write_session(engine) as session:
        queue.check_claim(session, ctx.run_pk, this_attempt(), by="trainer")
        save_model_outputs(session, ledger, ctx, result)
        ledger.append(
            session,
            "model_trained",
            {
                "run_id": ctx.run_id,
                "model": key,
                "train_losses": result.train_losses,
                "val_losses": result.val_losses,
                "steps": result.steps,
                "tokens": result.tokens,
                "seconds": result.seconds,
                "padding_fraction": result.padding_fraction,
                "lora_targets": result.targets,
                "counts": result.counts,
                "evaluation": result.evaluation,
                "auto_stop": result.auto_stop,
                "quantization": result.quantization,
            },
            ctx.run_pk,
        )
        stop = result.auto_stop or {}
        if stop.get("stopped"):
            ledger.append(
                session,
                "model_auto_stopped",
                {
                    "run_id": ctx.run_id,
                    "model": key,
                    "epoch": stop["stopped_at_epoch"],
                    "best_val_loss": stop["best_val_loss"],
                    "threshold": stop["threshold"],
                    "patience": stop["patience"],
                    "min_epochs": stop["min_epochs"],
                },
                ctx.run_pk,
            )
        row = session.get_one(ModelTraining, row_id)
        row.state = "trained"
        row.epochs_done = len(result.val_losses)
        row.train_losses = result.train_losses
        row.val_losses = result.val_losses
        row.steps = result.steps
        row.tokens = result.tokens
        row.seconds = result.seconds
        row.finished_at = utcnow()
    publish(engine, ctx.home, ctx.run_pk)


def stored_result(engine: Engine, run_pk: int, row: ModelTraining) -> ModelResult:
    """A model trained by an earlier attempt or launch of this run: its figures, without the
    model. Those the row has no column for come from the model's signed `model_trained`
    event, so they are certified as the attempt that trained it measured them."""
    with read_session(engine) as session:
        payloads = session.scalars(
            select(LedgerEvent.payload).where(
                LedgerEvent.run_id == run_pk, LedgerEvent.event == "model_trained"
            )
        ).all()
    figures: dict[str, Any] = {}
    for payload in payloads:
        data = json.loads(payload)
        if data.get("model") == row.model_key:
            figures = data
    return ModelResult(
        row.model_key,
        list(row.train_losses or []),
        list(row.val_losses or []),
        row.steps,
        row.tokens,
        row.seconds,
        float(figures.get("padding_fraction", 0.0)),
        list(figures.get("lora_targets", [])),
        None,
        None,
        counts=dict(figures.get("counts", {})),
        evaluation=dict(figures.get("evaluation", {})),
        auto_stop=figures.get("auto_stop"),
        quantization=figures.get("quantization"),
    )


def check_finite(result: ModelResult) -> None:
    """Never a non-finite number into a certified file (JSON has none; a NaN loss would make
    every model's final weight NaN)."""
    for name, losses in (("training", result.train_losses), ("validation", result.val_losses)):
        for epoch, loss in enumerate(losses, start=1):
            if not math.isfinite(loss):
                raise TrainingDiverged(
                    f"{result.key}: the {name} loss of epoch {epoch} is {loss}: training "
                    "diverged, and nothing of it is certified",
                    ["submit the request again with a lower learning_rate"],
                )
