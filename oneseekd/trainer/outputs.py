"""What a run leaves (CONTRACT.md sections 2 and 5): adapters, .pth weights, the metadata JSON,
the certified folder with its ledger proof, and the OneSeek-7B-Zero-CURRENT link.

Every output is written whole under its staging name (`.<name>.tmp` beside its final name,
which no reader takes for a result), recorded as an artifact at its final name, and renamed
into place by `publish` only once that transaction has committed: a crash at any instant
leaves either nothing visible or what the database records. `publish` is idempotent and needs
no torch, so the supervisor finishes what a killed trainer committed. A versioned name that is
recorded as an artifact of another run is never overwritten.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from oneseekd.certify.artifacts import file_digest, record_artifact, sha256_file
from oneseekd.certify.ledger import Ledger, canonical_json, ledger_proof
from oneseekd.config import HomePaths
from oneseekd.db.engine import read_session
from oneseekd.db.models import Artifact, LedgerEvent, Run
from oneseekd.errors import OneseekError
from oneseekd.naming import versioned_name

if TYPE_CHECKING:  # the daemon imports this module for `publish`: no torch at import time
    from oneseekd.trainer.context import RunContext
    from oneseekd.trainer.recipe import ModelResult

CURRENT_LINK = "OneSeek-7B-Zero-CURRENT"
COMPLETED_EVENT = "dna_v2_training_completed"


def final_weights(val_losses: dict[str, float], weighting: str) -> dict[str, float]:
    """How much each model counts in the ensemble.

    `val_loss` (the default): a softmax over the negative final validation losses,
    w_i = exp(-L_i) / sum_j exp(-L_j), so a model whose loss is lower by ln 2 counts twice as
    much. `equal`: 1/n each. The weights sum to 1."""
    keys = list(val_losses)
    if weighting == "equal" or not keys:
        return {k: 1 / len(keys) for k in keys} if keys else {}
    low = min(val_losses.values())
    raw = {k: math.exp(-(val_losses[k] - low)) for k in keys}
    total = sum(raw.values())
    return {k: raw[k] / total for k in keys}


def _fsync(path: Path) -> None:
    with path.open("rb") as fh:
        os.fsync(fh.fileno())


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    # allow_nan=False: JSON has no NaN, and a certified file never holds one
    text = json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False)
    tmp.write_text(text + "\n", encoding="utf-8")
    _fsync(tmp)
    os.replace(tmp, path)


def _relative(paths: HomePaths, path: Path) -> str:
    return path.relative_to(paths.root).as_posix()


def staging_path(final: Path) -> Path:
    """Where an output is written before its transaction commits: a dot-name beside it."""
    return final.with_name(f".{final.name}.tmp")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _free(session: Session, paths: HomePaths, target: Path, run_pk: int) -> None:
    """Make room for a versioned output: refuse if another run recorded it (published or still
    staged); remove what an interrupted attempt left under the name and its staging name."""
    rel = _relative(paths, target)
    recorded = session.scalars(
        select(Artifact.id).where(
            (Artifact.path == rel) | Artifact.path.startswith(rel + "/"),
            Artifact.run_id.is_(None) | (Artifact.run_id != run_pk),
        )
    ).first()
    if recorded is not None:
        raise OneseekError(
            f"{rel} already exists and belongs to an earlier run; "
            "nothing of an existing version is overwritten",
            ["submit the request again without version to take the next one"],
        )
    _remove(target)
    _remove(staging_path(target))


def _files(folder: Path) -> Iterator[Path]:
    return (p for p in sorted(folder.rglob("*")) if p.is_file())


def _staged_files(final: Path) -> list[tuple[Path, Path]]:
    """(final path, staged path) of every file of a staged output folder, fsynced."""
    staged = staging_path(final)
    pairs = []
    for path in _files(staged):
        _fsync(path)
        pairs.append((final / path.relative_to(staged), path))
    return pairs


def save_model_outputs(
    session: Session, ledger: Ledger, ctx: RunContext, result: ModelResult
) -> dict[str, str]:
    """The adapter folder and the .pth of one trained model, staged and recorded as artifacts
    at their final names; returns the adapter files' hashes. `publish` moves them into place
    and points <key>-adapter at the folder once the caller's transaction has committed."""
    import torch
    from peft import get_peft_model_state_dict

    paths = ctx.home
    adapters = paths.zero / "lora_adapters"
    weights = paths.zero / "weights"
    adapters.mkdir(parents=True, exist_ok=True)
    weights.mkdir(parents=True, exist_ok=True)
    name = versioned_name(ctx.version, result.key)
    folder = adapters / name
    pth = weights / f"{name}.pth"
    _free(session, paths, folder, ctx.run_pk)
    _free(session, paths, pth, ctx.run_pk)
    # a sharded model's own parameters are this rank's shards: save the gathered weights
    result.model.save_pretrained(staging_path(folder), state_dict=result.trainable)
    produced = [(final, staged, "adapter") for final, staged in _staged_files(folder)]
    tensors = {
        k: v.detach().cpu().contiguous()
        for k, v in get_peft_model_state_dict(result.model, state_dict=result.trainable).items()
    }
    torch.save(tensors, staging_path(pth))
    _fsync(staging_path(pth))
    produced.append((pth, staging_path(pth), "lora_weights"))
    if ctx.config.get("export_merged"):
        base = next(m.path for m in ctx.models if m.key == result.key)
        merged = _export_merged(session, paths, name, result, ctx.run_pk, base)
        produced += [(final, staged, "merged_model") for final, staged in merged]
    hashes: dict[str, str] = {}
    for final, staged, kind in produced:
        art = record_artifact(
            session,
            ledger,
            paths,
            final,
            kind,
            ctx.run_pk,
            result.key,
            digest=file_digest(staged),
        )
        if kind == "adapter":
            hashes[art.path] = art.sha256
    return hashes


