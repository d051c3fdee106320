from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import replace
from pathlib import Path

from modelfactory import TINY_TENSORS, make_model, safetensors_bytes, tensor_count, write_config
from sqlalchemy import Engine

from oneseekd.catalog.live import Catalog
from oneseekd.catalog.scan import model_roots, scan
from oneseekd.catalog.store import load_rows
from oneseekd.config import Config, load_config


def rows_by_key(engine: Engine) -> dict[str, dict[str, object]]:
    return {
        r.key: {
            "state": r.state,
            "reason": r.state_reason,
            "path": r.path,
            "params": r.parameter_count,
            "shadowed": r.shadowed_paths,
        }
        for r in load_rows(engine)
    }


def scan_into(config: Config, engine: Engine) -> Catalog:
    catalog = Catalog(engine, model_roots(config), settle=0.0)
    catalog.full_scan()
    return catalog


def test_complete_model_is_ready_with_exact_parameter_count(config: Config, engine: Engine) -> None:
    make_model(
        config.home.base_models,
        "KB-Llama-3.1-8B-Swedish",
        _name_or_path="KBLab/llama-3.1-8b-swedish",
    )
    scan_into(config, engine)
    [row] = load_rows(engine)
    assert row.key == "kb-llama-3-1-8b-swedish"
    assert row.display_name == "llama-3.1-8b-swedish"
    assert row.state == "ready" and row.state_reason is None
    assert row.model_type == "llama" and row.architectures == ["LlamaForCausalLM"]
    assert row.parameter_count == tensor_count(TINY_TENSORS) == 2 * 256 * 64 + 4 * 64 * 64 + 64
    assert row.size_bytes == sum(f.stat().st_size for f in Path(row.path).iterdir())
    assert row.has_tokenizer is True
    assert row.root == "base_models"


def test_sharded_model_counts_every_shard_and_missing_shard_is_incomplete(
    config: Config, engine: Engine
) -> None:
    folder = make_model(config.home.base_models, "Qwen-2.5-7B", shards=3, tokenizer=False)
    scan_into(config, engine)
    row = rows_by_key(engine)["qwen-2-5-7b"]
    assert row["state"] == "ready"
    assert row["params"] == tensor_count(TINY_TENSORS)
    (folder / "model-00002-of-00003.safetensors").unlink()
    scan_into(config, engine)
    row = rows_by_key(engine)["qwen-2-5-7b"]
    assert row["state"] == "incomplete"
    assert row["reason"] == (
        "missing 1 of 3 shards named by model.safetensors.index.json: "
        "model-00002-of-00003.safetensors"
    )


def test_truncated_safetensors_is_incomplete(config: Config, engine: Engine) -> None:
    folder = config.home.base_models / "Mistral-7B-Instruct"
    folder.mkdir()
    write_config(folder, model_type="mistral")
    data = safetensors_bytes(TINY_TENSORS)
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    scan_into(config, engine)
    row = rows_by_key(engine)["mistral-7b-instruct"]
    assert row["state"] == "incomplete"
    half = len(data) // 2
    assert row["reason"] == f"model.safetensors is truncated ({half} of {len(data)} bytes)"


def test_shards_without_an_index_are_incomplete(config: Config, engine: Engine) -> None:
    folder = make_model(config.home.base_models, "gemma_2_9b", shards=2)
    (folder / "model.safetensors.index.json").unlink()
    scan_into(config, engine)
    assert rows_by_key(engine)["gemma-2-9b"]["reason"] == (
        "2 weight shards but no model.safetensors.index.json (or pytorch_model.bin.index.json) yet"
    )


def test_malformed_config_is_invalid_with_its_reason(config: Config, engine: Engine) -> None:
    folder = make_model(config.home.base_models, "broken")
    (folder / "config.json").write_text('{"model_type": "llama",')
    no_type = make_model(config.home.base_models, "notype")
    (no_type / "config.json").write_text(json.dumps({"hidden_size": 8}))
    scan_into(config, engine)
    rows = rows_by_key(engine)
    assert rows["broken"]["state"] == "invalid"
    assert rows["broken"]["reason"] == (
        "config.json is not valid JSON: Expecting property name enclosed in double quotes: "
        "line 1 column 24 (char 23)"
    )
    assert rows["notype"]["state"] == "invalid"
    assert str(rows["notype"]["reason"]).startswith("config.json names no model_type")


