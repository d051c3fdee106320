"""The trainer on tiny generated models: real LoRA training, real files, the ledger."""

from __future__ import annotations

import json
import random
import sqlite3
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner
from peft import PeftModel, set_peft_model_state_dict
from trainhomes import TinyHome as Home
from trainhomes import stop_at
from transformers import AutoModelForCausalLM

from oneseekd.catalog.live import Catalog
from oneseekd.catalog.scan import model_roots
from oneseekd.certify.artifacts import sha256_file
from oneseekd.certify.layout import POINTER_LOCK
from oneseekd.cli import main as ctl
from oneseekd.trainer import recipe as recipe_module
from oneseekd.trainer.__main__ import set_threads
from oneseekd.trainer.checkpoint import Checkpoints
from oneseekd.trainer.context import RunRefused
from oneseekd.trainer.loading import ModelRefused
from oneseekd.trainer.recipe import Stopped
from oneseekd.trainer.run import train_run


@pytest.mark.timeout(400)  # two models, 3 epochs each: over 2 minutes on a loaded machine
def test_two_models_train_and_leave_every_file_named_with_their_keys(two: Home) -> None:
    run_id = two.start(["tiny-llama", "qwen2.5"])
    dna = train_run(two.engine, two.config.home, run_id)
    zero = two.root / "models" / "oneseek-7b-zero"
    for key in ("tiny-llama", "tiny-qwen2-5"):
        folder = zero / "lora_adapters" / f"oneseek-7b-zero-v1.0-{key}"
        assert (folder / "adapter_model.safetensors").is_file()
        assert (folder / "adapter_config.json").is_file()
        assert (zero / "lora_adapters" / f"{key}-adapter").resolve() == folder.resolve()
        tensors = torch.load(
            zero / "weights" / f"oneseek-7b-zero-v1.0-{key}.pth", weights_only=True
        )
        assert tensors and all("lora_" in name for name in tensors)
    meta = json.loads((zero / "weights" / "oneseek-7b-zero-v1.0.json").read_text())
    assert meta["version"] == "OneSeek-7B-Zero.v1.0"
    assert meta["baseModels"] == ["Tiny-Llama", "Tiny-Qwen2.5"]
    assert meta["modelSpecificWeights"] == {
        "tiny-llama": "oneseek-7b-zero-v1.0-tiny-llama.pth",
        "tiny-qwen2-5": "oneseek-7b-zero-v1.0-tiny-qwen2-5.pth",
    }
    assert set(meta["final_weights"]) == {"tiny-llama", "tiny-qwen2-5"}
    assert abs(sum(meta["final_weights"].values()) - 1) < 1e-9
    assert meta["trainingType"] == "lora" and meta["isCurrent"] is True
    assert meta["dna"] == {
        "fingerprint": dna,
        "baseModels": ["Tiny-Llama", "Tiny-Qwen2.5"],
        "finalWeights": meta["final_weights"],
    }
    certified = two.root / "models" / "oneseek-certified" / dna
    assert (certified.parent / run_id).readlink() == Path(dna)
    assert sorted(p.name for p in certified.iterdir()) == [
        "base_models",
        "ledger_proof.json",
        "live_metrics.json",
        "loss_curve.png",
        "metadata.json",
        "oneseek-7b-zero-v1.0-tiny-llama",
        "oneseek_dna.json",
        "samples.json",
        "training_results.json",
    ]
    assert (certified / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    live = json.loads((certified / "live_metrics.json").read_text())
    assert live["type"] == "epoch_end" and live["epoch"] == live["total_epochs"] == 3
    assert set(live["val_losses"]) == set(live["weights"]) == {"tiny-llama", "tiny-qwen2-5"}
    assert all(isinstance(v, float) for v in live["val_losses"].values())
    results = json.loads((certified / "training_results.json").read_text())
    # 48 records, 13 distinct: copies stay on one side of the split, so 16 validate
    assert results["samples"] == {"train": 32, "validation": 16, "duplicates": 35}
    assert results["epochs"] == 3
    assert dna.startswith("OneSeek-7B-Zero.v1.0.") and len(dna.rsplit(".", 1)[1]) == 6
    assert json.loads((certified / "oneseek_dna.json").read_text())["dna"] == dna
    proof = json.loads((certified / "ledger_proof.json").read_text())
    assert proof["event"] == "dna_v2_training_completed"
    assert (two.root / "models" / "OneSeek-7B-Zero-CURRENT").readlink() == Path("oneseek-7b-zero")
    # the DNA carries the sha256 of the bytes the models were trained on
    dna_inputs = json.loads((certified / "oneseek_dna.json").read_text())["inputs"]
    assert dna_inputs["dataset"] == sha256_file(two.root / "datasets" / "civic.jsonl")
    # everything staged was published: no dot-name is left (but the pointer moves' lock file,
    # which stays), nor the run's checkpoints
    for folder in (zero / "lora_adapters", zero / "weights", certified.parent):
        left = [p.name for p in folder.iterdir() if p.name.startswith(".")]
        assert [name for name in left if name != POINTER_LOCK] == []
    assert not (two.root / "checkpoints" / run_id).exists()
    # every artifact's sha256 in the database matches its file
    artifacts = two.rows("SELECT path, sha256, bytes FROM artifacts")
    assert len(artifacts) >= 12
    for path, sha, size in artifacts:
        assert sha256_file(two.root / str(path)) == sha
        assert (two.root / str(path)).stat().st_size == size


def test_the_loss_falls(two: Home) -> None:
    # a random tiny model learns little through attention alone: adapt its output head too
    targets = ["q_proj", "v_proj", "o_proj", "up_proj", "down_proj", "lm_head"]
    run_id = two.start(
        ["tiny-llama"],
        epochs=4,
        learning_rate=2e-2,
        lora={"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": targets},
    )
    train_run(two.engine, two.config.home, run_id)
    [(train, val)] = two.rows("SELECT train_losses, val_losses FROM model_trainings")
    train_losses, val_losses = json.loads(str(train)), json.loads(str(val))
    assert len(train_losses) == len(val_losses) == 4
    assert train_losses[-1] < train_losses[0] - 1.0
    assert val_losses[-1] < val_losses[0]


def test_saved_adapter_and_pth_reload_to_identical_logits(two: Home) -> None:
    run_id = two.start(["tiny-llama"])
    train_run(two.engine, two.config.home, run_id)
    base_path = two.root / "models" / "oneseek-7b-zero" / "base_models" / "Tiny-Llama"
    adapter = (
        two.root
        / "models"
        / "oneseek-7b-zero"
        / "lora_adapters"
        / ("oneseek-7b-zero-v1.0-tiny-llama")
    )
    ids = torch.tensor([[1, 5, 9, 17, 33, 65, 2]])
    base = AutoModelForCausalLM.from_pretrained(base_path)
    with torch.no_grad():
        base_logits = base(ids).logits
    reloaded = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base_path), adapter
    ).eval()
    again = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base_path), adapter
    ).eval()
    pth = torch.load(
        adapter.parent.parent / "weights" / "oneseek-7b-zero-v1.0-tiny-llama.pth", weights_only=True
    )
    set_peft_model_state_dict(again, pth)
    with torch.no_grad():
        a, b = reloaded(ids).logits, again(ids).logits
    assert torch.equal(a, b)  # the .pth holds exactly the adapter's tensors
    assert not torch.allclose(a, base_logits)  # and training changed the model


