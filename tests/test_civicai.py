"""CivicAI's own programs find, list, activate and load what oneseekd certifies (issue 11), and
the adapter does not depend on where it was trained (issue 15, item 10).

The lookup rules are CivicAI's, as tests/civic.py writes them from what its programs read."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import civic
import torch
from peft import PeftModel
from trainhomes import TinyHome, cached_tiny
from transformers import AutoModelForCausalLM

import oneseekd.certify.live as live_module
from oneseekd.certify.layout import CURRENT_LINK, CURRENT_TXT, resolve_current
from oneseekd.certify.publish import publish


def _logits(model: Any) -> torch.Tensor:
    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    with torch.no_grad():
        return model(input_ids=ids).logits


def _service_loads(models: Path) -> tuple[Path, str]:
    """What the inference service does at start: the current folder, its base model found
    where CivicAI searches, every listed adapter stacked onto it; returns the folder and the
    base model's name, and checks the adapters change the base model's logits."""
    folder = civic.active_model_path(models)
    assert folder is not None and civic.PREFIX in folder.name
    metadata = json.loads((folder / "metadata.json").read_text())
    name = civic.base_model_name(metadata)
    base_dir = civic.find_base_model(models, folder, name)
    assert base_dir is not None, f"no base model {name} where CivicAI searches"
    adapters = civic.adapter_folders(folder, metadata)
    assert adapters, "no adapter in the certified folder: the service would serve the base"
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    before = _logits(base)
    model = PeftModel.from_pretrained(base, adapters[0])
    for extra in adapters[1:]:
        model.load_adapter(extra, adapter_name=extra.name)
    after = _logits(model)
    assert not torch.allclose(before, after), "the adapter does not change the logits"
    return folder, name


def test_civicai_finds_lists_activates_and_loads_every_certified_run(two: TinyHome) -> None:
    written: list[tuple[Path, dict[str, Any]]] = []
    original = live_module.write_json

    def spy(path: Path, data: Any, **kw: Any) -> None:
        written.append((path, data))
        original(path, data, **kw)

    live_module.write_json = spy  # type: ignore[assignment]
    try:
        first_run, first = two.train(["tiny-llama", "qwen2.5"], epochs=2, language="sv")
    finally:
        live_module.write_json = original  # type: ignore[assignment]
    second_run, second = two.train(["qwen2.5"], epochs=2)
    certified = two.models / "oneseek-certified"

    # live metrics were kept where CivicAI polls them, in the seed's shape, every epoch
    assert written and {p for p, _ in written} == {certified / first_run / "live_metrics.json"}
    epoch_ends = [d for _, d in written if d["progress_percent"] and d["val_losses"]]
    assert all(d["type"] == "epoch_end" and d["total_epochs"] == 2 for _, d in written)
    assert all(isinstance(v, float) for d in epoch_ends for v in d["val_losses"].values())
    assert len({json.dumps(d["val_losses"]) for d in epoch_ends}) >= 4  # 2 models x 2 epochs

    # the service starts on the newest certification, which became current
    folder, name = _service_loads(two.models)
    assert folder.name == second and name == "Tiny-Qwen2.5"
    assert (certified / CURRENT_TXT).read_text().strip() == str(certified / second)
    meta = json.loads((certified / first / "metadata.json").read_text())
    assert meta["baseModel"] == "Tiny-Llama" and meta["language"] == "sv"
    assert meta["adapters"] == ["oneseek-7b-zero-v1.0-tiny-llama"]  # baseModels[0]'s only
    assert meta["version"] == "OneSeek-7B-Zero.v1.0" and meta["dna"] == first
    assert meta["datasets"] == ["civic.jsonl"]
    # the held-out next-token accuracy of baseModels[0]; nothing measures fairness
    assert 0 <= meta["metrics"]["accuracy"] <= 1 and meta["metrics"]["fairness"] is None
    # the run id path keeps working, and CivicAI's listing skips it
    assert os.readlink(certified / first_run) == first

    def current_flags() -> tuple[dict[str, bool], dict[str, bool]]:
        listed = {r["name"]: r["isCurrent"] for r in civic.certified_listing(two.models)}
        legacy = {r["fingerprint"]: r["isCurrent"] for r in civic.legacy_listing(two.models)}
        return listed, legacy

    assert current_flags() == ({first: False, second: True}, {first: False, second: True})
    rows = {r["fingerprint"]: r for r in civic.legacy_listing(two.models)}
    assert rows[first]["baseModels"] == ["Tiny-Llama", "Tiny-Qwen2.5"]
    assert abs(sum(rows[first]["finalWeights"].values()) - 1) < 1e-9
    weights_json = two.models / "oneseek-7b-zero" / "weights" / "oneseek-7b-zero-v1.0.json"
    assert civic.lora_weights_file(two.models, weights_json, "tiny-llama").is_file()

    # promote is a rollback: everything CivicAI reads follows, and the ledger records it
    done = two.ctl("promote", first_run)
    assert done.exit_code == 0, done.output
    assert done.output == f"{CURRENT_LINK} -> {first} (run {first_run}), was {second}.\n"
    assert current_flags() == ({first: True, second: False}, {first: True, second: False})
    folder, name = _service_loads(two.models)
    assert folder.name == first and name == "Tiny-Llama"
    again = two.ctl("promote", second)  # by DNA
    assert again.exit_code == 0, again.output
    assert current_flags() == ({first: False, second: True}, {first: False, second: True})
    verify = two.ctl("ledger", "verify")
    assert verify.exit_code == 0, verify.output
    events = [e for (e,) in two.rows("SELECT event FROM ledger_events ORDER BY seq")]
    assert events.count("model_promoted") == 2

    # CivicAI's "Set as Active" re-points the link and rewrites metadata.json: not
    # tampering, and oneseekd does not move the pointer back when it publishes again
    os.unlink(certified / CURRENT_LINK)
    os.symlink(first, certified / CURRENT_LINK)
    (certified / CURRENT_TXT).write_text(str(certified / first))
    (certified / first / "metadata.json").write_text(json.dumps({**meta, "language": "en"}))
    pk = two.rows("SELECT id FROM runs WHERE run_id = ?", second_run)[0][0]
    publish(two.engine, two.config.home, int(pk))
    assert resolve_current(two.config.home).dna == first
    verified = two.ctl("ledger", "verify")
    assert verified.exit_code == 0 and verified.stdout.endswith(f"Current: {first}\n")
    status = json.loads(two.ctl("status", "--json").stdout)
    assert status["current_model"]["dna"] == first
    assert status["current_model"]["run_id"] == first_run
    runs = {r["run_id"]: r for r in json.loads(two.ctl("runs", "--json").stdout)}
    assert (runs[first_run]["current"], runs[second_run]["current"]) == (True, False)
    assert runs[second_run]["dna"] == second
    shown = two.ctl("show", first_run).stdout
    assert f"  dna:      {first} (current)\n" in shown
    # a CURRENT that names no certified run of this home is reported
    os.unlink(certified / CURRENT_LINK)
    os.symlink("OneSeek-7B-Zero.v9.9.abcdef", certified / CURRENT_LINK)
    bad = two.ctl("ledger", "verify")
    assert bad.exit_code == 1
    assert (
        "OneSeek-7B-Zero-CURRENT points at OneSeek-7B-Zero.v9.9.abcdef, which does not exist"
        in bad.output
    )


def test_make_current_false_leaves_the_pointer_to_promote(tmp_path: Path, cache: Path) -> None:
    h = TinyHome(
        tmp_path / "h",
        cache,
        {"Tiny-Llama": "llama"},
        "[certify]\nmake_current = false\n",
    )
    try:
        run_id, dna = h.train(["llama"], epochs=2)
        assert not os.path.lexists(h.models / "oneseek-certified" / CURRENT_LINK)
        assert [r["isCurrent"] for r in civic.certified_listing(h.models)] == [False]
        assert h.ctl("status").stdout.count("current:  none (there is no") == 1
        refused = h.ctl("promote", "run-nope")
        assert refused.exit_code == 1
        assert refused.output.startswith("Error: no run 'run-nope'\n")
        assert h.ctl("promote", run_id).exit_code == 0
        assert civic.active_model_path(h.models) == h.models / "oneseek-certified" / dna
        assert h.ctl("promote", dna).output == f"{dna} (run {run_id}) is current already.\n"
    finally:
        h.engine.dispose()


def test_the_same_training_in_two_home_folders_gives_the_same_dna(
    tmp_path: Path, cache: Path
) -> None:
    dnas = []
    for where in ("first/home", "elsewhere/deeper/other-home"):
        h = TinyHome(tmp_path / where, cache, {"Tiny-Llama": "llama"})
        try:
            _, dna = h.train(["llama"], epochs=1)
        finally:
            h.engine.dispose()
        adapter = h.models / "oneseek-7b-zero" / "lora_adapters" / "oneseek-7b-zero-v1.0-tiny-llama"
        config = json.loads((adapter / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == "Tiny-Llama"
        assert (adapter / "tokenizer.json").is_file() and (
            adapter / "tokenizer_config.json"
        ).is_file()
        for path in adapter.iterdir():
            assert str(h.root) not in path.read_text(errors="replace"), path.name
        dnas.append(dna)
        shutil.rmtree(h.root)
    assert dnas[0] == dnas[1]


_TRAIN_IN_A_PROCESS = """
import sys
from pathlib import Path

