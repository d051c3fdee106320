"""`oneseekctl train`: CivicAI's training start, with the admin panel's argv and environment
(issue 11, item 5)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import civic
import pytest
from click.testing import CliRunner
from daemon import DaemonProcess, query, run_state, wait_for
from trainhomes import tiny_home

from oneseekd.cli import main as ctl
from oneseekd.cli.train import TrainRefused, build_request

# what admin.js spawns (CIVICAI.md, "The training start"): auto-stop's flags always
ARGV = [
    "--dataset",
    "datasets/civic.jsonl",
    "--epochs",
    "2",
    "--learning-rate",
    "0.005",
    "--auto-stop-threshold",
    "0.001",
    "--auto-stop-patience",
    "3",
    "--seed",
    "7",
    "--language",
    "sv",
    "--lora-rank",
    "4",
    "--lora-alpha",
    "8",
    "--max-seq-length",
    "64",
    "--batch-size",
    "4",
]


def _env(home: Path, **more: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONESEEK_")}
    env.update(
        BASE_MODELS="Tiny-Llama",
        RUN_ID="run-2026-12-01-10-00-00",
        USE_DDP="false",
        MODELS_DIR=str(home / "models"),
        **more,
    )
    return env


def test_the_admin_panels_argv_and_environment_make_a_request(tmp_path: Path) -> None:
    env = {"BASE_MODELS": "A,B", "RUN_ID": "run-2026-12-01-10-00-00", "USE_DDP": "true"}
    data = build_request([*ARGV, "--target-modules", "q_proj,v_proj"], env, tmp_path / "models")
    assert data == {
        "dataset": "civic.jsonl",
        "epochs": 2,
        "learning_rate": 0.005,
        "auto_stop_threshold": 0.001,
        "auto_stop_patience": 3,
        "seed": 7,
        "language": "sv",
        "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        "max_seq_len": 64,
        "batch_size": 4,
        "base_models": ["A", "B"],
        "run_id": "run-2026-12-01-10-00-00",
        "sharding": "ddp",
    }
    # --base-models wins over BASE_MODELS; a bare dataset id names the same file
    data = build_request(
        ["--base-models", "C", "D", "--dataset", "civic.jsonl"], env, tmp_path / "models"
    )
    assert (data["base_models"], data["dataset"]) == (["C", "D"], "civic.jsonl")


def test_options_oneseekd_does_not_take_yet_are_refused_by_name(tmp_path: Path) -> None:
    tiny_home(tmp_path / "home", tmp_path / "cache", {})
    argv = [*ARGV, "--auto-stop-threshold", "0.01", "--load-in-4bit", "--deepspeed-stage", "2"]
    done = CliRunner().invoke(
        ctl, ["--home", str(tmp_path / "home"), "train", *argv, "--bogus"], env=_env(tmp_path)
    )
    assert done.exit_code == 2
    assert done.output == (
        "Error: the training start was refused\n"
        "  - unknown argument '--bogus' (`oneseekctl train --help` lists the flags)\n"
        "  - oneseekd does not support --deepspeed-stage yet; leave it out (nothing is "
        "ignored silently)\n"
        f"  - MODELS_DIR={tmp_path}/models is not this home's models folder "
        f"{tmp_path}/home/models; run with --home (or ONESEEK_HOME) set to the folder that "
        "holds it\n"
    )


def test_every_admin_panel_option_flag_becomes_its_request_field(tmp_path: Path) -> None:
    argv = [
        *("--dataset", "civic.jsonl", "--auto-stop-threshold", "0.01", "--load-in-4bit"),
        *("--lr-scheduler=linear", "--warmup-steps", "5", "--no-fast-tokenizer"),
        *("--lora-scaling-factor", "2", "--num-gpus", "0", "--use-deepspeed"),
    ]
    data = build_request(argv, {}, tmp_path / "models")
    assert data == {
        "dataset": "civic.jsonl",
        "auto_stop_threshold": 0.01,
        "load_in_4bit": True,
        "lr_scheduler": "linear",
        "warmup_steps": 5,
        "use_fast_tokenizer": False,
        "lora_scaling_factor": 2.0,
        "num_gpus": 0,
        "use_deepspeed": True,
    }
    with pytest.raises(TrainRefused) as refused:
        build_request(["--warmup-steps", "soon", "--load-in-4bit=yes"], {}, tmp_path / "models")
    assert refused.value.problems == [
        "--warmup-steps: 'soon' is not a int",
        "--load-in-4bit takes no value (got 'yes')",
    ]


def test_without_a_daemon_it_says_so_and_queues_nothing(tmp_path: Path) -> None:
    home = tiny_home(tmp_path / "home", tmp_path / "cache", {})
    done = CliRunner().invoke(ctl, ["--home", str(home), "train", *ARGV], env=_env(home))
    assert done.exit_code == 1
    assert done.output == (
        f"Error: no oneseekd serves {home}: nothing was queued\n"
        f"  - start it (`systemctl start oneseekd`, or `oneseekd --home {home}`), "
        "then run this again\n"
    )
    assert not (home / "oneseek.db").exists() or query(home, "SELECT * FROM runs") == []


def _train(home: Path, argv: list[str], **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "oneseekd.cli", "--home", str(home), "train", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(home, **env),
    )


@pytest.fixture
def home(tmp_path: Path, cache: Path) -> Iterator[Path]:
    """A home with a tiny Llama, served by a daemon that is ready; stopped afterwards."""
    home = tiny_home(tmp_path / "home", cache, {"Tiny-Llama": "llama"})
    daemon = DaemonProcess(home)
    try:
        daemon.wait_event("daemon_ready", timeout=60)
        yield home
    finally:
        daemon.stop()


@pytest.mark.timeout(600)
def test_a_training_start_prints_what_the_admin_panel_parses(home: Path) -> None:
    done = _train(home, ARGV)
    out, err = done.communicate(timeout=500)
    assert done.returncode == 0, out + err
    lines = out.splitlines()
    epochs = [m.groups() for m in map(civic.EPOCH.search, lines) if m]
    assert ("1", "2") in epochs and ("2", "2") in epochs
    assert [int(i) for i, _ in epochs] == sorted(int(i) for i, _ in epochs)  # never backwards
    assert [float(m.group(1)) for m in map(civic.LOSS.search, lines) if m]
    ends = [line for line in lines if "epoch end" in line]  # a loss: at each epoch's end
    assert [civic.EPOCH.search(e).groups() for e in ends] == [("1", "2"), ("2", "2")]  # type: ignore[union-attr]
    assert all(civic.LOSS.search(e) for e in ends)
    dna = civic.DNA.search(lines[-1])
    assert dna is not None and lines[-1] == f"DNA: {dna.group(1)}"
    certified = home / "models" / "oneseek-certified"
    assert os.readlink(certified / "run-2026-12-01-10-00-00") == dna.group(1)
    # refused by the validator: exit 2, nothing queued. The same request on the same data
    # repeats a run that succeeded (a duplicate, named); another with the same RUN_ID clashes
    again = _train(home, ARGV)
    out, err = again.communicate(timeout=60)
    assert again.returncode == 2, out + err
    assert "duplicate of request #1: run run-2026-12-01-10-00-00 succeeded" in err
    other = [*ARGV]
    other[other.index("--seed") + 1] = "8"
    clash = _train(home, other)  # the same RUN_ID again
    out, err = clash.communicate(timeout=60)
    assert clash.returncode == 2, out + err
    assert "run id run-2026-12-01-10-00-00 already exists" in err
    assert len(query(home, "SELECT * FROM runs")) == 1


@pytest.mark.timeout(600)
def test_a_kill_cancels_the_run(home: Path) -> None:
    argv = [*ARGV]
    argv[argv.index("--epochs") + 1] = "50"
    proc = _train(home, argv)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    while not line.startswith("Epoch "):  # the run is training: stop it as the panel does
        assert line, proc.stderr.read() if proc.stderr else ""
        line = proc.stdout.readline()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "Cancelled run run-2026-12-01-10-00-00 (SIGTERM)" in err
    wait_for(
        lambda: run_state(home, "run-2026-12-01-10-00-00") == "cancelled",
        timeout=120,
        what="the run cancelled",
    )


@pytest.mark.timeout(600)
def test_a_refused_run_says_its_one_cause_on_stderr_and_in_status(home: Path) -> None:
    """Item 2 of issue 30: the trainer's reason (every record cut at max_seq_len, grouped as
    `lines 1-N`) is the Error line of train's stderr and the status recent line's cause, not
    "the trainer exited with status 65"."""
    prompt = " ".join(["the council met again to discuss the budget"] * 8)
    records = [{"instruction": f"{prompt} ({n})", "output": "yes"} for n in range(1, 21)]
    (home / "datasets" / "long.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    argv = [*ARGV]
    argv[argv.index("--max-seq-length") + 1] = "16"
    argv[argv.index("--dataset") + 1] = "datasets/long.jsonl"
    done = _train(home, argv)
    out, err = done.communicate(timeout=500)
    assert done.returncode == 1, out + err
    first = err.splitlines()[0]
    prefix = "Error: run run-2026-12-01-10-00-00 failed: dataset long.jsonl has 20 record(s) "
    assert first.startswith(prefix), err
    assert "lines 1\u201320: its response would be cut off entirely at max_seq_len 16" in first
    assert "exited with status 65" not in first
    status = CliRunner().invoke(ctl, ["--home", str(home), "status"])
    [recent] = [line for line in status.output.splitlines() if line.startswith("recent:")]
    assert recent.endswith(first.removeprefix("Error: run run-2026-12-01-10-00-00 failed: "))


@pytest.mark.timeout(600)
def test_a_run_the_gate_holds_back_says_why_in_a_line_the_panel_does_not_parse(
    tmp_path: Path, cache: Path
) -> None:
    home = tiny_home(tmp_path / "home", cache, {"Tiny-Llama": "llama"})
    with (home / "oneseekd.toml").open("a") as toml:
        toml.write("[certify]\nmake_current = false\n")
    daemon = DaemonProcess(home)
    try:
        daemon.wait_event("daemon_ready", timeout=60)
        argv = [*ARGV]
        argv[argv.index("--epochs") + 1] = "1"
        done = _train(home, argv)
        out, err = done.communicate(timeout=500)
    finally:
        daemon.stop()
    assert done.returncode == 0, out + err
    lines = out.splitlines()
    assert civic.DNA.search(lines[-1])
    [held] = [line for line in lines if line.startswith("Not made current: ")]
    assert "make_current" in held
    for pattern in (civic.EPOCH, civic.LOSS, civic.DNA):
        assert not pattern.search(held)
