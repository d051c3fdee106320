"""One run end to end: every selected model in turn, then the certified outputs.

In a multi-process run every rank trains, and rank 0 alone writes: the database rows, live
metrics, the adapters, the ledger and the certified folder."""

from __future__ import annotations

import gc
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
import torch
from sqlalchemy import Engine, select

from oneseekd.certify.dna import base_weights_hash, canonical_hash, dataset_hash
from oneseekd.certify.gate import not_current_note
from oneseekd.certify.layout import live_metrics_path
from oneseekd.certify.ledger import Ledger
from oneseekd.certify.live import LiveMetrics
from oneseekd.certify.publish import certified_dna, publish
from oneseekd.certify.staging import write_json
from oneseekd.config import CertifyConfig, load_config
from oneseekd.db.engine import read_session, write_session
from oneseekd.db.models import LedgerEvent, ModelTraining, Run, utcnow
from oneseekd.errors import OneseekError
from oneseekd.home import HomePaths
from oneseekd.trainer.checkpoint import Checkpoints
from oneseekd.trainer.context import (
    Progress,
    RunContext,
    RunRefused,
    check_claim,
    load_context,
    this_attempt,
    training_row,
    update_training,
)
from oneseekd.trainer.data import Records, duplicates, load_records, split
from oneseekd.trainer.loading import Device, pick_device
from oneseekd.trainer.measured import (
    certify_run,
    compare_with_current,
    held_out_samples,
    trained_model,
)
from oneseekd.trainer.outputs import save_model_outputs
from oneseekd.trainer.precision import host_facts
from oneseekd.trainer.recipe import LoraRecipe, ModelResult
from oneseekd.trainer.world import Relaunch, World

log = structlog.get_logger("oneseekd.trainer")


class TrainingDiverged(OneseekError):
    """A loss that is not a finite number: nothing is certified from it."""


def _stored_result(engine: Engine, run_pk: int, row: ModelTraining) -> ModelResult:
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


def _check_finite(result: ModelResult) -> None:
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


class _LiveProgress(Progress):
    """Progress on the run row, and the same report into live_metrics.json (rank 0's)."""

    def __init__(self, engine: Engine, run_pk: int, live: LiveMetrics | None) -> None:
        super().__init__(engine, run_pk)
        self.live = live

    def report(self, data: dict[str, Any], *, force: bool = False) -> None:
        before = self._last
        super().report(data, force=force)
        # the same throttle: live_metrics.json is rewritten at each update the row gets
        if self.live is not None and data.get("model") and self._last != before:
            self.live.progress(data)


def load_dataset(ctx: RunContext) -> tuple[Records, str]:
    """The records and the sha256 of the bytes they were read from: the hash the DNA carries.

    The first attempt of a run keeps the hash in checkpoints/<run_id>/dataset.json; a later
    attempt must read the same bytes, or it would go on training on other data."""
    name = ctx.dataset.name
    before = dataset_hash(ctx.dataset)
    records = load_records(ctx.dataset)
    sha = dataset_hash(ctx.dataset)
    if sha != before:
        raise RunRefused(
            f"run {ctx.run_id} cannot train",
            [f"dataset {name} changed while it was being read; write it whole, then submit"],
        )
    kept = ctx.home.root / "checkpoints" / ctx.run_id / "dataset.json"
    if kept.is_file():
        earlier = str(json.loads(kept.read_text(encoding="utf-8"))["sha256"])
        if earlier != sha:
            raise RunRefused(
                f"run {ctx.run_id} cannot resume",
                [_changed(name, earlier, sha)],
            )
    else:
        kept.parent.mkdir(parents=True, exist_ok=True)
        write_json(kept, {"dataset": name, "sha256": sha})
    return records, sha


def _changed(name: str, trained: str, now: str) -> str:
    return (
        f"dataset {name} changed during training (sha256 {trained[:12]}… was trained on, "
        f"{now[:12]}… is there now); submit the request again to train on what it holds now"
    )