def _export_merged(
    session: Session,
    paths: HomePaths,
    name: str,
    result: ModelResult,
    run_pk: int,
    base: Path,
) -> list[tuple[Path, Path]]:
    """The base model with the adapter merged in, as a plain safetensors model folder
    (`export_merged: true`), staged. Runs last: merging unloads the adapter from the model.
    A sharded model holds only a shard of its base weights here, so the base is loaded
    again whole, on the CPU, and the gathered adapter put into it."""
    target = paths.zero / "merged" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    _free(session, paths, target, run_pk)
    model = result.model if result.trainable is None else _whole(result, base)
    merged = model.merge_and_unload()
    merged.save_pretrained(staging_path(target))
    result.tokenizer.save_pretrained(staging_path(target))
    return _staged_files(target)


def _whole(result: ModelResult, base: Path) -> Any:
    """The trained PEFT model rebuilt unsharded on the CPU, from its base folder and the
    gathered LoRA weights."""
    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    from oneseekd.trainer.loading import Device, load_model

    config = result.model.peft_config["default"]
    dtype = result.model.get_base_model().dtype  # the base's own, as under DDP
    model = get_peft_model(load_model(base, Device("cpu", dtype, scaler=False)), config)
    adapter = get_peft_model_state_dict(result.model, state_dict=result.trainable)
    set_peft_model_state_dict(model, adapter)
    return model


def dataset_hash(path: Path) -> str:
    return sha256_file(path)


def base_weights_hash(folder: Path) -> str:
    """One hash over a base model's weight files (names and contents)."""
    digest: dict[str, str] = {}
    for path in sorted(folder.iterdir()):
        if path.name.endswith((".safetensors", ".bin")) or path.name == "config.json":
            digest[path.name] = sha256_file(path)
    return canonical_hash(digest)


def canonical_hash(obj: Any) -> str:
    import hashlib

    return hashlib.sha256(canonical_json(obj)).hexdigest()


def make_dna(version: str, inputs: dict[str, Any], outputs: dict[str, str]) -> str:
    """`OneSeek-7B-Zero.v<version>.<6 hex>`: the hex from what went in and what came out."""
    return f"OneSeek-7B-Zero.v{version}.{canonical_hash({'in': inputs, 'out': outputs})[:6]}"


