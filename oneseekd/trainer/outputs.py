"""What a run leaves (CONTRACT.md sections 2 and 5): adapters, .pth weights, the metadata JSON,
the certified folder with its ledger proof, and the OneSeek-7B-Zero-CURRENT link.

Every file is written under a temporary name and renamed into place; the certified folder is
built whole under a dot-name and renamed in one step. A versioned name that already exists and
is recorded as an artifact is never overwritten.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from peft import get_peft_model_state_dict
from sqlalchemy import select
from sqlalchemy.orm import Session

from oneseekd.certify.artifacts import file_digest, record_artifact, sha256_file
from oneseekd.certify.ledger import Ledger, canonical_json, ledger_proof
from oneseekd.config import HomePaths
from oneseekd.db.models import Artifact
from oneseekd.errors import OneseekError
from oneseekd.naming import versioned_name
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
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    _fsync(tmp)
    os.replace(tmp, path)


def _relative(paths: HomePaths, path: Path) -> str:
    return path.relative_to(paths.root).as_posix()


def _free(session: Session, paths: HomePaths, target: Path) -> None:
    """Make room for a versioned output: refuse if it is a recorded artifact; remove what an
    interrupted attempt of this run left behind otherwise."""
    if not target.exists() and not target.is_symlink():
        return
    rel = _relative(paths, target)
    recorded = session.scalars(
        select(Artifact.id).where((Artifact.path == rel) | Artifact.path.startswith(rel + "/"))
    ).first()
    if recorded is not None:
        raise OneseekError(
            f"{rel} already exists and belongs to an earlier run; "
            "nothing of an existing version is overwritten",
            ["submit the request again without version to take the next one"],
        )
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    else:
        target.unlink()


def _files(folder: Path) -> Iterator[Path]:
    return (p for p in sorted(folder.rglob("*")) if p.is_file())


def save_model_outputs(
    session: Session, ledger: Ledger, ctx: RunContext, result: ModelResult
) -> dict[str, str]:
    """The adapter folders and the .pth of one trained model, recorded as artifacts."""
    paths = ctx.home
    adapters = paths.zero / "lora_adapters"
    weights = paths.zero / "weights"
    adapters.mkdir(parents=True, exist_ok=True)
    weights.mkdir(parents=True, exist_ok=True)
    name = versioned_name(ctx.version, result.key)
    folder = adapters / name
    pth = weights / f"{name}.pth"
    _free(session, paths, folder)
    _free(session, paths, pth)
    staging = adapters / f".{name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    result.model.save_pretrained(staging)
    for path in _files(staging):
        _fsync(path)
    os.rename(staging, folder)
    tensors = {
        k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(result.model).items()
    }
    tmp = weights / f".{pth.name}.tmp"
    torch.save(tensors, tmp)
    _fsync(tmp)
    os.rename(tmp, pth)
    # <key>-adapter is the latest adapter of that model: a link to the versioned folder,
    # replaced atomically, so it is never half-written and never an artifact of its own
    link = adapters / f"{result.key}-adapter"
    tmp_link = adapters / f".{result.key}-adapter.tmp"
    tmp_link.unlink(missing_ok=True)
    tmp_link.symlink_to(name)
    if link.exists() and not link.is_symlink():
        shutil.rmtree(link)
    os.replace(tmp_link, link)
    produced = [*_files(folder), pth]
    if ctx.config.get("export_merged"):
        produced += _export_merged(session, paths, name, result)
    hashes: dict[str, str] = {}
    for path in produced:
        kind = (
            "adapter"
            if path.parent == folder
            else "lora_weights"
            if path == pth
            else "merged_model"
        )
        art = record_artifact(session, ledger, paths, path, kind, ctx.run_pk, result.key)
        if kind == "adapter":
            hashes[art.path] = art.sha256
    return hashes


def _export_merged(
    session: Session, paths: HomePaths, name: str, result: ModelResult
) -> list[Path]:
    """The base model with the adapter merged in, as a plain safetensors model folder
    (`export_merged: true`). Runs last: merging unloads the adapter from the model."""
    target = paths.zero / "merged" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    _free(session, paths, target)
    staging = target.parent / f".{name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    merged = result.model.merge_and_unload()
    merged.save_pretrained(staging)
    result.tokenizer.save_pretrained(staging)
    for path in _files(staging):
        _fsync(path)
    os.rename(staging, target)
    return list(_files(target))


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
    """Metadata JSON, the certified folder (staged as .<run_id>.tmp) and the completion event;
    returns the DNA. `publish` renames the staged folder once this transaction committed, so a
    certified folder never names an event the database does not hold."""
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
        }
        for k in keys
    }
    metadata = paths.zero / "weights" / f"{versioned_name(ctx.version)}.json"
    _free(session, paths, metadata)
    write_json(
        metadata,
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
    record_artifact(session, ledger, paths, metadata, "metadata", ctx.run_pk, None)
    final = paths.certified / ctx.run_id
    _free(session, paths, final)
    staging = paths.certified / f".{ctx.run_id}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
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


def publish(paths: HomePaths, run_id: str) -> None:
    """Move a committed run's staged certified folder into place, then point CURRENT at it."""
    staging = paths.certified / f".{run_id}.tmp"
    final = paths.certified / run_id
    if staging.is_dir() and not final.exists():
        os.rename(staging, final)
    replace_current_link(paths)


def replace_current_link(paths: HomePaths) -> None:
    """models/OneSeek-7B-Zero-CURRENT -> oneseek-7b-zero, swapped in atomically."""
    link = paths.models / CURRENT_LINK
    tmp = paths.models / f".{CURRENT_LINK}.tmp"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(paths.zero.name)
    os.replace(tmp, link)
