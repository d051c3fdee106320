"""oneseekctl submit --dry-run: what a request would run, from the trainer's own encoding and
the memory plan, and nothing queued."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from daemon import query
from homes import ctl
from trainhomes import TinyHome

from oneseekd.spec.plan import Params, token_flops
from oneseekd.trainer import hostprobe
from oneseekd.trainer.data import duplicates, load_records
from oneseekd.trainer.hostprobe import ENV_CPU_BF16
from oneseekd.trainer.labels import Encoder, RecordProblem
from oneseekd.trainer.loading import load_tokenizer
from oneseekd.trainer.precision import cpu_bf16
from oneseekd.trainer.tokenizer import MEMO, folder_key

pytestmark = pytest.mark.precision  # the base's held dtype follows the CPU's bf16 answer

SUBMIT = ("submit", "--base-models", "Tiny-Llama", "--dataset", "civic.jsonl", "--dry-run")


@pytest.fixture
def home(tmp_path: Path) -> TinyHome:
    return TinyHome(tmp_path / "home", tmp_path / "cache", {"Tiny-Llama": "llama"})


def nothing_queued(home: TinyHome) -> None:
    assert query(home.root, "SELECT * FROM training_requests") == []
    assert query(home.root, "SELECT * FROM runs") == []


def test_the_report_has_the_trainers_counts_and_the_plan(home: TinyHome) -> None:
    done = ctl(home.root, *SUBMIT, "--max-seq-len", "48", "--json")
    assert done.exit_code == 0, done.output
    report = json.loads(done.stdout)
    nothing_queued(home)
    folder = home.models / "oneseek-7b-zero" / "base_models" / "Tiny-Llama"
    records = load_records(home.root / "datasets" / "civic.jsonl")
    encoder = Encoder(load_tokenizer(folder), 48)
    encoded = [encoder.encode(r) for r in records.items]  # none refused at 48 tokens, some cut
    assert report["queued"] is False
    assert (report["records"], report["duplicates"]) == (48, duplicates(records.items))
    [model] = report["models"]
    assert model["model"] == "tiny-llama"
    assert model["refused"] == 0
    assert model["truncated"] == sum(e.truncated for e in encoded) > 0
    assert model["tokens"] == sum(len(e.ids) for e in encoded)
    assert model["label_tokens"] == sum(sum(e.mask) for e in encoded)
    assert model["label_share"] == pytest.approx(model["label_tokens"] / model["tokens"])
    config = json.loads((folder / "config.json").read_text())
    assert model["epoch_flops"] == model["tokens"] * token_flops(config, 48)
    memory = model["memory"]
    # no CUDA here: the trainer holds the base in bf16 where the CPU computes it, else in fp32
    held = "16-bit" if cpu_bf16() else "fp32"
    assert (report["device"]["bf16"], memory["held"]) == (cpu_bf16(), held)
    assert memory["breakdown"]["weights"] == Params.from_config(config).weight_bytes(held)
    assert memory["fits"] is True
    assert memory["peak_bytes"] == max(
        memory["breakdown"]["step"], memory["breakdown"]["evaluation"]
    )


def test_records_the_run_would_refuse_are_counted_and_named(home: TinyHome) -> None:
    done = ctl(home.root, *SUBMIT, "--max-seq-len", "32")
    assert done.exit_code == 0, done.output
    nothing_queued(home)
    lines = done.stdout.splitlines()
    assert lines[0] == "Dry run: nothing was queued."
    folder = home.models / "oneseek-7b-zero" / "base_models" / "Tiny-Llama"
    encoder = Encoder(load_tokenizer(folder), 32)
    refused = 0
    for record in load_records(home.root / "datasets" / "civic.jsonl").items:
        try:
            encoder.encode(record)
        except RecordProblem:
            refused += 1
    assert refused > 0
    assert f"  the run would be refused: {refused} records cannot be trained on, for " in (
        done.stdout
    )
    assert "    line 2: its response would be cut off entirely at max_seq_len 32" in done.stdout
    assert any(line.startswith("  peak per CPU (cpu, ") for line in lines)


def test_a_bad_request_is_refused_as_submit_refuses_it(home: TinyHome) -> None:
    done = ctl(
        home.root, "submit", "--base-models", "Nope", "--dataset", "civic.jsonl", "--dry-run"
    )
    assert done.exit_code != 0
    assert "the request was refused" in done.output
    assert "base_models: " in done.output
    nothing_queued(home)


def test_a_hub_name_is_measured_as_the_model_on_the_box_or_refused_with_the_pull(
    home: TinyHome,
) -> None:
    # a folder copied in by hand, named as the repository: intake trains it for hf:ORG/NAME
    here = ctl(
        home.root, "submit", "--base-models", "hf:some-org/Tiny-Llama", "--dataset",
        "civic.jsonl", "--max-seq-len", "48", "--dry-run", "--json",
    )  # fmt: skip
    assert here.exit_code == 0, here.output
    assert [m["model"] for m in json.loads(here.stdout)["models"]] == ["tiny-llama"]
    away = ctl(
        home.root, "submit", "--base-models", "hf:some-org/Elsewhere-1B", "--dataset",
        "civic.jsonl", "--dry-run",
    )  # fmt: skip
    assert away.exit_code != 0
    assert "hf:some-org/Elsewhere-1B is not on this box yet" in away.output
    assert "oneseekctl pull some-org/Elsewhere-1B" in away.output
    assert "unknown" not in away.output.lower()
    nothing_queued(home)


def test_the_dry_run_keeps_torch_out_of_oneseekctl(home: TinyHome) -> None:
    probe = textwrap.dedent("""
        import sys
        from oneseekd.cli import main
        try:
            main(["--home", sys.argv[1], *sys.argv[2:]])
        except SystemExit as exc:
            assert exc.code in (0, None), exc.code
        heavy = sorted(m for m in ("torch", "transformers", "peft") if m in sys.modules)
        print("HEAVY=" + ",".join(heavy))
    """)
    done = subprocess.run(
        [sys.executable, "-c", probe, str(home.root), *SUBMIT],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "ONESEEK_HOME": ""},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "HEAVY="


def test_train_dry_run_needs_no_daemon_and_queues_nothing(home: TinyHome) -> None:
    argv = ("train", "--base-models", "Tiny-Llama", "--dataset", "datasets/civic.jsonl")
    done = ctl(home.root, *argv, "--max-seq-length", "48", "--dry-run")
    assert done.exit_code == 0, done.output
    assert done.stdout.splitlines()[0] == "Dry run: nothing was queued."
    assert "tiny-llama: 48 records after the template (0 refused, " in done.stdout
    nothing_queued(home)


def test_the_time_is_estimated_from_the_models_last_measured_training(home: TinyHome) -> None:
    done = ctl(home.root, *SUBMIT, "--json")
    [model] = json.loads(done.stdout)["models"]
    assert (model["measured_tokens_per_s"], model["estimated_seconds"]) == (None, None)
    run_id = home.submit(["Tiny-Llama"])  # a run whose training measured 500 tokens/s
    [(run_pk,)] = query(home.root, "SELECT id FROM runs WHERE run_id = ?", run_id)
    with home.engine.begin() as con:
        con.exec_driver_sql(
            "INSERT INTO model_trainings (run_id, model_key, position, state, epochs_done, "
            "steps, tokens, seconds) VALUES (?, 'tiny-llama', 0, 'trained', 1, 10, 5000, 10.0)",
            (run_pk,),
        )
    done = ctl(home.root, *SUBMIT, "--epochs", "2", "--json")
    [model] = json.loads(done.stdout)["models"]
    assert model["measured_tokens_per_s"] == 500.0
    assert model["estimated_seconds"] == round(model["tokens"] * 0.9 * 2 / 500.0, 1)
    text = ctl(home.root, *SUBMIT, "--epochs", "2").stdout
    assert f"  time: about {model['estimated_seconds']:.0f} s of training at 500 tokens/s" in text


def test_after_a_training_the_dry_run_finds_both_answers_remembered(home: TinyHome) -> None:
    home.train(["Tiny-Llama"])  # the trainer remembers its tokenizer class and the CPU's answer
    folder = home.models / "oneseek-7b-zero" / "base_models" / "Tiny-Llama"
    cache = home.root / "cache"
    assert folder_key(folder) in json.loads((cache / MEMO).read_text())
    if not os.environ.get(ENV_CPU_BF16, "").strip():  # forced: nothing to remember
        assert json.loads((cache / hostprobe.MEMO).read_text())[hostprobe.host_key()] == {
            "cpu_bf16": cpu_bf16()
        }
    done = ctl(home.root, *SUBMIT, "--json")
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["device"]["bf16"] == cpu_bf16()


def test_the_report_says_when_a_batch_is_trained_in_passes(home: TinyHome) -> None:
    done = ctl(home.root, *SUBMIT, "--max-seq-len", "48", "--micro-batch-size", "2", "--json")
    assert done.exit_code == 0, done.output
    [model] = json.loads(done.stdout)["models"]
    assert (model["batch_size"], model["memory"]["micro_batch_size"]) == (8, 2)
    text = ctl(home.root, *SUBMIT, "--max-seq-len", "48", "--micro-batch-size", "2").stdout
    assert " at batch 8 x 48 in passes of 2 rows (micro_batch_size), base " in text
