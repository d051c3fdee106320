"""The Node admin panel example (examples/admin) against the real daemon and the real trainer.

Every Node call here is the real `node` running examples/admin/admin.js with better-sqlite3 on
the home's database while a real `oneseekd` runs on it (CONTRACT.md section 6). The module is
skipped only where `node` is missing; its npm dependencies are installed by `make node-deps`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from daemon import DaemonProcess, query, run_state, wait_for
from homes import ctl_text
from hubserver import HubServer
from modelfactory import TINY_TENSORS, make_model
from trainhomes import FAST, tiny_home

if shutil.which("node") is None:
    pytest.skip(
        "node is not on PATH: the Node admin example (examples/admin) cannot be tested",
        allow_module_level=True,
    )

# The first test may compile better-sqlite3 (`make node-deps`, about a minute) before training.
pytestmark = pytest.mark.timeout(480)

ROOT = Path(__file__).resolve().parent.parent
ADMIN_DIR = ROOT / "examples" / "admin"
ADMIN_JS = ADMIN_DIR / "admin.js"
FINISHED = ("succeeded", "failed", "cancelled")

PRELUDE = """
const admin = require(%s);
const V = %s;
const sleep = (ms) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
const errorOf = (fn) => {
  try { fn(); return null; } catch (e) { return `${e.name}: ${e.message}`; }
};
const waitDecided = (id, ms) => {
  const deadline = Date.now() + ms;
  let s = admin.requestStatus(id);
  while (s.status === 'pending' && Date.now() < deadline) {
    sleep(50);
    s = admin.requestStatus(id);
  }
  return s;
};
"""


@pytest.fixture(scope="module", autouse=True)
def node_deps() -> None:
    """better-sqlite3 built for this machine's node, by the Makefile's own target."""
    done = subprocess.run(
        ["make", "--no-print-directory", "node-deps"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=420,
    )
    assert done.returncode == 0, f"make node-deps failed:\n{done.stdout}\n{done.stderr}"
    assert (ADMIN_DIR / "node_modules" / "better-sqlite3").is_dir()


def node_script(script: str, **values: Any) -> list[str]:
    return ["node", "-e", PRELUDE % (json.dumps(str(ADMIN_JS)), json.dumps(values)) + script]


def node(script: str, timeout: float = 60, **values: Any) -> Any:
    """Runs a Node script that prints one JSON value; fails on a non-zero exit or any lock."""
    return _json_of(node_script(script, **values), timeout)


def _json_of(argv: list[str], timeout: float) -> Any:
    """Runs a Node command (in the example's folder) that prints one JSON value: that value;
    fails on a non-zero exit or any lock named on stderr."""
    done = subprocess.run(argv, cwd=ADMIN_DIR, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr
    assert "locked" not in done.stderr.lower(), done.stderr
    return json.loads(done.stdout)


def assert_no_lock_errors(daemon: DaemonProcess) -> None:
    log = daemon.log_path.read_text()
    assert "database is locked" not in log
    assert "locked" not in log.lower(), [line for line in log.splitlines() if "locked" in line]
    for run_log in (daemon.home / "logs").glob("*.log"):
        assert "locked" not in run_log.read_text().lower(), run_log


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    home = tiny_home(
        tmp_path / "home", tmp_path / "cache", {"Tiny-Llama": "llama", "Tiny-Mistral": "mistral"}
    )
    proc = DaemonProcess(home)
    try:
        proc.wait_event("daemon_ready", timeout=60)
        yield proc
    finally:
        proc.stop(timeout=60)


def cli(home: Path, *args: str, timeout: float = 60) -> Any:
    """`node cli.js HOME ARGS...`: its JSON answer (exit 0 and no lock asserted)."""
    return _json_of(["node", str(ADMIN_DIR / "cli.js"), str(home), *args], timeout)


def test_a_request_from_node_is_trained_end_to_end(daemon: DaemonProcess) -> None:
    home = daemon.home
    request = {"base_models": ["Tiny-Llama"], "dataset": "civic.jsonl", **FAST}
    out = node(
        """
        admin.open(V.home);
        const models = admin.listModels();
        const id = admin.requestTraining(V.request);
        const seen = [];
        let status;
        let progress = null;
        let live = null;
        const deadline = Date.now() + V.deadline_ms;
        for (;;) {
          status = admin.requestStatus(id);
          const state = status.run ? status.run.state : status.status;
          if (seen[seen.length - 1] !== state) seen.push(state);
          if (status.status !== 'pending' && status.run === null) break;
          if (status.run && status.run.state === 'running') {
            const p = status.run.progress;
            if (p && p.model && progress === null) progress = p;  // the first step's report
            const m = admin.liveMetrics(status.run.run_id);
            if (m && m.progress_percent < 100) live = m;  // the trainer's, not the final copy
          }
          if (status.run && V.finished.includes(status.run.state)) break;
          if (Date.now() > deadline) break;
          sleep(100);
        }
        const runId = status.run && status.run.run_id;
        console.log(JSON.stringify({
          models, id, seen, status, progress, live,
          run: runId && admin.run(runId),
          metrics: runId && admin.liveMetrics(runId),
          cancelEnded: runId && errorOf(() => admin.cancel(runId)),
        }));
        admin.close();
        """,
        timeout=240,
        home=str(home),
        request=request,
        deadline_ms=180_000,
        finished=list(FINISHED),
    )
    assert [(m["key"], m["state"], m["enabled"]) for m in out["models"]] == [
        ("tiny-llama", "ready", True),
        ("tiny-mistral", "ready", True),
    ]
    status = out["status"]
    run_id = status["run"]["run_id"]
    run_log = home / "logs" / f"{run_id}.log"
    assert out["seen"][-1] == "succeeded", (out["seen"], run_log.read_text()[-3000:])
    assert (status["status"], status["error"], status["problems"]) == ("queued", None, [])
    assert query(home, "SELECT status, run_id FROM training_requests WHERE id = ?", out["id"]) == [
        ("queued", status["run"]["id"])
    ]
    run = out["run"]
    assert (run["run_id"], run["state"], run["outcome"], run["error"]) == (
        run_id,
        "succeeded",
        "succeeded",
        None,
    )
    assert (run["version"], run["base_models"], run["cancel_requested"]) == (
        "1.0",
        ["tiny-llama"],
        False,
    )
    [trained] = run["models"]
    assert (trained["model_key"], trained["state"], trained["epochs_done"]) == (
        "tiny-llama",
        "trained",
        FAST["epochs"],
    )
    assert len(trained["val_losses"]) == FAST["epochs"]
    # the certified copy wins once it exists; its weights are keyed by the model key
    metrics = out["metrics"]
    certified = home / "models" / "oneseek-certified" / run_id / "live_metrics.json"
    assert metrics == json.loads(certified.read_text())
    assert metrics["type"] == "epoch_end"
    assert metrics["epoch"] == metrics["total_epochs"] == FAST["epochs"]
    assert list(metrics["weights"]) == ["tiny-llama"]
    assert metrics["weights"]["tiny-llama"] == pytest.approx(1.0)
    assert metrics["val_losses"] == {"tiny-llama": trained["val_losses"][-1]}
    if out["live"] is not None:  # seen while running: the same path, the same shape
        assert out["live"]["type"] == "epoch_end"
        assert set(out["live"]["weights"]) <= {"tiny-llama"}
    if out["progress"] is not None:  # a step's progress, seen while running
        progress = out["progress"]
        assert (progress["model"], progress["epochs"]) == ("tiny-llama", FAST["epochs"])
        assert {"epoch", "step", "steps", "loss", "tokens_per_s", "eta_s"} <= set(progress)
    assert out["cancelEnded"] == f"Error: run {run_id} already ended (succeeded); nothing to cancel"
    assert_no_lock_errors(daemon)


def test_a_malformed_request_from_node_is_rejected_with_readable_problems(
    daemon: DaemonProcess,
) -> None:
    out = node(
        """
        admin.open(V.home);
        const bad = admin.requestTraining({ base_models: [], epochs: 0 });
        const notJson = admin.requestTraining('{"base_models": [');
        console.log(JSON.stringify({
          bad: waitDecided(bad, 30000),
          notJson: waitDecided(notJson, 30000),
        }));
        admin.close();
        """,
        home=str(daemon.home),
    )
    bad = out["bad"]
    assert (bad["status"], bad["run"]) == ("rejected", None)
    assert bad["error"].split("\n")[0] == (
        "base_models: list should have at least 1 item after validation, not 0 (got [])"
    )
    assert bad["problems"] == [
        "base_models: list should have at least 1 item after validation, not 0 (got [])",
        "dataset is required",
        "epochs: input should be greater than or equal to 1 (got 0)",
    ]
    assert bad["error"] == "\n".join(bad["problems"])
    assert bad["decided_at"] is not None
    not_json = out["notJson"]
    assert not_json["status"] == "rejected"
    assert not_json["error"].startswith("the request is not valid JSON: ")
    assert query(daemon.home, "SELECT COUNT(*) FROM runs") == [(0,)]
    assert_no_lock_errors(daemon)


INSERTER = """
admin.open(V.home);
const kinds = ['malformed', 'unknown', 'duplicate'];
const out = [];
for (let i = 0; i < V.count; i++) {
  const kind = kinds[i % 3];
  const request = {
    malformed: { base_models: [], epochs: 0, request_id: `${V.tag}-${i}` },
    unknown: { base_models: [`no-such-model-${V.tag}-${i}`], dataset: 'civic.jsonl' },
    duplicate: { base_models: ['Tiny-Llama'], dataset: 'civic.jsonl', request_id: V.dup },
  }[kind];
  out.push([admin.requestTraining(request), kind]);  // one INSERT, its own transaction
  if (i % 5 === 0) admin.requestStatus(out[Math.floor(Math.random() * out.length)][0]);
  if (i % 25 === 0) admin.listModels();
  sleep(V.pause_ms);  // rows arrive over a second or two, as from a panel's users
}
admin.close();
console.log(JSON.stringify(out));
"""


def test_500_node_inserts_while_the_daemon_writes_all_get_verdicts(daemon: DaemonProcess) -> None:
    home = daemon.home
    # a long training run, so that the trainer child writes progress, checkpoints and losses
    # all through the inserts
    long = {**FAST, "epochs": 1000, "base_models": ["Tiny-Llama"], "dataset": "civic.jsonl"}
    long["request_id"] = "long-run"
    first = node(
        "admin.open(V.home); const id = admin.requestTraining(V.request);"
        "console.log(JSON.stringify(waitDecided(id, 30000)));",
        home=str(home),
        request=long,
    )
    assert first["status"] == "queued", first
    run_id = first["run"]["run_id"]
    wait_for(lambda: run_state(home, run_id) == "running", timeout=60, what="the long run")
    # two Node processes at once, 250 single-INSERT transactions each, reading as they go
    writers = [
        subprocess.Popen(
            node_script(INSERTER, home=str(home), count=250, tag=tag, dup="long-run", pause_ms=4),
            cwd=ADMIN_DIR,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for tag in ("a", "b")
    ]
    rows: list[tuple[int, str]] = []
    for writer in writers:
        stdout, stderr = writer.communicate(timeout=180)
        assert writer.returncode == 0, stderr
        assert "locked" not in stderr.lower(), stderr
        rows += [(int(i), str(kind)) for i, kind in json.loads(stdout)]
    assert len(rows) == len({i for i, _ in rows}) == 500
    ids = [i for i, _ in rows]
    marks = ",".join("?" * len(ids))

    def decided() -> bool:
        pending = query(
            home,
            f"SELECT COUNT(*) FROM training_requests WHERE status = 'pending' AND id IN ({marks})",
            *ids,
        )
        return pending == [(0,)]

    wait_for(decided, timeout=120, interval=0.2, what="a verdict on all 500 rows")
    found = query(
        home,
        "SELECT id, status, error, duplicate_of, created_at, decided_at FROM training_requests "
        f"WHERE id IN ({marks})",
        *ids,
    )
    verdicts = {row_id: (status, error, dup) for row_id, status, error, dup, _, _ in found}
    # the daemon decided rows while Node was still inserting them
    first_verdict = min(datetime.fromisoformat(row[5]) for row in found)
    last_insert = max(datetime.fromisoformat(row[4]) for row in found)
    assert first_verdict < last_insert
    for row_id, kind in rows:
        status, error, duplicate_of = verdicts[row_id]
        if kind == "malformed":
            assert status == "rejected" and error.startswith("base_models: list should"), error
        elif kind == "unknown":
            assert status == "rejected" and "no-such-model-" in error, error
        else:
            assert (status, duplicate_of) == ("duplicate", first["id"]), error
    assert run_state(home, run_id) == "running"  # the inserts happened while it trained
    cancelled = node(
        "admin.open(V.home); console.log(JSON.stringify(admin.cancel(V.run)));",
        home=str(home),
        run=run_id,
    )
    assert cancelled == {"run_id": run_id, "state": "running", "cancel_requested": True}
    wait_for(lambda: run_state(home, run_id) == "cancelled", timeout=60, what="the cancel")
    assert query(home, "SELECT COUNT(*) FROM runs") == [(1,)]
    assert_no_lock_errors(daemon)


def test_enabled_and_display_name_from_node_survive_rescans(daemon: DaemonProcess) -> None:
    home = daemon.home
    disabled = subprocess.run(
        ["node", str(ADMIN_DIR / "cli.js"), str(home), "disable", "tiny-mistral"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert disabled.returncode == 0, disabled.stderr
    assert json.loads(disabled.stdout)["enabled"] is False
    renamed = node(
        """
        admin.open(V.home);
        const row = admin.setDisplayName('tiny-llama', '  Llama (admin)  ');
        const id = admin.requestTraining({ base_models: ['Tiny-Mistral'], dataset: 'civic.jsonl' });
        console.log(JSON.stringify({ row, verdict: waitDecided(id, 30000) }));
        """,
        home=str(home),
    )
    assert renamed["row"]["display_name"] == "Llama (admin)"
    detected = renamed["row"]["detected_name"]
    assert renamed["verdict"]["status"] == "rejected"
    assert renamed["verdict"]["error"] == (
        "base_models: 'Tiny-Mistral' resolves to tiny-mistral is disabled in the catalog; "
        "enable it (admin panel) to train it"
    )

    def catalog() -> dict[str, tuple[str, bool]]:
        code, out, _ = ctl_text(home, "models", "--json")
        assert code == 0, out
        return {m["key"]: (m["display_name"], m["enabled"]) for m in json.loads(out)}

    assert catalog() == {
        "tiny-llama": ("Llama (admin)", True),
        "tiny-mistral": ("Tiny-Mistral", False),
    }
    # the daemon rescans a model whose config.json changed: the detected name follows the
    # config, the operator's name and switch stay
    for folder in ("Tiny-Llama", "Tiny-Mistral"):
        config_path = home / "models" / "oneseek-7b-zero" / "base_models" / folder / "config.json"
        config = json.loads(config_path.read_text())
        config["model_name"] = f"{folder} v2"
        config_path.write_text(json.dumps(config))

    def rescanned() -> bool:
        rows = query(home, "SELECT COUNT(*) FROM base_models WHERE detected_name LIKE '% v2'")
        return rows == [(2,)]

    wait_for(rescanned, timeout=30, what="the daemon's rescan of the changed models")
    assert catalog() == {
        "tiny-llama": ("Llama (admin)", True),
        "tiny-mistral": ("Tiny-Mistral v2", False),
    }
    # with no daemon, oneseekctl scans every model folder itself before it answers
    assert daemon.stop(timeout=60) == 0
    assert catalog() == {
        "tiny-llama": ("Llama (admin)", True),
        "tiny-mistral": ("Tiny-Mistral v2", False),
    }
    back = node(
        """
        admin.open(V.home);
        admin.setEnabled('tiny-mistral', true);
        console.log(JSON.stringify(admin.setDisplayName('tiny-llama', null)));
        """,
        home=str(home),
    )
    assert (back["display_name"], back["detected_name"]) == ("Tiny-Llama v2", "Tiny-Llama v2")
    assert detected == "Tiny-Llama"
    assert catalog() == {
        "tiny-llama": ("Tiny-Llama v2", True),
        "tiny-mistral": ("Tiny-Mistral v2", True),
    }


def test_node_errors_name_the_problem_and_never_create_a_database(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    sqlite3.connect(foreign / "oneseek.db").execute("CREATE TABLE t (x)").connection.close()
    home = tmp_path / "home"
    home.mkdir()
    assert ctl_text(home, "db", "upgrade")[0] == 0
    out = node(
        """
        const errors = {
          empty: errorOf(() => admin.open(V.empty)),
          foreign: errorOf(() => admin.open(V.foreign)),
          notOpen: errorOf(() => admin.listModels()),
        };
        admin.open(V.home);
        Object.assign(errors, {
          key: errorOf(() => admin.setEnabled('no-such-model', true)),
          flag: errorOf(() => admin.setEnabled('no-such-model', 'yes')),
          name: errorOf(() => admin.setDisplayName('no-such-model', 'x')),
          emptyName: errorOf(() => admin.setDisplayName('no-such-model', ' ')),
          request: errorOf(() => admin.requestStatus(999)),
          run: errorOf(() => admin.run('run-nope')),
          metrics: errorOf(() => admin.liveMetrics('run-nope')),
          traversal: errorOf(() => admin.liveMetrics('../../etc')),
          cancel: errorOf(() => admin.cancel('run-nope')),
          array: errorOf(() => admin.requestTraining([])),
          download: errorOf(() => admin.download(999)),
          downloadId: errorOf(() => admin.download('1')),
          cancelDownload: errorOf(() => admin.cancelDownload(999)),
          pullNothing: errorOf(() => admin.pullModel('')),
          pullTwice: errorOf(() => admin.pullModel('a/b@main', { revision: 'dev' })),
          pullPickle: errorOf(() => admin.pullModel('a/b', { allowPickle: 'yes' })),
          pullFolder: errorOf(() => admin.pullModel('a/b', { folder: 7 })),
        });
        console.log(JSON.stringify({ errors, models: admin.listModels() }));
        """,
        empty=str(empty),
        foreign=str(foreign),
        home=str(home),
    )
    errors = out["errors"]
    assert errors["empty"].startswith(f"Error: no oneseekd database at {empty / 'oneseek.db'}")
    assert not (empty / "oneseek.db").exists()
    assert errors["foreign"].startswith(
        f"Error: {foreign / 'oneseek.db'} has no table base_models, training_requests, runs, "
        "model_trainings, model_downloads: "
    )
    assert errors["notOpen"] == "Error: oneseekd admin: not open; call open(HOME) first"
    assert errors["key"] == (
        'Error: unknown model key "no-such-model": no such row in base_models (see listModels())'
    )
    assert errors["name"] == errors["key"]
    assert errors["flag"].startswith("TypeError: ")
    assert errors["emptyName"].startswith("TypeError: ")
    assert errors["request"] == "Error: no training request #999"
    assert errors["run"] == errors["metrics"] == errors["cancel"] == 'Error: unknown run "run-nope"'
    assert errors["traversal"].startswith("TypeError: not a run id")
    assert errors["array"].startswith("TypeError: ")
    assert errors["download"] == errors["cancelDownload"] == "Error: no model download #999"
    assert errors["downloadId"] == "TypeError: a download id is a positive integer, got 1"
    for pull in ("pullNothing", "pullTwice", "pullPickle", "pullFolder"):
        assert errors[pull].startswith("TypeError: pullModel("), errors
    assert out["models"] == []
    assert query(home, "SELECT COUNT(*) FROM model_downloads") == [(0,)]


# --- pulling a model from the Hub through model_downloads ---------------------------------------
REPO = "tiny-org/Tiny-Llama"
WEIGHTS = "model.safetensors"


@pytest.fixture
def hub() -> Iterator[HubServer]:
    server = HubServer()
    with server.running():
        yield server


@pytest.fixture
def hub_daemon(tmp_path: Path, hub: HubServer) -> Iterator[DaemonProcess]:
    """A daemon on a home with no model yet, its HF_ENDPOINT the Hub on loopback; the Hub
    serves REPO, whose weights hold 1 MiB more than the tiny model's."""
    big = {**TINY_TENSORS, "model.extra.weight": [2**18]}  # float32: 1 MiB
    built = make_model(tmp_path / "built", "Tiny-Llama", tensors=big)
    hub.add(REPO, {p.name: p.read_bytes() for p in built.iterdir() if p.is_file()})
    home = tmp_path / "home"
    (home / "models" / "oneseek-7b-zero" / "base_models").mkdir(parents=True)
    (home / "oneseekd.toml").write_text(
        "[catalog]\nsettle_seconds = 0\nrescan_interval_seconds = 3600\n"
        "[intake]\nsettle_seconds = 0\n"
    )
    proc = DaemonProcess(home, env={"HF_ENDPOINT": hub.endpoint})
    try:
        proc.wait_event("daemon_ready", timeout=60)
        yield proc
    finally:
        hub.release()
        proc.stop(timeout=60)


def test_a_model_pulled_from_node_is_downloaded_through_the_table_and_ready(
    hub_daemon: DaemonProcess, hub: HubServer
) -> None:
    home = hub_daemon.home
    files = hub.repos[REPO].commits[hub.repos[REPO].branches["main"]]
    # a slow link, and the weights held after 512 KiB: the row is read while bytes arrive
    hub.bytes_per_second = 256 * 1024
    hub.hold_after(REPO, WEIGHTS, 512 * 1024)
    during = node(
        """
        admin.open(V.home);
        const id = admin.pullModel(V.repo);
        const seen = [];
        let d = admin.download(id);
        const deadline = Date.now() + 60000;
        for (;;) {
          d = admin.download(id);
          if (seen[seen.length - 1] !== d.status) seen.push(d.status);
          if (d.status !== 'pending' && d.status !== 'running') break;
          if (d.progress && d.progress.file === V.weights && d.bytes_done > 0) break;
          if (Date.now() > deadline) break;
          sleep(50);
        }
        console.log(JSON.stringify({ id, seen, d, active: admin.listDownloads({ active: true }) }));
        admin.close();
        """,
        timeout=90,
        home=str(home),
        repo=REPO,
        weights=WEIGHTS,
    )
    row = during["d"]
    commit = hub.repos[REPO].branches["main"]
    assert during["seen"][-1] == "running", during
    assert (row["repository"], row["revision"], row["folder"], row["allow_pickle"]) == (
        REPO,
        "main",
        None,
        False,
    )
    assert (row["source"], row["commit"], row["cancel_requested"], row["model"]) == (
        "database",
        commit,  # pinned before the first byte
        False,
        None,
    )
    assert row["bytes_total"] == sum(len(b) for b in files.values())
    assert 0 < row["bytes_done"] < row["bytes_total"]
    progress = row["progress"]
    assert progress["file"] == WEIGHTS and progress["rate"] > 0 and progress["eta_s"] > 0
    assert [d["id"] for d in during["active"]] == [during["id"]]
    hub.bytes_per_second = None
    hub.release()
    done = cli(home, "download", str(during["id"]), "--wait", "60", timeout=90)
    assert (done["status"], done["error"], done["problems"]) == ("succeeded", None, [])
    assert (done["commit"], done["model_key"]) == (commit, "tiny-llama")
    assert done["bytes_done"] == done["bytes_total"] == row["bytes_total"]
    model = done["model"]
    assert (model["key"], model["state"], model["path"]) == (
        "tiny-llama",
        "ready",
        str(home / "models" / "oneseek-7b-zero" / "base_models" / "Tiny-Llama"),
    )
    installed = Path(model["path"])
    manifest = json.loads((installed / ".oneseek-pull.json").read_text())
    assert manifest["commit"] == commit
    for name, data in files.items():  # every byte, and every sha256 the pull recorded
        assert (installed / name).read_bytes() == data, name
        assert manifest["files"][name]["sha256"] == hashlib.sha256(data).hexdigest(), name
    assert query(home, "SELECT state, source_repository, source_commit FROM base_models") == [
        ("ready", REPO, commit)
    ]
    assert [d["status"] for d in cli(home, "downloads")] == ["succeeded"]
    assert cli(home, "downloads", "--active") == []
    assert_no_lock_errors(hub_daemon)


def test_a_download_from_node_is_cancelled_and_a_bad_one_says_why(
    hub_daemon: DaemonProcess, hub: HubServer
) -> None:
    home = hub_daemon.home
    hub.hold_after(REPO, WEIGHTS, 64 * 1024)
    started = node(
        """
        admin.open(V.home);
        const bad = admin.pullModel('not a repository');
        const id = admin.pullModel(V.repo + '@main', { folder: 'Llama-Pulled' });
        const deadline = Date.now() + 60000;
        let d = admin.download(id);
        while (d.status === 'pending' && Date.now() < deadline) {
          sleep(50);
          d = admin.download(id);
        }
        console.log(JSON.stringify({ bad: admin.download(bad), id, d }));
        admin.close();
        """,
        timeout=90,
        home=str(home),
        repo=REPO,
    )
    bad, row_id = started["bad"], started["id"]
    assert (bad["status"], bad["model"]) == ("failed", None)
    assert bad["error"].startswith("cannot pull 'not a repository")
    assert bad["problems"] == [
        "'not a repository' is not a Hub repository id: write ORG/NAME, for example "
        "Qwen/Qwen2.5-7B-Instruct"
    ]
    assert (started["d"]["status"], started["d"]["folder"]) == ("running", "Llama-Pulled")
    assert hub.holding.wait(30), "the daemon never reached the held weights"
    hub.bytes_per_second = 64 * 1024  # after the release the rest dribbles: the cancel is seen
    asked = cli(home, "cancel-download", str(row_id))
    assert asked == {"id": row_id, "status": "running", "cancel_requested": True}
    hub.release()
    ended = cli(home, "download", str(row_id), "--wait", "60", timeout=90)
    assert (ended["status"], ended["error"]) == ("cancelled", "cancelled: what arrived is kept")
    models = home / "models"
    assert not (models / "oneseek-7b-zero" / "base_models" / "Llama-Pulled").exists()
    commit = hub.repos[REPO].branches["main"]
    part = models / ".incoming" / f"Llama-Pulled@{commit}" / ".parts" / f"{WEIGHTS}.part"
    assert part.stat().st_size > 0  # kept for a later pull to resume from
    assert query(home, "SELECT COUNT(*) FROM base_models") == [(0,)]
    errors = node(
        """
        admin.open(V.home);
        console.log(JSON.stringify({
          again: errorOf(() => admin.cancelDownload(V.id)),
          failed: errorOf(() => admin.cancelDownload(V.bad)),
        }));
        """,
        home=str(home),
        id=row_id,
        bad=bad["id"],
    )
    assert errors == {
        "again": f"Error: download #{row_id} already ended (cancelled); nothing to cancel",
        "failed": f"Error: download #{bad['id']} already ended (failed); nothing to cancel",
    }
    assert_no_lock_errors(hub_daemon)
