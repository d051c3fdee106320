"""oneseekctl submit / runs / show / cancel, in-process on a real home."""

from __future__ import annotations

import json
from pathlib import Path

from homes import ctl, request

from oneseekd.config import load_config
from oneseekd.daemon.lock import HomeLock


def submitted(home: Path, model: str) -> str:
    """`oneseekctl submit --base-models MODEL --dataset civic.jsonl`: the run id it queued."""
    result = ctl(home, "submit", "--base-models", model, "--dataset", "civic.jsonl", "--json")
    assert result.exit_code == 0, result.output
    return str(json.loads(result.stdout)["run_id"])


def test_submit_a_file_queues_it(fake_home: Path, tmp_path: Path) -> None:
    path = tmp_path / "civic.json"
    path.write_text(json.dumps(request(epochs=2)))
    result = ctl(fake_home, "submit", str(path), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["status"] == "queued" and data["run_id"].startswith("run-")
    shown = json.loads(ctl(fake_home, "show", data["run_id"], "--json").stdout)
    # the typed run spec: each model's options resolved
    assert [m["epochs"] for m in shown["config"]["models"].values()] == [2]
    assert shown["request"]["source"] == "submit"
    assert shown["request"]["source_name"] == "civic.json"
    assert [(e["from"], e["to"]) for e in shown["events"]] == [(None, "queued")]


def test_flags_build_and_override_the_request(fake_home: Path, tmp_path: Path) -> None:
    path = tmp_path / "base.json"
    path.write_text(json.dumps(request(epochs=2, lora={"r": 4, "alpha": 8})))
    result = ctl(
        fake_home,
        "submit",
        str(path),
        "--base-models",
        "qwen",
        "mistral",
        "--epochs",
        "5",
        "--lora-r",
        "16",
        "--target-modules",
        "q_proj,v_proj",
        "--json",
    )
    assert result.exit_code == 0, result.output
    run_id = json.loads(result.stdout)["run_id"]
    config = json.loads(ctl(fake_home, "show", run_id, "--json").stdout)["config"]
    assert config["base_models"] == ["qwen-2-5-7b", "mistral-7b-instruct"]
    assert [m["epochs"] for m in config["models"].values()] == [5, 5]
    for model in config["models"].values():
        assert model["lora"] == {
            "r": 16,
            "alpha": 8,
            "dropout": 0.1,
            "target_modules": ["q_proj", "v_proj"],
            "use_rslora": False,
        }


def test_the_run_spec_options_are_flags_too(fake_home: Path) -> None:
    """Every train_dna_v2.py option flag sets its request field; the validator judges it."""
    args = ["submit", "--base-models", "qwen", "--dataset", "civic.jsonl", "--json"]
    flags = ["--lr-scheduler", "linear", "--warmup-steps", "5", "--lora-rank", "16"]
    result = ctl(fake_home, *args, *flags, "--no-fast-tokenizer", "--weight-decay", "0.01")
    assert result.exit_code == 0, result.output
    run_id = json.loads(result.stdout)["run_id"]
    config = json.loads(ctl(fake_home, "show", run_id, "--json").stdout)["config"]
    [model] = config["models"].values()
    assert (model["lr_scheduler"], model["warmup_steps"], model["lora"]["r"]) == ("linear", 5, 16)
    assert (model["use_fast_tokenizer"], model["weight_decay"]) == (False, 0.01)
    refused = ctl(fake_home, *args, "--packing-enabled", "--use-deepspeed")
    assert refused.exit_code == 1
    assert json.loads(refused.stdout)["problems"] == [
        'use_deepspeed: oneseekd does not run DeepSpeed; ask for sharding "fsdp" (the GPUs '
        "share one copy of the model, as DeepSpeed ZeRO-3 does)",
    ]


def test_base_models_environment_is_the_fallback(fake_home: Path) -> None:
    result = ctl(
        fake_home,
        "submit",
        "--dataset",
        "civic.jsonl",
        "--json",
        env={"BASE_MODELS": "kb-llama, qwen"},
    )
    assert result.exit_code == 0, result.output
    run_id = json.loads(result.stdout)["run_id"]
    shown = json.loads(ctl(fake_home, "show", run_id, "--json").stdout)
    assert shown["base_models"] == ["kb-llama-3-1-8b-swedish", "qwen-2-5-7b"]


def test_a_refused_request_prints_every_problem_and_exits_1(fake_home: Path) -> None:
    result = ctl(
        fake_home, "submit", "--base-models", "qwen", "--dataset", "civic.jsonl", "--epochs", "0"
    )
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "Error: the request was refused",
        "  - epochs: input should be greater than or equal to 1 (got 0)",
    ]
    result = ctl(fake_home, "submit", "--base-models", "7b", "--dataset", "nope.jsonl")
    assert result.exit_code == 1
    datasets = fake_home.resolve() / "datasets"
    assert result.stderr.splitlines() == [
        "Error: the request was refused",
        f"  - dataset 'nope.jsonl' does not exist in {datasets}/; the dataset files there, "
        f"closest first: civic.jsonl; put the file under {datasets}/ and name it relative to "
        "that folder",
        "  - base_models: model name '7b' is ambiguous (containment match): it matches "
        "mistral-7b-instruct, qwen-2-5-7b; use the full key of one of them",
    ]