def _dataset_unchanged(ctx: RunContext, trained: str) -> str:
    """The trained-on hash, once the file is shown to still hold those bytes: nothing is
    certified under contents it did not train on, or under contents no one can check."""
    try:
        now = dataset_hash(ctx.dataset)
    except FileNotFoundError:
        gone = f"dataset {ctx.dataset.name} is gone from {ctx.dataset.parent}/ since it was read"
        raise RunRefused(f"run {ctx.run_id} cannot be certified", [gone]) from None
    if now != trained:
        raise RunRefused(
            f"run {ctx.run_id} cannot be certified", [_changed(ctx.dataset.name, trained, now)]
        )
    return trained


def train_run(
    engine: Engine,
    home: HomePaths,
    run_id: str,
    *,
    should_stop: Callable[[], bool] = lambda: False,
    device: Device | None = None,
    world: World | None = None,
) -> str:
    """Train every model of the run and certify it; returns the DNA (on rank 0; "" on the
    others). Raises Stopped (after a checkpoint) when should_stop() turns true, and Relaunch
    when the next model asks for another number of processes than this launch has."""
    device = device or pick_device()
    world = world or World()
    ctx = load_context(engine, home, run_id)
    # intake's check again, with what torch sees of this host: nothing is loaded that cannot run
    problems = ctx.spec.check(host_facts())
    if problems:
        raise RunRefused(f"run {run_id} cannot train on this host", problems)
    checkpoints = Checkpoints(home.root / "checkpoints" / run_id)
    done = certified_dna(engine, ctx.run_pk)
    if done is not None:  # certified by an attempt that stopped before publishing
        if not world.main:
            return ""
        publish(engine, home, ctx.run_pk)
        checkpoints.remove()
        return done
    if world.main:
        publish(engine, home, ctx.run_pk)  # models an earlier attempt committed
    world.barrier()
    ledger = Ledger.for_home(engine, home)
    # rank 0 keeps the hash first; the others then hold their bytes to it
    records, trained_on = world.first(load_dataset, ctx)
    seed = ctx.spec.seed
    train_idx, val_idx = split(records.items, ctx.spec.val_fraction, seed)
    with read_session(engine) as session:
        started = session.get_one(Run, ctx.run_pk).started_at or utcnow()
    weighting = ctx.spec.weighting
    settings = load_config(home.root).certify
    live = (
        LiveMetrics(
            live_metrics_path(home, run_id),
            max(o.epochs for o in ctx.spec.models.values()),
            len(ctx.models),
            weighting,
        )
        if world.main
        else None
    )
    progress = _LiveProgress(engine, ctx.run_pk, live)
    log.info(
        "training_started",
        run_id=run_id,
        device=device.name,
        rank=world.rank,
        processes=world.size,
        threads=torch.get_num_threads(),
        models=[m.key for m in ctx.models],
        records=len(records),
        val=len(val_idx),
        duplicates=duplicates(records.items),
    )
    shared = SharedRun(
        engine,
        ctx,
        ledger,
        records,
        (train_idx, val_idx),
        device,
        world,
        progress,
        live,
        should_stop,
        settings,
    )
    results: dict[str, ModelResult] = {}
    for position, spec in enumerate(ctx.models):
        row = world.first(training_row, engine, ctx.run_pk, spec.key, position)
        if row.state == "trained":
            results[spec.key] = _stored_result(engine, ctx.run_pk, row)
            if live is not None:
                ev = results[spec.key].evaluation
                live.epoch_end(
                    spec.key,
                    row.val_losses or [],
                    row.train_losses or [],
                    [e.get("bits_per_byte") for e in ev.get("epochs", [])],
                    list(ev.get("step_losses", [])),
                )
                if results[spec.key].auto_stop:
                    live.auto_stop(spec.key, results[spec.key].auto_stop or {})
            continue
        wanted = world.plan.get(spec.key, world.size)
        if wanted != world.size:
            raise Relaunch(f"{spec.key} trains with {wanted} processes, not {world.size}")
        results[spec.key] = _train_one(shared, spec.key, position, row.id)
    if not world.main:
        return ""  # certifying is rank 0's alone
    progress.report({"model": None, "state": "certifying"}, force=True)  # seconds, named
    inputs = {
        "base_models": {m.key: base_weights_hash(m.path) for m in ctx.models},
        "dataset": _dataset_unchanged(ctx, trained_on),
        "config": canonical_hash(ctx.config),
    }
    held = {k: r.quantization for k, r in results.items() if r.quantization}
    if held:  # the DNA names how each quantized base was held (the config says what was asked)
        inputs["quantization"] = held
    dna, verdict = certify_run(
        engine,
        ledger,
        ctx,
        [trained_model(spec, results[spec.key]) for spec in ctx.models],
        inputs,
        {
            "train": len(train_idx),
            "validation": len(val_idx),
            "duplicates": duplicates(records.items),
        },
        started,
        settings,
    )
    publish(engine, home, ctx.run_pk)
    checkpoints.remove()
    note = not_current_note(verdict.as_dict())
    progress.report(
        {"model": None, "state": "certified", "dna": dna, "current": verdict.made_current}
        | ({"not_current": note} if note else {}),
        force=True,
    )
    log.info("training_completed", run_id=run_id, dna=dna)
    return dna


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


