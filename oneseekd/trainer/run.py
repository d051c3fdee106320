"""One run end to end: every selected model in turn, then the certified outputs.

In a multi-process run every rank trains, and rank 0 alone writes: the database rows, live
metrics, the adapters, the ledger and the certified folder."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import structlog
import torch
from sqlalchemy import Engine

from oneseekd.certify.dna import base_weights_hash, canonical_hash
from oneseekd.certify.gate import not_current_note
from oneseekd.certify.layout import live_metrics_path, run_link
from oneseekd.certify.ledger import Ledger
from oneseekd.certify.live import LiveMetrics, claim_live_folder
from oneseekd.certify.publish import certified_dna, publish
from oneseekd.certify.shipped import shipped_epoch
from oneseekd.config import load_config
from oneseekd.db.engine import read_session
from oneseekd.db.models import Run, utcnow
from oneseekd.home import HomePaths
from oneseekd.spec.host import check
from oneseekd.spec.request import trained_config
from oneseekd.trainer import phases
from oneseekd.trainer.checkpoint import Checkpoints
from oneseekd.trainer.context import Progress, RunRefused, load_context, training_row
from oneseekd.trainer.curves import curves_path, relative_path, reports_curves
from oneseekd.trainer.data import duplicates, split
from oneseekd.trainer.datahash import dataset_unchanged, load_dataset
from oneseekd.trainer.loading import Device, pick_device
from oneseekd.trainer.measured import certify_run, trained_model
from oneseekd.trainer.onemodel import SharedRun, stored_result, train_one
from oneseekd.trainer.precision import host_facts
from oneseekd.trainer.recipe import ModelResult
from oneseekd.trainer.world import Relaunch, World

log = structlog.get_logger("oneseekd.trainer")


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
    problems = check(ctx.spec, host_facts())
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
        # intake's check again: oneseek-certified/<run_id> must be this run's live folder
        claim_live_folder(run_link(home, run_id), run_id)
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
    config = load_config(home.root)
    settings = config.certify
    live = (
        LiveMetrics(
            live_metrics_path(home, run_id),
            max(o.epochs for o in ctx.spec.models.values()),
            len(ctx.models),
            weighting,
            owner=run_id,
        )
        if world.main
        else None
    )
    progress = _LiveProgress(engine, ctx.run_pk, live)
    # TensorBoard curves: the request's report_to, else this home's [trainer] report_to
    reports = reports_curves(ctx.spec.report_to, config.trainer.report_to)
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
        trained_on,
        config.trainer.cache_bytes,
        curves_path(home, run_id) if reports else None,
    )
    results: dict[str, ModelResult] = {}
    for position, spec in enumerate(ctx.models):
        row = world.first(training_row, engine, ctx.run_pk, spec.key, position)
        if row.state == "trained":
            results[spec.key] = stored_result(engine, ctx.run_pk, row)
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
                live.shipped(spec.key, shipped_epoch(results[spec.key]))
            continue
        wanted = world.plan.get(spec.key, world.size)
        if wanted != world.size:
            raise Relaunch(f"{spec.key} trains with {wanted} processes, not {world.size}")
        results[spec.key] = train_one(shared, spec.key, position, row.id)
    if not world.main:
        return ""  # certifying is rank 0's alone
    # seconds to minutes (hashing every base model's weights): named, not estimated
    progress.report({"model": None, "state": "certifying", "phase": phases.CERTIFYING}, force=True)
    log.info("phase_started", phase=phases.CERTIFYING, models=len(ctx.models))
    certifying = time.monotonic()
    inputs = {
        "base_models": {m.key: base_weights_hash(m.path) for m in ctx.models},
        "dataset": dataset_unchanged(ctx, trained_on),
        # where the run reports is not what it trains: the same training, the same DNA
        "config": canonical_hash(trained_config(ctx.config)),
    }
    pulled = {
        m.key: {"repository": m.source_repository, "commit": m.source_commit}
        for m in ctx.models
        if m.source_repository
    }
    if pulled:  # models pulled from the Hub: which repository and commit each one was
        inputs["base_model_sources"] = pulled
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
        relative_path(run_id) if reports else None,
    )
    publish(engine, home, ctx.run_pk)
    checkpoints.remove()
    seconds = round(time.monotonic() - certifying, 2)
    log.info("phase_finished", phase=phases.CERTIFYING, seconds=seconds)
    note = not_current_note(verdict.as_dict())
    progress.report(
        {"model": None, "state": "certified", "dna": dna, "current": verdict.made_current}
        | ({"not_current": note} if note else {}),
        force=True,
    )
    log.info("training_completed", run_id=run_id, dna=dna)
    return dna
