"""What makes `oneseekctl submit --dry-run` answer in about a second (issue 25): the class
AutoTokenizer picks for a folder is remembered in the home and loaded directly, the CPU's bf16
answer is remembered per boot, and with both remembered the dry run's child imports no torch.
Each remembered answer must give exactly what asking again gives."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from chattemplates import FAMILIES

from oneseekd.spec.plan import held_for
from oneseekd.trainer import hostprobe
from oneseekd.trainer.hostprobe import ENV_CPU_BF16, remembered_cpu_bf16
from oneseekd.trainer.tiny import tiny_model
from oneseekd.trainer.tokenizer import MEMO, folder_key, load_tokenizer

TEXT = "Riksdagen stiftar lagar. Vem stiftar lagar?\n  Ja, Riksdagen!"
CHAT = [  # no system message: Gemma 2's template refuses one
    {"role": "user", "content": "Vem stiftar lagar?"},
    {"role": "assistant", "content": "Riksdagen."},
]


def folders(root: Path) -> list[Path]:
    """Tiny model folders of three architectures, and one per real chat template family."""
    made = [tiny_model(root / arch, "Tiny", arch) for arch in ("llama", "qwen2", "mistral")]
    base = made[0]
    for family in FAMILIES:
        target = root / "families" / family.name
        target.mkdir(parents=True)
        for file in ("config.json", "model.safetensors"):
            (target / file).write_bytes((base / file).read_bytes())
        family.tokenizer().save_pretrained(target)
        made.append(target)
    return made


def same(a: object, b: object) -> None:
    assert type(a) is type(b)
    assert a.special_tokens_map == b.special_tokens_map  # type: ignore[attr-defined]
    assert a.pad_token_id == b.pad_token_id  # type: ignore[attr-defined]
    one = a(TEXT, return_offsets_mapping=True)  # type: ignore[operator]
    two = b(TEXT, return_offsets_mapping=True)  # type: ignore[operator]
    assert (one["input_ids"], one["offset_mapping"]) == (two["input_ids"], two["offset_mapping"])
    if a.chat_template:  # type: ignore[attr-defined]
        rendered = a.apply_chat_template(CHAT, tokenize=False)  # type: ignore[attr-defined]
        assert rendered == b.apply_chat_template(CHAT, tokenize=False)  # type: ignore[attr-defined]
        assert a(rendered)["input_ids"] == b(rendered)["input_ids"]  # type: ignore[operator]


def test_a_remembered_tokenizer_class_loads_what_autotokenizer_loads(tmp_path: Path) -> None:
    memo = tmp_path / "cache" / MEMO
    for folder in folders(tmp_path / "models"):
        asked = load_tokenizer(folder, memo=memo)  # through AutoTokenizer, remembered
        assert folder_key(folder) in json.loads(memo.read_text())
        same(asked, load_tokenizer(folder, memo=memo))  # the remembered class, directly
        same(asked, load_tokenizer(folder))  # no memo at all


def test_the_memo_is_keyed_by_the_files_autotokenizer_decides_from(tmp_path: Path) -> None:
    folder = tiny_model(tmp_path, "Tiny", "llama")
    before = folder_key(folder)
    config = folder / "tokenizer_config.json"
    config.write_text(config.read_text().replace("}", ', "model_max_length": 77}', 1))
    assert folder_key(folder) != before
    later = folder_key(folder)
    (folder / "tekken.json").write_text("{}")  # a file whose presence changes the choice
    assert folder_key(folder) != later


def test_a_memo_that_names_nothing_loadable_is_only_asked_again(tmp_path: Path) -> None:
    folder = tiny_model(tmp_path, "Tiny", "llama")
    memo = tmp_path / MEMO
    memo.write_text(json.dumps({folder_key(folder): {"module": "nowhere", "class": "X"}}))
    same(load_tokenizer(folder, memo=memo), load_tokenizer(folder))
    assert json.loads(memo.read_text())[folder_key(folder)]["module"] != "nowhere"
    memo.write_text("not json")
    load_tokenizer(folder, memo=memo)
    assert folder_key(folder) in json.loads(memo.read_text())


def test_the_cpu_answer_is_remembered_per_host_and_boot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV_CPU_BF16, raising=False)
    memo = tmp_path / "host.json"
    asked: list[int] = []

    def probe(env: object = None) -> bool:
        asked.append(1)
        return True

    monkeypatch.setattr(hostprobe, "cpu_bf16", probe)
    memo.write_text(json.dumps({"other-host 1 torch 2": {"cpu_bf16": False}}))
    assert remembered_cpu_bf16(memo, {}) is True
    assert remembered_cpu_bf16(memo, {}) is True
    assert asked == [1]  # the second answer came from the memo
    kept = json.loads(memo.read_text())
    assert kept["other-host 1 torch 2"] == {"cpu_bf16": False}  # a shared home's other host
    assert kept[hostprobe.host_key()] == {"cpu_bf16": True}
    # another boot of this host: asked again, and the old boot's answer dropped
    monkeypatch.setattr(hostprobe, "host_key", lambda: f"{os.uname().nodename} boot2 torch x")
    assert remembered_cpu_bf16(memo, {}) is True
    assert asked == [1, 1]
    assert len(json.loads(memo.read_text())) == 2
    # forced: neither asked nor remembered
    assert remembered_cpu_bf16(memo, {ENV_CPU_BF16: "0"}) is False
    assert asked == [1, 1]
    memo.write_text("[broken")
    assert remembered_cpu_bf16(memo, {}) is True


def test_the_base_is_held_as_precision_decides_on_a_cpu() -> None:
    assert held_for({"precision": "auto"}, gpu=False, native_bf16=True) == "16-bit"
    assert held_for({"precision": "auto"}, gpu=False, native_bf16=False) == "fp32"
    assert held_for({"precision": "auto"}, gpu=False) == "fp32"  # unknown: the larger
    assert held_for({"precision": "bf16"}, gpu=False) == "16-bit"
    assert held_for({"precision": "fp32"}, gpu=True) == "fp32"
    assert held_for({"precision": "auto"}, gpu=True) == "16-bit"
    assert held_for({"precision": "bf16", "load_in_4bit": True}, gpu=False) == "quantized"


def test_with_both_remembered_the_dry_runs_child_imports_no_torch(tmp_path: Path) -> None:
    folder = tiny_model(tmp_path / "models", "Tiny", "llama")
    dataset = tmp_path / "d.jsonl"
    rows = [{"instruction": f"Vem stiftar lagar {n}?", "output": "Riksdagen."} for n in range(3)]
    dataset.write_text("".join(json.dumps(row) + "\n" for row in rows))
    cache = tmp_path / "cache"
    task = {
        "dataset": str(dataset),
        "cache": str(cache),
        "models": [{"key": "tiny", "path": str(folder), "max_seq_len": 64}],
    }
    probe = (
        "import sys, runpy\n"
        "try:\n"
        "    runpy.run_module('oneseekd.trainer.dryrun', run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "sys.stderr.write('TORCH=%s' % ('torch' in sys.modules))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != ENV_CPU_BF16}
    env["CUDA_VISIBLE_DEVICES"] = ""  # a host without GPUs, whatever this one has
    answers = []
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, "-c", probe],
            input=json.dumps(task),
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        answers.append((json.loads(done.stdout), done.stderr.strip().splitlines()[-1]))
    (first, torch_first), (second, torch_second) = answers
    assert (torch_first, torch_second) == ("TORCH=True", "TORCH=False")
    first["device"].pop("memory"), second["device"].pop("memory")  # what is free now
    assert first == second
    assert first["models"]["tiny"]["records"] == 3