def test_pytorch_bin_model_is_ready_with_unknown_parameter_count(
    config: Config, engine: Engine
) -> None:
    folder = config.home.models / "llama-2-7b-chat"
    folder.mkdir()
    write_config(folder)
    (folder / "pytorch_model.bin").write_bytes(b"PK\x03\x04 not unpickled, only listed")
    scan_into(config, engine)
    row = load_rows(engine)[0]
    assert (row.key, row.state, row.weight_format, row.parameter_count) == (
        "llama-2-7b-chat",
        "ready",
        "pytorch-bin",
        None,
    )


def test_folders_of_oneseekd_and_non_model_folders_are_not_models(
    config: Config, engine: Engine
) -> None:
    for name in ("oneseek-certified", "backups"):
        make_model(config.home.models, name)
    make_model(config.home.zero / "lora_adapters", "x-adapter")
    (config.home.models / "notes").mkdir()
    (config.home.models / "notes" / "readme.txt").write_text("hi")
    (config.home.models / "OneSeek-7B-Zero-CURRENT").symlink_to("oneseek-7b-zero")
    adapter = make_model(config.home.models, "my-lora")
    (adapter / "adapter_config.json").write_text("{}")
    scan_into(config, engine)
    rows = rows_by_key(engine)
    assert list(rows) == ["my-lora"]
    assert rows["my-lora"]["state"] == "invalid"
    assert rows["my-lora"]["reason"] == (
        "this is a LoRA adapter (adapter_config.json), not a base model"
    )


def test_base_models_wins_and_the_other_copy_is_reported_shadowed(
    config: Config, engine: Engine
) -> None:
    make_model(config.home.base_models, "Qwen-2.5-7B")
    other = make_model(config.home.models, "qwen_2_5_7b")
    scan_into(config, engine)
    row = rows_by_key(engine)["qwen-2-5-7b"]
    assert row["path"] == str(config.home.base_models / "Qwen-2.5-7B")
    assert row["shadowed"] == [str(other)]


def test_symlinks_leading_outside_the_roots_are_not_followed(
    config: Config, engine: Engine, tmp_path: Path
) -> None:
    outside = make_model(tmp_path / "elsewhere", "Outside-Model")
    (config.home.base_models / "Outside-Model").symlink_to(outside)
    inside = make_model(config.home.models, "Real-Model")
    (config.home.base_models / "Linked-Inside").symlink_to(inside)
    half = make_model(config.home.base_models, "Half-Linked")
    (half / "model.safetensors").unlink()
    (half / "model.safetensors").symlink_to(outside / "model.safetensors")
    scan_into(config, engine)
    rows = rows_by_key(engine)
    assert "outside-model" not in rows
    assert rows["linked-inside"]["state"] == "ready"
    assert rows["half-linked"]["state"] == "incomplete"
    assert str(rows["half-linked"]["reason"]).startswith("no weights yet")


def test_hugging_face_hub_cache_as_an_extra_root(home: Path, tmp_path: Path) -> None:
    hub = tmp_path / "hub"
    entry = hub / "models--HuggingFaceTB--SmolLM2-135M-Instruct"
    blobs = entry / "blobs"
    blobs.mkdir(parents=True)
    old = make_model(entry / "snapshots", "aaaa")
    snap = entry / "snapshots" / "bbbb"
    snap.mkdir()
    for name in ("config.json", "model.safetensors"):  # the hub links snapshot files to blobs
        (old / name).rename(blobs / name)
        (old / name).symlink_to(blobs / name)
        (snap / name).symlink_to(blobs / name)
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text("bbbb")
    (home / "oneseekd.toml").write_text(f'[catalog]\nextra_roots = ["{hub}"]\n')
    config = load_config(home, env={})
    result = scan(model_roots(config))
    found = result.models["smollm2-135m-instruct"]
    assert found.state == "ready" and found.path == snap
    assert found.root.kind == "extra"
    assert found.parameter_count == tensor_count(TINY_TENSORS)
    # transformers 5 writes no _name_or_path: the name is the repository's, not the folder's
    assert found.detected_name == "SmolLM2-135M-Instruct"