def _train_one(run: SharedRun, key: str, position: int, row_id: int) -> ModelResult:
    """Train one model of the run (`position` in request order, its training row `row_id`),
    record its outputs and figures, and return them without its weights."""
    engine, ctx, ledger, world, live = run.engine, run.ctx, run.ledger, run.world, run.live
    records, device, settings = run.records, run.device, run.settings
    spec = next(m for m in ctx.models if m.key == key)
    if world.main:
        update_training(engine, row_id, state="training", started_at=utcnow())
    checkpoints = Checkpoints(ctx.home.root / "checkpoints" / ctx.run_id / key)
    recipe = LoraRecipe(
        spec,
        {**ctx.hyper(key), "eval_tokens": settings.eval_tokens},
        records,
        run.parts,
        device,
        checkpoints,
        run.progress,
        run.should_stop,
        {"model_index": position + 1, "models": len(ctx.models)},
        on_epoch=lambda k, v: None,
        world=world,
        dataset=ctx.dataset.name,
        on_auto_stop=(lambda k, v: None) if live is None else live.auto_stop,
    )
    if live is not None:
        told = live  # for the closure: a name mypy sees is not None

        def on_epoch(key: str, val_losses: list[float], r: LoraRecipe = recipe) -> None:
            told.epoch_end(
                key,
                val_losses,
                bits_per_byte=[e.get("bits_per_byte") for e in r.position.evals],
                step_losses=r.position.step_losses,
            )

        recipe.on_epoch = on_epoch
        recipe.on_step = live.step
    recipe.setup()
    log.info(
        "model_training",
        model=key,
        targets=recipe.targets,
        steps=recipe.total_steps,
        resumed_at_step=recipe.position.step,
    )
    result = recipe.train()
    _check_finite(result)
    result.evaluation["current"] = compare_with_current(recipe, spec, settings, ctx.home)
    result.evaluation["samples"] = held_out_samples(recipe, records, settings)
    if world.main:
        _record_model(engine, ctx, ledger, result, row_id)
        checkpoints.remove()
    if position < len(ctx.models) - 1:  # after the last model the others are done: released
        world.wait_for_main()  # the next model starts once this one's outputs are recorded
    log.info("model_trained", model=key, val_loss=result.val_losses[-1])
    result.model = None  # free the weights before the next model
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
        check_claim(session, ctx.run_pk, this_attempt())
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