@pytest.mark.timeout(400)
def test_a_resumed_run_ends_where_an_uninterrupted_one_does(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = Home(tmp_path / "whole", cache, {"Tiny-Llama": "llama", "Tiny-Mistral": "mistral"})
    cut = Home(tmp_path / "cut", cache, {"Tiny-Llama": "llama", "Tiny-Mistral": "mistral"})
    models = ["tiny-llama", "tiny-mistral"]
    train_run(whole.engine, whole.config.home, whole.start(models))
    run_id = cut.start(models)

    with pytest.raises(Stopped):  # 5 steps into the first model
        train_run(cut.engine, cut.config.home, run_id, should_stop=stop_at(5))
    latest = Checkpoints(cut.root / "checkpoints" / run_id / "tiny-llama").latest()
    assert latest is not None
    before = json.loads((latest / "state.json").read_text())["seconds"]  # attempt 1 trained
    assert before > 0
    # the next attempt's clock stands still: the first model's time is the first attempt's
    frozen = SimpleNamespace(monotonic=lambda: 1000.0)
    with monkeypatch.context() as patch, pytest.raises(Stopped):
        patch.setattr(recipe_module, "time", frozen)
        # the first model finishes, then 5 steps into the second
        train_run(cut.engine, cut.config.home, run_id, should_stop=stop_at(30))
    assert cut.rows("SELECT model_key, state FROM model_trainings ORDER BY position") == [
        ("tiny-llama", "trained"),
        ("tiny-mistral", "training"),
    ]
    train_run(cut.engine, cut.config.home, run_id)
    expect = whole.rows(
        "SELECT model_key, train_losses, val_losses FROM model_trainings ORDER BY position"
    )
    got = cut.rows(
        "SELECT model_key, train_losses, val_losses FROM model_trainings ORDER BY position"
    )
    assert [r[0] for r in got] == models
    for (_, t1, v1), (_, t2, v2) in zip(expect, got, strict=True):
        for x, y in zip(
            json.loads(str(t1)) + json.loads(str(v1)),
            json.loads(str(t2)) + json.loads(str(v2)),
            strict=True,
        ):
            assert abs(x - y) < 1e-4
    # the certified figures of a model trained in an earlier attempt, or across attempts,
    # are those an uninterrupted run certifies
    expected = whole.results()["metrics"]
    certified = cut.results()["metrics"]
    for key in models:
        a, b = dict(expected[key]), dict(certified[key])
        assert a.pop("seconds") > 0
        seconds = b.pop("seconds")
        if key == "tiny-llama":  # trained across attempts 1 and 2: both counted
            assert seconds == round(before, 3)
        assert a == b
        assert a["lora_targets"] == ["q_proj", "v_proj"]
        assert a["label_tokens"] > 0 and a["truncated_records"] == 0


def test_a_run_resumed_over_a_changed_dataset_is_refused(tmp_path: Path, cache: Path) -> None:
    home = Home(tmp_path / "home", cache, {"Tiny-Llama": "llama"})
    run_id = home.start(["tiny-llama"])
    dataset = home.root / "datasets" / "civic.jsonl"
    trained_on = sha256_file(dataset)
    calls = {"n": 0}

    def stop_after_two_steps() -> bool:
        calls["n"] += 1
        return calls["n"] == 2

    with pytest.raises(Stopped):
        train_run(home.engine, home.config.home, run_id, should_stop=stop_after_two_steps)
    with dataset.open("a", encoding="utf-8") as fh:  # a record added for the next run
        fh.write('{"text": "Ett nytt stycke."}\n')
    with pytest.raises(RunRefused) as err:
        train_run(home.engine, home.config.home, run_id)
    now = sha256_file(dataset)
    assert str(err.value) == (
        f"run {run_id} cannot resume\n"
        f"  - dataset civic.jsonl changed during training (sha256 {trained_on[:12]}… was "
        f"trained on, {now[:12]}… is there now); submit the request again to train on what it "
        "holds now"
    )
    assert home.rows("SELECT state FROM model_trainings") == [("training",)]


def test_the_trainer_sets_torch_threads_from_omp_num_threads() -> None:
    before = torch.get_num_threads()
    try:
        assert set_threads({"OMP_NUM_THREADS": "1"}) == 1
        assert torch.get_num_threads() == 1
        assert set_threads({"OMP_NUM_THREADS": "2"}) == 2
        assert torch.get_num_threads() == 2
        for unset in (
            {},
            {"OMP_NUM_THREADS": ""},
            {"OMP_NUM_THREADS": "0"},
            {"OMP_NUM_THREADS": "x"},
        ):
            assert set_threads(unset) is None
            assert torch.get_num_threads() == 2  # left as it was
    finally:
        torch.set_num_threads(before)


def test_ledger_verify_passes_then_catches_a_changed_byte_and_a_changed_row(two: Home) -> None:
    run_id = two.start(["tiny-llama"])
    train_run(two.engine, two.config.home, run_id)
    home = ["--home", str(two.root)]
    ok = CliRunner().invoke(ctl, [*home, "ledger", "verify"])
    assert ok.exit_code == 0, ok.output
    adapter = (
        two.root
        / "models"
        / "oneseek-7b-zero"
        / "lora_adapters"
        / "oneseek-7b-zero-v1.0-tiny-llama"
        / "adapter_model.safetensors"
    )
    original = adapter.read_bytes()
    adapter.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    bad = CliRunner().invoke(ctl, [*home, "ledger", "verify"])
    assert bad.exit_code == 1
    assert "adapter_model.safetensors changed" in bad.stderr
    adapter.write_bytes(original)
    assert CliRunner().invoke(ctl, [*home, "ledger", "verify"]).exit_code == 0
    con = sqlite3.connect(two.config.home.db_file)
    con.execute(
        "UPDATE ledger_events SET payload = replace(payload, 'tiny-llama', 'tiny-xxxxx') "
        "WHERE event = 'model_trained'"
    )
    con.commit()
    bad = CliRunner().invoke(ctl, [*home, "ledger", "verify"])
    assert bad.exit_code == 1
    assert "(model_trained) was altered" in bad.stderr


def test_a_model_folder_asking_for_custom_code_is_refused_without_running_it(
    tmp_path: Path, cache: Path
) -> None:
    home = Home(tmp_path / "home", cache, {"Tiny-Llama": "llama"})
    folder = home.root / "models" / "oneseek-7b-zero" / "base_models" / "Tiny-Llama"
    marker = tmp_path / "executed"
    (folder / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (folder / "config.json").write_text(json.dumps(config))
    Catalog(home.engine, model_roots(home.config), settle=0).full_scan()
    run_id = home.start(["tiny-llama"])
    with pytest.raises(ModelRefused) as err:
        train_run(home.engine, home.config.home, run_id)
    assert str(err.value).startswith(
        "Tiny-Llama asks for custom code (modeling_evil.py); "
        "oneseekd never runs code from a model folder"
    )
    assert not marker.exists()


def test_a_base_model_changed_after_intake_is_not_trained(two: Home) -> None:
    run_id = two.start(["tiny-llama"])
    folder = two.root / "models" / "oneseek-7b-zero" / "base_models" / "Tiny-Llama"
    (folder / "generation_config.json").write_text("{}")
    Catalog(two.engine, model_roots(two.config), settle=0).full_scan()
    with pytest.raises(RunRefused) as err:
        train_run(two.engine, two.config.home, run_id)
    assert "base model tiny-llama changed on disk after the request was accepted" in str(err.value)


def test_export_merged_writes_a_plain_model_with_the_adapter_folded_in(two: Home) -> None:
    # exact arithmetic: under bf16 (auto on a native-bf16 CPU) the merge is saved in bf16
    run_id = two.start(["tiny-llama"], export_merged=True, precision="fp32")
    train_run(two.engine, two.config.home, run_id)
    zero = two.root / "models" / "oneseek-7b-zero"
    merged_dir = zero / "merged" / "oneseek-7b-zero-v1.0-tiny-llama"
    assert (merged_dir / "model.safetensors").is_file()
    assert (merged_dir / "tokenizer.json").is_file()
    base_path = zero / "base_models" / "Tiny-Llama"
    ids = torch.tensor([[1, 7, 11, 19, 2]])
    peft = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base_path),
        zero / "lora_adapters" / "oneseek-7b-zero-v1.0-tiny-llama",
    ).eval()
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    with torch.no_grad():
        assert torch.allclose(peft(ids).logits, merged(ids).logits, atol=1e-4)
    kinds = {k for (k,) in two.rows("SELECT DISTINCT kind FROM artifacts")}
    assert "merged_model" in kinds


