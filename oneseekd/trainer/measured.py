"""What a run's certification measures and decides beside training: the held-out figures
of each model handed to certify/ (with its samples and the current model's figures on the
same rows), and the gate (certify/gate.py) applied before anything is certified."""

from __future__ import annotations

from dataclasses import fields
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import Engine, select

from oneseekd import queue
from oneseekd.certify.certified import (
    Certification,
    Figures,
    TrainedModel,
    certify,
    weighed,
)
from oneseekd.certify.current import current_adapter
from oneseekd.certify.dna import base_weights_hash, final_weights
from oneseekd.certify.gate import HeldOutSize, Verdict, judge, refuse
from oneseekd.certify.ledger import Ledger
from oneseekd.config import CertifyConfig
from oneseekd.db.engine import write_session
from oneseekd.db.models import Artifact, ModelTraining, utcnow
from oneseekd.home import HomePaths
from oneseekd.trainer import phases
from oneseekd.trainer.context import ModelSpec, RunContext, this_attempt
from oneseekd.trainer.data import Records
from oneseekd.trainer.evaluate import measure_adapter, sample_prompts, samples
from oneseekd.trainer.labels import Encoder, RecordProblem
from oneseekd.trainer.recipe import LoraRecipe, ModelResult

log = structlog.get_logger("oneseekd.trainer")


def trained_model(spec: ModelSpec, result: ModelResult) -> TrainedModel:
    """What certification needs of a trained model: its figures, not its weights; the
    samples the run measured beside them go apart."""
    figures = {f.name: getattr(result, f.name) for f in fields(Figures)}
    evaluation = dict(result.evaluation)
    samples = list(evaluation.pop("samples", []))
    return TrainedModel(
        **figures | {"evaluation": evaluation},
        display_name=spec.display_name,
        base_path=spec.path,
        samples=samples,
    )


def compare_with_current(
    recipe: LoraRecipe, spec: ModelSpec, settings: CertifyConfig, home: HomePaths
) -> dict[str, Any] | None:
    """The current run's model on the same base, measured on this run's held-out rows (every
    rank takes part), or None: not asked, nothing current, or the current run trained another
    base. A sharded model is not compared (its adapter cannot be swapped once sharded)."""
    if not settings.compare_with_current:
        return None
    found = current_adapter(home, spec.key)
    if found is None:
        return None
    which = {"dna": found["dna"], "run_id": found["run_id"]}
    if recipe.sharded:
        return {**which, "figures": None, "skipped": "a sharded model is not compared"}
    if found["base_hash"] != base_weights_hash(spec.path):
        return None
    pad_id = int(recipe.tokenizer.pad_token_id)
    with recipe.phase(phases.COMPARING, recipe.eval_batches(), "batches") as tick:
        figures = measure_adapter(
            recipe.model,
            found["path"],
            recipe.held,
            pad_id,
            recipe.batch_size,
            recipe.world,
            recipe.device,
            tick,
        )
    return {**which, "figures": figures.as_dict()}


def held_out_samples(
    recipe: LoraRecipe, records: Records, settings: CertifyConfig
) -> list[dict[str, Any]]:
    """Greedy answers of base and trained to the first few held-out prompts (samples.json),
    on rank 0 of an unsharded model (generation is not run across shards)."""
    if not recipe.world.main or recipe.sharded or settings.sample_prompts == 0:
        return []
    encoder = Encoder(
        recipe.tokenizer,
        int(recipe.hp["max_seq_len"]),
        False,  # the prompt part is the unlabelled part, also when training on prompts
        str(recipe.hp.get("truncation_side", "right")),
    )
    encoded = []
    for index in sample_prompts(records, recipe.val_idx, settings.sample_prompts):
        try:
            got = encoder.encode(records.items[index])
        except RecordProblem:
            continue
        encoded.append((index, got.ids, got.mask))
    with recipe.phase(phases.SAMPLES, len(encoded), "prompts") as tick:
        return samples(
            recipe.model,
            recipe.tokenizer,
            encoded,
            records,
            settings.sample_tokens,
            recipe.device,
            tick,
        )


def certify_run(
    engine: Engine,
    ledger: Ledger,
    ctx: RunContext,
    trained: list[TrainedModel],
    inputs: dict[str, Any],
    counts: dict[str, int],
    started: datetime,
    settings: CertifyConfig,
    curves: str | None = None,
) -> tuple[str, Verdict]:
    """The gate, then the certification (rank 0): refused under `[certify]
    require_improvement` when a model did not beat its base (a run not measured, with no or
    too few held-out rows, is not refused); otherwise certified, and made current only when the gate
    lets it. `curves`: where the run's TensorBoard files lie, for training_results.json.
    Returns the DNA and the verdict."""
    size = HeldOutSize(
        counts["train"] + counts["validation"],
        counts["validation"],
        settings.eval_tokens,
        settings.min_held_out_records,
        settings.min_held_out_bytes,
    )
    verdict = judge(trained, settings.make_current, settings.compare_with_current, size)
    log.info("certification_gate", run_id=ctx.run_id, **verdict.as_dict())
    # a run with no held-out rows has no verdict to refuse on: certified, never made current
    if settings.require_improvement and verdict.measured and not verdict.beat_base:
        raise refuse(ctx.run_id, verdict)  # trained and recorded in the ledger; not certified
    weighting = ctx.spec.weighting
    with write_session(engine) as session:
        queue.check_claim(session, ctx.run_pk, this_attempt(), by="trainer")
        hashes = {
            a.path: a.sha256
            for a in session.scalars(
                select(Artifact).where(Artifact.run_id == ctx.run_pk, Artifact.kind == "adapter")
            )
        }
        cert = Certification(
            ctx.run_pk,
            ctx.run_id,
            ctx.version,
            ctx.config,
            ctx.dataset.name,
            trained,
            hashes,
            inputs,
            counts,
            started,
            utcnow(),
            make_current=verdict.made_current,
            gate=verdict.as_dict(),
            curves=curves,
        )
        dna = certify(session, ledger, ctx.home, cert)
        weights = final_weights(weighed(trained, weighting), weighting)
        for row in session.scalars(select(ModelTraining).where(ModelTraining.run_id == ctx.run_pk)):
            row.weight = weights.get(row.model_key)
    return dna, verdict
