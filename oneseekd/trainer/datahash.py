"""The dataset a run trains on, held to the bytes it was first read from.

Its sha256 goes into the DNA, so every attempt of a run must train on the same bytes, and
nothing is certified under contents the run did not train on (or that no one can check any
more): the first attempt keeps the hash in checkpoints/<run_id>/dataset.json, every later read
and the certification compare against it."""

from __future__ import annotations

import json

from oneseekd.certify.dna import dataset_hash
from oneseekd.certify.staging import write_json
from oneseekd.trainer.context import RunContext, RunRefused
from oneseekd.trainer.data import Records, load_records


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


def dataset_unchanged(ctx: RunContext, trained: str) -> str:
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