def test_removed_model_becomes_missing_and_keeps_its_history(
    config: Config, engine: Engine
) -> None:
    folder = make_model(config.home.base_models, "llama-2-7b")
    scan_into(config, engine)
    os.rename(folder, config.home.root / "moved-away")
    scan_into(config, engine)
    assert rows_by_key(engine)["llama-2-7b"]["state"] == "missing"
    os.rename(config.home.root / "moved-away", folder)
    scan_into(config, engine)
    assert rows_by_key(engine)["llama-2-7b"]["state"] == "ready"
    con = sqlite3.connect(config.home.db_file)
    events = con.execute(
        "SELECT event, old_state, new_state FROM catalog_events ORDER BY id"
    ).fetchall()
    assert events == [
        ("added", None, "ready"),
        ("missing", "ready", "missing"),
        ("returned", "missing", "ready"),
    ]


def test_operator_display_name_and_enabled_survive_rescans(config: Config, engine: Engine) -> None:
    folder = make_model(config.home.base_models, "gemma_2_9b")
    scan_into(config, engine)
    con = sqlite3.connect(config.home.db_file)
    con.execute("UPDATE base_models SET display_name = 'Gemma (ours)', enabled = 0")
    con.commit()
    write_config(folder, model_name="Gemma 2 9B")
    scan_into(config, engine)
    [row] = load_rows(engine)
    assert (row.display_name, row.detected_name, row.enabled) == (
        "Gemma (ours)",
        "Gemma 2 9B",
        False,
    )


def test_a_folder_changed_within_the_settle_time_is_incomplete(
    config: Config, engine: Engine
) -> None:
    make_model(config.home.base_models, "fresh")
    result = scan(model_roots(config), settle=3600)
    found = result.models["fresh"]
    assert found.state == "incomplete"
    assert "waiting 3600s for the copy to settle" in str(found.reason)


def test_partial_download_files_keep_a_model_incomplete(config: Config, engine: Engine) -> None:
    folder = make_model(config.home.base_models, "downloading")
    (folder / "model-00002.safetensors.part").write_bytes(b"123")
    result = scan(model_roots(config))
    assert result.models["downloading"].state == "incomplete"
    assert "partial files present (model-00002.safetensors.part)" in str(
        result.models["downloading"].reason
    )


def test_warm_rescan_reuses_unchanged_folders_and_sees_changed_ones(
    config: Config, engine: Engine
) -> None:
    a = make_model(config.home.base_models, "model-a")
    make_model(config.home.base_models, "model-b")
    first = scan(model_roots(config))
    # mark the cached entries: a reused entry keeps the mark, a re-inspected one loses it
    cache = {f.folder: replace(f, detected_name="from-cache") for f in first.everything}
    (a / "config.json").write_text("not json")
    second = scan(model_roots(config), cache=cache)
    assert second.models["model-a"].state == "invalid"
    assert second.models["model-a"].detected_name == "model-a"
    assert second.models["model-b"].detected_name == "from-cache"


def test_a_pulled_folder_records_its_repository_and_commit(config: Config, engine: Engine) -> None:
    from homes import ctl

    folder = make_model(config.home.base_models, "Tiny-Llama")
    copied = make_model(config.home.base_models, "Copied-In")
    commit = "a" * 40
    (folder / ".oneseek-pull.json").write_text(
        json.dumps({"repository": "tiny-org/Tiny-Llama", "commit": commit, "files": {}})
    )
    (copied / ".oneseek-pull.json").write_text("[not a manifest]")
    (config.home.config_file).write_text("[catalog]\nsettle_seconds = 0\n")
    scan_into(config, engine)
    rows = {r.key: r for r in load_rows(engine)}
    assert (rows["tiny-llama"].source_repository, rows["tiny-llama"].source_commit) == (
        "tiny-org/Tiny-Llama",
        commit,
    )
    assert rows["copied-in"].source_repository is None and rows["copied-in"].state == "ready"
    shown = ctl(config.home.root, "models")
    assert f"tiny-llama: pulled from tiny-org/Tiny-Llama at commit {commit[:12]}" in shown.output
    [listed] = [
        m
        for m in json.loads(ctl(config.home.root, "models", "--json").output)
        if m["key"] == "tiny-llama"
    ]
    assert (listed["source_repository"], listed["source_commit"]) == ("tiny-org/Tiny-Llama", commit)