sys.path.insert(0, sys.argv[1])
import trainhomes

root, cache, built = (Path(a) for a in sys.argv[2:5])
trainhomes._CACHE[("Tiny-Llama", "llama")] = built  # the parent's tiny model: one base
home = trainhomes.TinyHome(root, cache, {"Tiny-Llama": "llama"})
try:
    print(home.train(["llama"], epochs=1)[1])
finally:
    home.engine.dispose()
"""

_SET_ORDER = "import sys; print(list(set(sys.argv[1:])))"


def _under_seed(seed: int, *argv: str) -> str:
    """stdout's last line of `python argv...` with PYTHONHASHSEED=seed."""
    env = {**os.environ, "PYTHONHASHSEED": str(seed)}
    done = subprocess.run(
        [sys.executable, *argv], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def test_the_same_training_under_two_hash_seeds_gives_one_dna(tmp_path: Path, cache: Path) -> None:
    """peft keeps target_modules as a set and writes it out in the set's order, which follows
    the process's string hash seed; the DNA hashes adapter_config.json's bytes (issue 27,
    finding 8). Two homes, two seeds whose set orders differ: one DNA."""
    built = cached_tiny(cache, "Tiny-Llama", "llama")
    tests = str(Path(__file__).resolve().parent)
    seeds = (0, 3)
    dnas, targets = [], []
    for seed in seeds:
        root = tmp_path / f"seed-{seed}"
        dnas.append(
            _under_seed(seed, "-c", _TRAIN_IN_A_PROCESS, tests, str(root), str(cache), str(built))
        )
        adapter = root / "models/oneseek-7b-zero/lora_adapters/oneseek-7b-zero-v1.0-tiny-llama"
        targets.append(json.loads((adapter / "adapter_config.json").read_text())["target_modules"])
    # the seeds really put these names in different orders: otherwise this proves nothing
    orders = {_under_seed(seed, "-c", _SET_ORDER, *sorted(targets[0])) for seed in seeds}
    assert len(orders) == 2, orders
    assert dnas[0] == dnas[1], targets
    assert targets[0] == targets[1] == sorted(targets[0])
