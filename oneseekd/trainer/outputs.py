"""What training leaves of one model: its adapter folder (with the tokenizer) and its .pth,
staged and recorded as artifacts; optionally the merged model. The torch half of the outputs:
the certified layout, the DNA and `publish` are in oneseekd/certify/ and import no torch.

The adapter must not depend on where or in which process it was trained, since its bytes are
hashed into the DNA: adapter_config.json's `base_model_name_or_path` names the base model by
its display name (CivicAI's loader passes the base model itself), never the host's absolute
path, and the lists PEFT writes from sets are sorted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from oneseekd.certify.artifacts import file_digest, record_artifact
from oneseekd.certify.ledger import Ledger
from oneseekd.certify.staging import free, fsync_file, staged_files, staging_path
from oneseekd.home import HomePaths
from oneseekd.naming import versioned_name

if TYPE_CHECKING:
    from oneseekd.trainer.context import RunContext
    from oneseekd.trainer.recipe import ModelResult


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
    free(session, paths, folder, ctx.run_pk)
    free(session, paths, pth, ctx.run_pk)
    spec = next(m for m in ctx.models if m.key == result.key)
    _save_adapter(result, staging_path(folder), spec.display_name)
    produced = [(final, staged, "adapter") for final, staged in staged_files(folder)]
    tensors = {
        k: v.detach().cpu().contiguous()
        for k, v in get_peft_model_state_dict(result.model, state_dict=result.trainable).items()
    }
    torch.save(tensors, staging_path(pth))
    fsync_file(staging_path(pth))
    produced.append((pth, staging_path(pth), "lora_weights"))
    if ctx.spec.export_merged:
        merged = _export_merged(session, paths, name, result, ctx.run_pk, spec.path)
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


def _save_adapter(result: ModelResult, folder: Path, base_name: str) -> None:
    """The adapter and the tokenizer it was trained with (its pad token included), with
    adapter_config.json naming the base by display name instead of the folder it was loaded
    from. The name is put in after saving: PEFT looks the named base up while it saves (on the
    model hub, for a name that is not a folder)."""
    # a sharded model's own parameters are this rank's shards: save the gathered weights
    result.model.save_pretrained(folder, state_dict=result.trainable)
    config_file = folder / "adapter_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    loaded_from = config.get("base_model_name_or_path")
    config["base_model_name_or_path"] = base_name
    config = canonical_adapter_config(config, vars(result.model.peft_config["default"]))
    # the form PEFT writes (sorted keys, indent 2)
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    card = folder / "README.md"  # PEFT's model card names the base in its front matter
    if card.is_file() and isinstance(loaded_from, str) and loaded_from:
        text = card.read_text(encoding="utf-8")
        card.write_text(text.replace(loaded_from, base_name), encoding="utf-8")
    result.tokenizer.save_pretrained(folder)


def canonical_adapter_config(config: dict[str, Any], live: dict[str, Any]) -> dict[str, Any]:
    """adapter_config.json with every field PEFT holds as a set (target_modules,
    exclude_modules) written as a sorted list. PEFT writes a set in its iteration order, which
    follows the process's string hash seed (PYTHONHASHSEED), and the DNA hashes this file's
    bytes: unsorted, one training would get a different DNA in every other process."""
    return {
        key: sorted(value) if isinstance(live.get(key), (set, frozenset)) else value
        for key, value in config.items()
    }


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
    again whole, on the CPU, and the gathered adapter put into it. A quantized base
    (`export_dequantized`, which spec.host demands) is merged into its dequantized weights,
    the ones the adapter was trained and evaluated over, and saved in the base's own dtype
    (trainer/merge.py): merged into 4-bit weights the adapter would round away, and merged
    into the original weights it would make a model nobody evaluated."""
    from oneseekd.trainer.merge import save_merged

    target = paths.zero / "merged" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    free(session, paths, target, run_pk)
    if result.quantization is not None:
        save_merged(result.model, base, staging_path(target))
    else:
        model = _whole(result, base) if result.trainable is not None else result.model
        model.merge_and_unload().save_pretrained(staging_path(target))
    result.tokenizer.save_pretrained(staging_path(target))
    return staged_files(target)


def _whole(result: ModelResult, base: Path) -> Any:
    """The trained PEFT model rebuilt unsharded on the CPU, from its base folder and the
    gathered LoRA weights."""
    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    from oneseekd.trainer.loading import Device, load_model

    config = result.model.peft_config["default"]
    dtype = result.model.get_base_model().dtype  # as it trained, as under DDP
    model = get_peft_model(load_model(base, Device("cpu", dtype, scaler=False)), config)
    adapter = get_peft_model_state_dict(result.model, state_dict=result.trainable)
    set_peft_model_state_dict(model, adapter)
    return model