def test_the_same_request_id_is_not_queued_twice(fake_home: Path) -> None:
    args = ("submit", "--base-models", "qwen", "--dataset", "civic.jsonl", "--request-id", "n1")
    first = ctl(fake_home, *args)
    second = ctl(fake_home, *args)
    assert first.exit_code == 0 and second.exit_code == 0
    run_id = first.stdout.split()[3]
    assert second.stdout.strip() == (
        f"Not queued again: duplicate of request #1: run {run_id} is queued; the same "
        "request_id ('n1') is always this request: give a new `request_id` to train it again."
    )
    assert len(json.loads(ctl(fake_home, "runs", "--json").stdout)) == 1


def test_runs_show_and_cancel_a_queued_run(fake_home: Path) -> None:
    run_id = submitted(fake_home, "qwen")
    listing = ctl(fake_home, "runs").stdout.splitlines()
    # one column says the state (the outcome only when it says more)
    assert listing[0].split() == [
        "RUN",
        "STATE",
        "VERSION",
        "DNA",
        "MODELS",
        "QUEUED",
        "FINISHED",
        "GAIN",
    ]
    assert listing[1].split()[:5] == [run_id, "queued", "1.0", "-", "qwen-2-5-7b"]
    cancelled = ctl(fake_home, "cancel", run_id)
    assert cancelled.stdout.strip() == f"Cancelled run {run_id} (it was still queued)."
    # cancelling an ended run again is done already, like `systemctl stop`: exit 0
    again = ctl(fake_home, "cancel", run_id)
    assert again.exit_code == 0, again.output
    assert again.stdout.strip() == f"Run {run_id} had already ended (cancelled)."
    shown = ctl(fake_home, "show", run_id).stdout
    assert f"run {run_id}: cancelled\n" in shown  # the outcome only when it says more
    assert "queued -> cancelled  cancelled while queued" in shown
    status = json.loads(ctl(fake_home, "status", "--json").stdout)
    assert status["queue"] == {"queued": 0, "running": 0}
    assert status["recent_runs"][0]["run_id"] == run_id


def test_show_an_unknown_run_names_the_fix(fake_home: Path) -> None:
    assert ctl(fake_home, "db", "upgrade").exit_code == 0
    result = ctl(fake_home, "show", "run-nope")
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "Error: no run 'run-nope'",
        "  - name a run id, a DNA, a version (v1.2), the end of either (318fcc), latest or current",
        "  - list the runs with `oneseekctl runs`",
    ]