def loss_curve(path: Path, results: dict[str, ModelResult]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for key, res in results.items():
        epochs = list(range(1, len(res.train_losses) + 1))
        ax.plot(epochs, res.train_losses, marker="o", label=f"{key} train")
        ax.plot(epochs, res.val_losses, marker="s", linestyle="--", label=f"{key} validation")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title("OneSeek LoRA training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def certify(
    session: Session,
    ledger: Ledger,
    ctx: RunContext,
    results: dict[str, ModelResult],
    adapter_hashes: dict[str, str],
    inputs: dict[str, Any],
    samples: dict[str, int],
    started: datetime,
    finished: datetime,
) -> str:
    """The metadata JSON and the certified folder, staged, and the completion event; returns
    the DNA. `publish` moves them into place once this transaction committed, so neither a DNA
    nor a certified folder is ever visible that the ledger does not hold."""
    paths = ctx.home
    keys = list(results)
    val = {k: results[k].val_losses[-1] for k in keys}
    weights = final_weights(val, str(ctx.config.get("weighting", "val_loss")))
    dna = make_dna(ctx.version, inputs, adapter_hashes)
    display = {m.key: m.display_name for m in ctx.models}
    metrics = {
        k: {
            "train_losses": results[k].train_losses,
            "val_losses": results[k].val_losses,
            "steps": results[k].steps,
            "tokens": results[k].tokens,
            "seconds": round(results[k].seconds, 3),
            "padding_fraction": round(results[k].padding_fraction, 4),
            "lora_targets": results[k].targets,
            **results[k].counts,  # label_tokens, truncated_records
        }
        for k in keys
    }
    metadata = paths.zero / "weights" / f"{versioned_name(ctx.version)}.json"
    _free(session, paths, metadata, ctx.run_pk)
    write_json(
        staging_path(metadata),
        {
            "version": ctx.version,
            "baseModels": [display[k] for k in keys],
            "trained_models": keys,
            "modelSpecificWeights": weights,
            "final_weights": weights,
            "createdAt": finished.isoformat(),
            "trainingType": "lora",
            "dna": dna,
            "run_id": ctx.run_id,
            "metrics": metrics,
            "config": ctx.config,
        },
    )
    _fsync(staging_path(metadata))
    record_artifact(
        session,
        ledger,
        paths,
        metadata,
        "metadata",
        ctx.run_pk,
        None,
        digest=file_digest(staging_path(metadata)),
    )
    final = paths.certified / ctx.run_id
    _free(session, paths, final, ctx.run_pk)
    staging = staging_path(final)
    staging.mkdir(parents=True)
    epochs = max(len(r.val_losses) for r in results.values())
    documents = {
        "oneseek_dna.json": {
            "dna": dna,
            "version": ctx.version,
            "run_id": ctx.run_id,
            "inputs": inputs,
            "outputs": adapter_hashes,
            "created_at": finished.isoformat(),
        },
        "training_results.json": {
            "run_id": ctx.run_id,
            "version": ctx.version,
            "dna": dna,
            "samples": samples,
            "epochs": epochs,
            "trained_models": keys,
            "baseModels": [display[k] for k in keys],
            "final_weights": weights,
            "metrics": metrics,
            "started_at": started.isoformat(),
            "finished_at": finished.isoformat(),
            "duration_seconds": round((finished - started).total_seconds(), 3),
        },
        "live_metrics.json": {
            "type": "final",
            "epoch": epochs,
            "val_losses": {k: results[k].val_losses for k in keys},
            "weights": weights,
        },
    }
    for name, body in documents.items():
        write_json(staging / name, body)
    loss_curve(staging / "loss_curve.png", results)
    _fsync(staging / "loss_curve.png")
    for path in _files(staging):  # hashed here, recorded at the place they will have
        record_artifact(
            session,
            ledger,
            paths,
            final / path.name,
            "certified",
            ctx.run_pk,
            None,
            digest=file_digest(path),
        )
    event = ledger.append(
        session,
        COMPLETED_EVENT,
        {
            "run_id": ctx.run_id,
            "version": ctx.version,
            "dna": dna,
            "trained_models": keys,
            "final_weights": weights,
            "artifacts": adapter_hashes,
        },
        ctx.run_pk,
    )
    write_json(staging / "ledger_proof.json", ledger_proof(session, event))
    return dna


def certified_dna(engine: Engine, run_pk: int) -> str | None:
    """The DNA of the run's completion event, when the ledger holds one."""
    with read_session(engine) as session:
        payload = session.scalars(
            select(LedgerEvent.payload).where(
                LedgerEvent.run_id == run_pk, LedgerEvent.event == COMPLETED_EVENT
            )
        ).first()
    return None if payload is None else str(json.loads(payload)["dna"])


def _output_entry(paths: HomePaths, path: Path) -> Path | None:
    """The entry an artifact file is published with: its folder directly under lora_adapters/,
    merged/ or oneseek-certified/, or the file itself directly under weights/."""
    for container in (
        paths.zero / "lora_adapters",
        paths.zero / "weights",
        paths.zero / "merged",
        paths.certified,
    ):
        if path.is_relative_to(container) and path != container:
            return container / path.relative_to(container).parts[0]
    return None


def publish(engine: Engine, paths: HomePaths, run_pk: int) -> None:
    """Move every output the run committed from its staging name into place, point each of
    its models' <key>-adapter at that model's newest adapter and, once the run is certified,
    OneSeek-7B-Zero-CURRENT at the outputs. Idempotent: what is in place stays as it is; what
    was staged but never committed is left alone (see `discard_staged`)."""
    with read_session(engine) as session:
        rows = session.execute(
            select(Artifact.path, Artifact.kind, Artifact.model_key)
            .where(Artifact.run_id == run_pk)
            .order_by(Artifact.id)
        ).all()
    entries: dict[Path, None] = {}
    keys: set[str] = set()
    for path, kind, key in rows:
        entry = _output_entry(paths, paths.root / path)
        if entry is not None:
            entries[entry] = None
        if kind == "adapter" and key:
            keys.add(key)
    for entry in entries:
        staged = staging_path(entry)
        if os.path.lexists(staged) and not os.path.lexists(entry):
            try:
                os.rename(staged, entry)
            except FileNotFoundError:  # published meanwhile by the trainer or the supervisor
                if not os.path.lexists(entry):
                    raise
            _fsync_dir(entry.parent)
    for key in sorted(keys):
        _point_adapter_link(engine, paths, key)
    if certified_dna(engine, run_pk) is not None:
        replace_current_link(paths)


def _point_adapter_link(engine: Engine, paths: HomePaths, key: str) -> None:
    """lora_adapters/<key>-adapter -> the newest recorded adapter folder of that model that is
    in place, replaced atomically; never an artifact of its own."""
    with read_session(engine) as session:
        recorded = session.scalars(
            select(Artifact.path)
            .where(Artifact.kind == "adapter", Artifact.model_key == key)
            .order_by(Artifact.id.desc())
        ).all()
    for path in recorded:
        folder = _output_entry(paths, paths.root / path)
        if folder is not None and folder.is_dir() and not folder.is_symlink():
            _replace_link(folder.parent / f"{key}-adapter", folder.name)
            return


def _replace_link(link: Path, target: str) -> None:
    if link.is_symlink() and os.readlink(link) == target:
        return
    tmp = staging_path(link)
    _remove(tmp)
    tmp.symlink_to(target)
    if link.is_dir() and not link.is_symlink():
        shutil.rmtree(link)
    os.replace(tmp, link)
    _fsync_dir(link.parent)


def discard_staged(engine: Engine, paths: HomePaths, run_pk: int) -> None:
    """Remove what an ended run staged but never committed (its committed outputs were moved
    into place by `publish` first). Only for a run that is over: a resumed attempt stages
    these names again."""
    with read_session(engine) as session:
        run = session.get(Run, run_pk)
        if run is None:
            return
        version, keys, run_id = run.version, list(run.base_models or []), run.run_id
    finals = [paths.certified / run_id, paths.zero / "weights" / f"{versioned_name(version)}.json"]
    for key in keys:
        name = versioned_name(version, key)
        finals += [
            paths.zero / "lora_adapters" / name,
            paths.zero / "weights" / f"{name}.pth",
            paths.zero / "merged" / name,
        ]
    for final in finals:
        _remove(staging_path(final))


def replace_current_link(paths: HomePaths) -> None:
    """models/OneSeek-7B-Zero-CURRENT -> oneseek-7b-zero, swapped in atomically."""
    _replace_link(paths.models / CURRENT_LINK, paths.zero.name)
