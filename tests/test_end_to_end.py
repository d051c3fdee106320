"""A request dropped into a real daemon, trained by the real trainer child, certified."""

from __future__ import annotations

import json
import os
import re
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner
from daemon import run_until_idle
from trainhomes import FAST, tiny_home

from oneseekd.certify.layout import CERTIFIED_FILES
from oneseekd.cli import main as ctl


@pytest.mark.timeout(600)
def test_a_dropped_request_for_two_models_is_trained_and_certified(
    tmp_path: Path, tmp_path_factory: object
) -> None:
    cache = tmp_path / "cache"
    home = tiny_home(tmp_path / "home", cache, {"Tiny-Llama": "llama", "Tiny-Mistral": "mistral"})
    (home / "requests").mkdir()
    body = {"base_models": ["llama", "mistral"], "dataset": "civic.jsonl", **FAST}
    (home / "requests" / "civic.json.tmp").write_text(json.dumps(body))
    os.rename(home / "requests" / "civic.json.tmp", home / "requests" / "civic.json")
    done = run_until_idle(home, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    con = sqlite3.connect(home / "oneseek.db")
    [(run_id, state, outcome, attempts)] = con.execute(
        "SELECT run_id, state, outcome, attempts FROM runs"
    ).fetchall()
    log = (home / "logs" / f"{run_id}.log").read_text()
    assert (state, outcome, attempts) == ("succeeded", "succeeded", 1), log[-3000:]
    zero = home / "models" / "oneseek-7b-zero"
    for key in ("tiny-llama", "tiny-mistral"):
        assert (
            zero / "lora_adapters" / f"oneseek-7b-zero-v1.0-{key}" / "adapter_model.safetensors"
        ).is_file()
        assert (zero / "weights" / f"oneseek-7b-zero-v1.0-{key}.pth").is_file()
    assert (zero / "weights" / "oneseek-7b-zero-v1.0.json").is_file()
    certified = home / "models" / "oneseek-certified" / run_id  # a link to the DNA folder
    assert set(CERTIFIED_FILES) <= {p.name for p in certified.iterdir()}
    assert (home / "requests" / "accepted" / "civic.json").is_file()
    events = [e for (e,) in con.execute("SELECT event FROM ledger_events ORDER BY seq")]
    assert events[0] == "request_accepted"
    assert events[1] == "run_started"
    assert events.count("model_trained") == 2
    assert events[-1] == "dna_v2_training_completed"
    verify = CliRunner().invoke(ctl, ["--home", str(home), "ledger", "verify"])
    assert verify.exit_code == 0, verify.output
    status = json.loads(CliRunner().invoke(ctl, ["--home", str(home), "status", "--json"]).stdout)
    assert status["recent_runs"][0]["run_id"] == run_id
    # the run log is JSON lines, the libraries' warnings and output included (issue 12)
    for line in log.splitlines():
        assert isinstance(json.loads(line), dict), line
    # one time format everywhere: the database, the JSON files, --json, the progress
    weights = json.loads((zero / "weights" / "oneseek-7b-zero-v1.0.json").read_text())
    models = json.loads(CliRunner().invoke(ctl, ["--home", str(home), "models", "--json"]).stdout)
    [progress] = con.execute("SELECT progress FROM runs").fetchone()
    times = [
        weights["createdAt"],
        status["recent_runs"][0]["finished_at"],
        models[0]["first_seen_at"],
        json.loads(progress)["updated_at"],
        *con.execute("SELECT created_at, decided_at FROM training_requests").fetchone(),
    ]
    for text in times:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", text), text
    assert times[-2] <= times[-1]  # created before it was decided


@pytest.mark.timeout(600)
def test_sigterm_during_training_checkpoints_and_the_next_start_resumes(tmp_path: Path) -> None:
    import signal

    from daemon import DaemonProcess, wait_for
    from pausetrainer import pause_command, paused

    home = tiny_home(tmp_path / "home", tmp_path / "cache", {"Tiny-Llama": "llama"})
    (home / "requests").mkdir()
    body = {
        "base_models": ["llama"],
        "dataset": "civic.jsonl",
        **FAST,
        "epochs": 2,
        "checkpoint_every": 1000,
    }
    # the trainer pauses right after its first checkpoint at step 3 or later (the end of epoch
    # 1, so that epoch 2 is left to resume) until the stop: a deterministic point, never a race
    # with a run that may end before a poll sees it
    pauses = home / "pauses"
    with (home / "oneseekd.toml").open("a") as fh:
        fh.write(f"command = {json.dumps(pause_command(pauses, 3))}\n")
    (home / "requests" / "long.json.tmp").write_text(json.dumps(body))
    os.rename(home / "requests" / "long.json.tmp", home / "requests" / "long.json")
    daemon = DaemonProcess(home)
    try:
        run_id = daemon.wait_event("run_started", timeout=60)["run_id"]
        wait_for(lambda: paused(pauses, run_id), timeout=120, what="the trainer paused at step 3")
        assert daemon.stop(signal.SIGTERM, timeout=60) == 0
    finally:
        daemon.kill()
    checkpoint = home / "checkpoints" / run_id / "tiny-llama"
    latest = (checkpoint / "latest").read_text().strip()
    assert (checkpoint / latest / "adapter.pt").is_file()
    con = sqlite3.connect(home / "oneseek.db")
    assert con.execute("SELECT state FROM runs").fetchone() == ("running",)
    con.close()
    # the next start resumes where it stopped: it does not start over
    done = run_until_idle(home, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    con = sqlite3.connect(home / "oneseek.db")
    assert con.execute("SELECT state, attempts FROM runs").fetchone() == ("succeeded", 2)
    log = (home / "logs" / f"{run_id}.log").read_text()
    loaded = [
        json.loads(line) for line in log.splitlines() if '"event": "checkpoint_loaded"' in line
    ]
    assert loaded and loaded[0]["step"] >= 3
