"""Certifying a run: the weights JSON and the certified folder named by the DNA, staged inside
the transaction that appends the completion event (docs/training.md, "The certified layout").

The trainer hands over plain figures (`TrainedModel`, `Certification`); nothing here imports
torch. `publish` (certify/publish.py) renames what this staged into place once the transaction
has committed, so no DNA and no certified folder is ever visible that the ledger does not hold.
"""

from __future__ import annotations

import math
import os
from dataclasses import KW_ONLY, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from oneseekd.certify import current
from oneseekd.certify.artifacts import file_digest, record_artifact
from oneseekd.certify.dna import final_weights, make_dna, weight_inputs
from oneseekd.certify.gate import bpb
from oneseekd.certify.layout import (
    BASE_MODELS_DIR,
    DNA_PREFIX,
    METADATA_FILE,
    certified_dir,
)
from oneseekd.certify.ledger import PROOF_FILE, Ledger, ledger_proof
from oneseekd.certify.live import live_document
from oneseekd.certify.shipped import shipped_epoch, shipped_figures, shipped_of
from oneseekd.certify.staging import (
    files,
    free,
    fsync_file,
    staging_path,
    write_json,
)
from oneseekd.home import HomePaths
from oneseekd.naming import versioned_name
from oneseekd.times import utc_text

COMPLETED_EVENT = "dna_v2_training_completed"
TRAINING_TYPE = "lora"


@dataclass(frozen=True)
class Figures:
    """What training measured of one model: the trainer's result carries them with the
    weights, certification with the model's names and samples."""

    key: str
    train_losses: list[float]
    val_losses: list[float]
    steps: int
    tokens: int
    seconds: float
    padding_fraction: float
    targets: list[str]  # the LoRA target modules
    _: KW_ONLY
    # label_tokens (what the loss was taken over; `tokens` counts every real token fed) and
    # truncated_records, reported per model in the results
    counts: dict[str, int] = field(default_factory=dict)
    # trainer/evaluate.py's figures: held_out, base, epochs, step_losses, current (the
    # current run's model on the same rows, when compared)
    evaluation: dict[str, Any] = field(default_factory=dict)
    auto_stop: dict[str, Any] | None = None  # its auto-stop state; None: it did not ask
    quantization: dict[str, Any] | None = None  # how its base was held; None: unquantized


@dataclass(frozen=True)
class TrainedModel(Figures):
    """One trained model's figures, as the trainer hands them over."""

    display_name: str
    base_path: Path  # the base model's folder, linked from the certified folder
    samples: list[dict[str, Any]] = field(default_factory=list)  # greedy, base and trained


@dataclass(frozen=True)
class Certification:
    """Everything a certification needs: the run, its models in request order (the first is
    `baseModels[0]`, the one CivicAI's service loads), what went in and what came out."""

    run_pk: int
    run_id: str
    version: str
    config: dict[str, Any]
    dataset: str  # the file's name under datasets/
    models: list[TrainedModel]
    adapter_hashes: dict[str, str]  # home-relative path -> sha256 of every adapter file
    inputs: dict[str, Any]
    samples: dict[str, int]
    started: datetime
    finished: datetime
    make_current: bool = True
    gate: dict[str, Any] | None = None  # certify/gate.py's verdict (made_current, reasons)
    # the run's TensorBoard event files, relative to the home (runs/<run_id>/tensorboard);
    # None: it wrote none
    curves: str | None = None


def adapter_name(version: str, key: str) -> str:
    return versioned_name(version, key)


def _finite(value: float) -> float | None:
    """A certified file holds JSON numbers only: a non-finite figure is written as null."""
    return value if math.isfinite(value) else None