def test_status_shows_the_run_in_progress_with_a_progress_bar(fake_home: Path) -> None:
    import sqlite3

    run_id = submitted(fake_home, "qwen")
    progress = {
        "model": "qwen-2-5-7b",
        "model_index": 1,
        "models": 2,
        "epoch": 2,
        "epochs": 3,
        "step": 10,
        "steps": 40,
        "loss": 1.2345,
        "tokens_per_s": 812.5,
        "eta_s": 169,
        "device": "cuda/bfloat16",
    }
    con = sqlite3.connect(fake_home / "oneseek.db")
    con.execute(
        "UPDATE runs SET state = 'running', progress = ? WHERE run_id = ?",
        (json.dumps(progress), run_id),
    )
    con.commit()
    # a run is shown as running, with its bar, only while a daemon holds the home
    lock = HomeLock(load_config(fake_home, env={}).home.lock_file)
    lock.acquire()
    try:
        lines = ctl(fake_home, "status").stdout.splitlines()
    finally:
        lock.release()
    at = next(i for i, line in enumerate(lines) if line.startswith("running:"))
    assert lines[at] == f"running:  {run_id} v1.0 (qwen-2-5-7b), attempt 0"
    assert lines[at + 1] == (
        "          qwen-2-5-7b (1/2) [#####...............] epoch 2/3, "
        "step 10/40, loss 1.2345, 812.5 tok/s, ETA 2m49s on cuda/bfloat16"
    )
    data = json.loads(ctl(fake_home, "status", "--json").stdout)
    assert data["current_run"]["progress"]["step"] == 10
    down = ctl(fake_home, "status").stdout
    assert "running:" not in down and "[#####" not in down
    assert f"waiting:  {run_id} v1.0 (qwen-2-5-7b), attempt 0: the daemon is down" in down


def test_show_prints_text_other_programs_wrote_escaped_and_json_verbatim(
    fake_home: Path, tmp_path: Path
) -> None:
    name = "evil\x1b]0;pwned\x07\r\nname.json"
    path = tmp_path / name
    path.write_text(json.dumps(request()))
    queued = json.loads(ctl(fake_home, "submit", str(path), "--json").stdout)
    assert queued["status"] == "queued"
    shown = ctl(fake_home, "show", queued["run_id"])
    assert shown.exit_code == 0, shown.output
    assert "(evil\\x1b]0;pwned\\x07\\r\\nname.json)" in shown.stdout
    assert not any(c in shown.stdout for c in "\x1b\x07\r")
    data = json.loads(ctl(fake_home, "show", queued["run_id"], "--json").stdout)
    assert data["request"]["source_name"] == name


def test_status_on_a_shared_database_names_what_other_hosts_have_and_train(fake_home: Path) -> None:
    import socket
    import sqlite3

    ids = [submitted(fake_home, m) for m in ("qwen", "mistral")]
    con = sqlite3.connect(fake_home / "oneseek.db")
    with con:
        con.execute(
            "UPDATE runs SET state = 'running', host = 'gpu-2', attempts = 1 WHERE run_id = ?",
            (ids[1],),
        )
        columns = [r[1] for r in con.execute("PRAGMA table_info(base_models)") if r[1] != "id"]
        listed = ", ".join(columns)
        picked = ", ".join("'gpu-2'" if c == "host" else c for c in columns)
        con.execute(f"INSERT INTO base_models ({listed}) SELECT {picked} FROM base_models")
    con.close()
    data = json.loads(ctl(fake_home, "status", "--json").stdout)
    assert data["host"] == socket.gethostname()
    assert data["current_run"] is None  # nothing runs on this host
    assert [(r["run_id"], r["host"]) for r in data["other_running_runs"]] == [(ids[1], "gpu-2")]
    assert data["catalog"]["models"] == 3 and data["catalog"]["other_hosts_ready"] == {"gpu-2": 3}
    lines = ctl(fake_home, "status").stdout.splitlines()
    assert "          3 ready on host gpu-2" in lines
    assert f"elsewhere: {ids[1]} v1.1 (mistral-7b-instruct) on host gpu-2, attempt 1" in lines