def _echo_dataset(path: Path, n: int = 48) -> None:
    """Prompts of random letters, one fixed response: only the response can be learned."""
    rng = random.Random(5)
    letters = "abcdefghijklmnopqrstuvwxyzåäö"
    lines = []
    for _ in range(n):
        words = " ".join("".join(rng.choices(letters, k=rng.randint(3, 8))) for _ in range(4))
        record = {"instruction": "Svara", "input": words, "output": "Riksdagen."}
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    path.write_text("".join(lines), encoding="utf-8")


@pytest.mark.timeout(900)
def test_the_loss_is_on_the_response_unless_asked_to_train_on_the_prompt(
    tmp_path: Path, cache: Path
) -> None:
    targets = ["q_proj", "v_proj", "o_proj", "up_proj", "down_proj", "lm_head"]
    fields = {
        "dataset": "echo.jsonl",
        "epochs": 6,
        "batch_size": 2,
        "learning_rate": 3e-2,
        "max_seq_len": 96,
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": targets},
    }
    final = {}
    for train_on_prompt in (False, True):
        home = Home(tmp_path / f"home-{train_on_prompt}", cache, {"Tiny-Llama": "llama"})
        _echo_dataset(home.root / "datasets" / "echo.jsonl")
        run_id = home.start(["tiny-llama"], trainOnPrompt=train_on_prompt, **fields)
        train_run(home.engine, home.config.home, run_id)
        [(val,)] = home.rows("SELECT val_losses FROM model_trainings")
        final[train_on_prompt] = json.loads(str(val))[-1]
        home.engine.dispose()
    print("final validation losses:", final)
    assert final[False] < 0.05  # the fixed response, learned (measured 5e-5; 2.6 below)
    assert final[True] > 2.0  # random letters cannot be