def _clean(value: Any) -> Any:
    """Figures as JSON numbers: a non-finite one as null, at any depth."""
    if isinstance(value, float):
        return _finite(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def evaluation(m: TrainedModel) -> dict[str, Any]:
    """A model's held-out figures as certified: the rows, the base's, the trained model's (its
    shipped epoch's, `trained_epoch`), what it gained in bits per byte, every epoch's, and the
    current model's when compared."""
    ev = m.evaluation
    trained = shipped_figures(m)
    base, after = bpb(ev.get("base")), bpb(trained)
    cleaned: dict[str, Any] = _clean(
        {
            "held_out": ev.get("held_out"),
            "base": ev.get("base"),
            "trained": trained,
            "trained_epoch": shipped_epoch(m),
            "bits_per_byte_gain": None if base is None or after is None else base - after,
            "epochs": ev.get("epochs", []),
            "current": ev.get("current"),
        }
    )
    return cleaned


def _metrics(m: TrainedModel) -> dict[str, Any]:
    return {
        "train_losses": [_finite(x) for x in m.train_losses],
        "val_losses": [_finite(x) for x in m.val_losses],
        "step_losses": [_finite(x) for x in m.evaluation.get("step_losses", [])],
        "evaluation": evaluation(m),
        "steps": m.steps,
        "tokens": m.tokens,
        "seconds": round(m.seconds, 3),
        "padding_fraction": round(m.padding_fraction, 4),
        "lora_targets": m.targets,
        "shipped": shipped_of(m),
        **m.counts,
        **({"quantization": m.quantization} if m.quantization else {}),
        **({"auto_stop": m.auto_stop} if m.auto_stop else {}),
    }


def _history(models: list[TrainedModel]) -> list[dict[str, Any]]:
    """training_results.json's `training_history`: per epoch, the mean training loss over the
    models that reached it and each model's validation loss."""
    epochs = max(len(m.val_losses) for m in models)
    history = []
    for i in range(epochs):
        losses = [m.train_losses[i] for m in models if i < len(m.train_losses)]
        history.append(
            {
                "epoch": i + 1,
                "loss": _finite(sum(losses) / len(losses)) if losses else None,
                "val_losses": {
                    m.key: _finite(m.val_losses[i]) for m in models if i < len(m.val_losses)
                },
                # a model's training ended after this epoch by auto-stop
                "auto_stopped": any(
                    (m.auto_stop or {}).get("stopped_at_epoch") == i + 1 for m in models
                ),
            }
        )
    return history


def _final_loss(models: list[TrainedModel]) -> float | None:
    """training_results.json's `final_loss`: the mean training loss of the epochs the models
    ship (each model's last, unless it kept an earlier, better one)."""
    losses = [m.train_losses[shipped_epoch(m) - 1] for m in models if m.train_losses]
    return _finite(sum(losses) / len(losses)) if losses else None


def weighed(models: list[TrainedModel], weighting: str) -> dict[str, float]:
    """The figure each model's final weight is taken from (certify/dna.py)."""
    return weight_inputs(
        {m.key: m.val_losses[shipped_epoch(m) - 1] for m in models},
        {m.key: bpb(shipped_figures(m)) for m in models},
        weighting,
    )


def link_name(display_name: str) -> str:
    """A base model's display name as one path component (a `/` in it would nest folders)."""
    return display_name.replace("/", "-").replace("\\", "-").strip(". ") or "base-model"


def certify(session: Session, ledger: Ledger, paths: HomePaths, c: Certification) -> str:
    """Stage the weights JSON and the certified folder, record every file, append the
    completion event and, when the run becomes current, note the pointer move; returns the
    DNA. Runs inside the caller's write transaction."""
    keys = [m.key for m in c.models]
    names = [m.display_name for m in c.models]
    weighting = weighting_of(c)
    weights = {
        k: _finite(v) for k, v in final_weights(weighed(c.models, weighting), weighting).items()
    }
    dna = make_dna(c.version, c.inputs, c.adapter_hashes)
    pth = {k: f"{versioned_name(c.version, k)}.pth" for k in keys}
    dna_object = {"fingerprint": dna, "baseModels": names, "finalWeights": weights}

    metadata = current.weights_json(paths, c.version)
    free(session, paths, metadata, c.run_pk)
    write_json(
        staging_path(metadata),
        {
            "version": f"{DNA_PREFIX}{c.version}",
            "baseModels": names,
            "trained_models": keys,
            "modelSpecificWeights": pth,
            "final_weights": weights,
            "createdAt": utc_text(c.finished),
            "trainingType": TRAINING_TYPE,
            "dna": dna_object,
            "isCurrent": c.make_current,
            "gate": c.gate,
            "run_id": c.run_id,
            "metrics": {m.key: _metrics(m) for m in c.models},
            "config": c.config,
        },
        strict=True,
    )
    digest = file_digest(staging_path(metadata))
    record_artifact(session, ledger, paths, metadata, "metadata", c.run_pk, None, digest=digest)

    final = certified_dir(paths, dna)
    free(session, paths, final, c.run_pk)
    staging = staging_path(final)
    staging.mkdir(parents=True)
    _write_documents(staging, c, dna, weights, names)
    _link_outputs(paths, final, staging, c)
    for path in files(staging):  # hashed here, recorded at the place they will have
        if path.relative_to(staging).as_posix() == METADATA_FILE:
            continue  # a view: CivicAI's admin panel rewrites it
        record_artifact(
            session,
            ledger,
            paths,
            final / path.relative_to(staging),
            "certified",
            c.run_pk,
            None,
            digest=file_digest(path),
        )
    event = ledger.append(
        session,
        COMPLETED_EVENT,
        {
            "run_id": c.run_id,
            "version": c.version,
            "dna": dna,
            "baseModels": names,
            "trained_models": keys,
            "final_weights": weights,
            "artifacts": c.adapter_hashes,
            "current": c.make_current,
            "gate": c.gate,
            "bits_per_byte": {
                m.key: {
                    "base": _clean(bpb(m.evaluation.get("base"))),
                    "trained": _clean(bpb(shipped_figures(m))),
                }
                for m in c.models
            },
        },
        c.run_pk,
    )
    if c.make_current:
        current.note_move(session, ledger, paths, dna, c.run_id, c.version, event)
    proof = ledger_proof(session, event)
    # the seed's own fields, beside the event they repeat
    proof.update({"dna": dna, "baseModels": names, "final_weights": weights})
    write_json(staging / PROOF_FILE, proof, strict=True)
    return dna


def weighting_of(c: Certification) -> str:
    return str(c.config.get("weighting", "val_loss"))


def _write_documents(
    staging: Path,
    c: Certification,
    dna: str,
    weights: dict[str, float | None],
    names: list[str],
) -> None:
    keys = [m.key for m in c.models]
    history = _history(c.models)
    epochs = len(history)
    first = c.models[0]
    documents: dict[str, Any] = {
        "oneseek_dna.json": {
            "dna": dna,
            "version": c.version,
            "run_id": c.run_id,
            "baseModels": names,
            "final_weights": weights,
            "inputs": c.inputs,
            "outputs": c.adapter_hashes,
            # what the outputs measure on held-out data, and what was decided from it: this
            # file's hash is in the ledger, so the figures are signed with the weights
            "evaluation": {m.key: evaluation(m) for m in c.models},
            "gate": c.gate,
            "created_at": utc_text(c.finished),
        },
        "training_results.json": {
            "run_id": c.run_id,
            "version": c.version,
            "dna": dna,
            "status": "completed",
            "samples": c.samples,
            "epochs": epochs,
            "trained_models": keys,
            "baseModels": names,
            "final_weights": weights,
            "final_loss": _final_loss(c.models),
            "training_history": history,
            "metrics": {m.key: _metrics(m) for m in c.models},
            "weighting": weighting_of(c),
            "gate": c.gate,
            "started_at": utc_text(c.started),
            "finished_at": utc_text(c.finished),
            "timestamp": utc_text(c.finished),
            "duration_seconds": round((c.finished - c.started).total_seconds(), 3),
            # only where the run wrote curves: the shape CivicAI reads is otherwise unchanged
            **({"tensorboard": c.curves} if c.curves else {}),
        },
        "live_metrics.json": live_document(
            {m.key: m.train_losses for m in c.models},
            {m.key: m.val_losses for m in c.models},
            epochs,
            weighting=weighting_of(c),
            progress_percent=100.0,
            now=c.finished,
            bits_per_byte={
                m.key: [e.get("bits_per_byte") for e in m.evaluation.get("epochs", [])]
                for m in c.models
            },
            step_losses={m.key: m.evaluation.get("step_losses", []) for m in c.models},
            auto_stop={m.key: m.auto_stop for m in c.models if m.auto_stop},
            shipped={m.key: shipped_epoch(m) for m in c.models},
        ),
        "samples.json": {
            "run_id": c.run_id,
            "dna": dna,
            "decoding": "greedy",
            "models": {m.key: m.samples for m in c.models},
        },
        METADATA_FILE: {
            "version": f"{DNA_PREFIX}{c.version}",
            "dna": dna,
            "createdAt": utc_text(c.finished),
            "baseModel": first.display_name,
            "baseModels": names,
            "adapters": [adapter_name(c.version, first.key)],
            "language": c.config.get("language"),
            "datasets": [c.dataset],
            "trainingType": TRAINING_TYPE,
            "samplesProcessed": c.samples.get("train", 0) * epochs,
            # baseModels[0]'s, the model CivicAI's service loads: its held-out loss and
            # next-token accuracy; nothing measures fairness
            "metrics": {
                "loss": _finite(first.val_losses[shipped_epoch(first) - 1]),
                "accuracy": _clean((shipped_figures(first) or {}).get("accuracy")),
                "fairness": None,
            },
            "gate": c.gate,
            "run_id": c.run_id,
        },
    }
    for name, body in documents.items():
        write_json(staging / name, body, strict=True)
    from oneseekd.certify.plot import loss_curve

    loss_curve(staging / "loss_curve.png", c.models)
    fsync_file(staging / "loss_curve.png")


def _link_outputs(paths: HomePaths, final: Path, staging: Path, c: Certification) -> None:
    """Relative links from the certified folder to the adapter trained on baseModels[0] and to
    that base model's folder: what CivicAI's service stacks and loads. Written as they will
    resolve from the folder's final place (the staging folder sits beside it)."""
    first = c.models[0]
    name = adapter_name(c.version, first.key)
    adapter = paths.zero / "lora_adapters" / name
    (staging / name).symlink_to(os.path.relpath(adapter, final))
    bases = staging / BASE_MODELS_DIR
    bases.mkdir()
    target = os.path.relpath(first.base_path.resolve(), (final / BASE_MODELS_DIR).resolve())
    (bases / link_name(first.display_name)).symlink_to(target)
