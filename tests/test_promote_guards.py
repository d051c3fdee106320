"""Issue 26, 1-3: `promote` decides from what the ledger signed, never from a folder's copy;
two processes never judge each other's half-done pointer move; a view another program left
in the way is refused before anything is recorded, and a move it interrupts is finished later.

On a home with two certified tiny-Llama runs: `learned` (current) and `stuck`, which the gate
held back (it could not learn). After every test, `ledger verify` passes and CURRENT, its .txt
and every weights JSON's `isCurrent` name the same run."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from crashharness import promote_command, promote_pause_command
from daemon import query, run_until_idle, wait_for
from homes import ctl
from sqlalchemy import select

from oneseekd.certify import current
from oneseekd.certify.ledger import Ledger
from oneseekd.config import load_config
from oneseekd.db.engine import make_engine, write_session
from oneseekd.db.models import Run

CURRENT = "OneSeek-7B-Zero-CURRENT"
MODEL = "tiny-llama"
REASON = "the operator checked the samples"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, cache: Path) -> tuple[Path, str, str]:
    """A home with a current run and one the gate held back: the home, and both run ids."""
    from trainhomes import TinyHome

    home = TinyHome(tmp_path_factory.mktemp("guards") / "home", cache, {"Tiny-Llama": "llama"})
    learned, _ = home.train([MODEL], learning_rate=2e-2)
    stuck, _ = home.train([MODEL], learning_rate=1e-9)
    home.engine.dispose()
    return home.root, learned, stuck


class Home:
    """A copy of the trained home, for one test to break."""

    def __init__(self, trained: tuple[Path, str, str], where: Path) -> None:
        source, self.learned, self.stuck = trained
        shutil.copytree(source, where, symlinks=True)
        self.root = where
        self.certified = where / "models" / "oneseek-certified"
        txt = self.certified / f"{CURRENT}.txt"  # an absolute path
        txt.write_text(txt.read_text().replace(str(source), str(where)))
        self.old = os.readlink(self.certified / CURRENT)
        self.new = os.readlink(self.certified / self.stuck)
        assert self.old == os.readlink(self.certified / self.learned) != self.new

    @property
    def note(self) -> Path:
        return self.certified / f".{CURRENT}.pending"

    def pointer(self) -> str:
        """The DNA that CURRENT, its .txt and every weights JSON's isCurrent agree on."""
        dna = os.readlink(self.certified / CURRENT)
        txt = (self.certified / f"{CURRENT}.txt").read_text()
        assert txt == f"{self.certified / dna}\n"
        flags = {}
        for path in (self.root / "models" / "oneseek-7b-zero" / "weights").glob("*.json"):
            data = json.loads(path.read_text())
            flags[data["dna"]["fingerprint"]] = data["isCurrent"]
        assert flags == {d: d == dna for d in flags}, flags
        return dna

    def verified(self) -> None:
        result = ctl(self.root, "ledger", "verify")
        assert result.exit_code == 0, result.output

    def events(self, name: str) -> list[dict[str, object]]:
        rows = query(self.root, "SELECT payload FROM ledger_events WHERE event = ?", name)
        return [json.loads(payload) for (payload,) in rows]

    def count(self) -> int:
        [(n,)] = query(self.root, "SELECT COUNT(*) FROM ledger_events")
        return int(n)

    def why(self) -> str:
        [completion] = [
            e for e in self.events("dna_v2_training_completed") if e["run_id"] == self.stuck
        ]
        gate = completion["gate"]
        assert isinstance(gate, dict) and gate["made_current"] is False
        return "; ".join(gate["reasons"])

    def paused(self, folder: Path, *args: str) -> subprocess.Popen[str]:
        """`oneseekctl ARGS` in another process, marked and paused in `folder` (crashharness)."""
        folder.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith("ONESEEK_")}
        return subprocess.Popen(
            [*promote_pause_command(folder), "--home", str(self.root), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _edit_gate(payload: str) -> str:
    """A completion event's payload (or a folder's oneseek_dna.json) whose gate says the run
    was made current."""
    data = json.loads(payload)
    data["gate"] = {**data["gate"], "made_current": True, "reasons": []}
    return json.dumps(data, indent=2) + "\n"


@pytest.mark.timeout(600)
@pytest.mark.parametrize("tamper", ["deleted", "gate-edited", "event-edited"])
def test_a_held_back_run_is_judged_by_its_signed_verdict_not_by_its_folder(
    trained: tuple[Path, str, str], tmp_path: Path, tamper: str
) -> None:
    home = Home(trained, tmp_path / "home")
    why = home.why()
    signed = home.certified / home.new / "oneseek_dna.json"
    original = signed.read_bytes()
    rel = f"models/oneseek-certified/{home.new}/oneseek_dna.json"
    [(seq, payload)] = query(
        home.root,
        "SELECT seq, payload FROM ledger_events WHERE event = 'dna_v2_training_completed' "
        "AND payload LIKE ?",
        f'%"run_id":"{home.stuck}"%',
    )
    db = sqlite3.connect(home.root / "oneseek.db", isolation_level=None, timeout=30)
    if tamper == "deleted":
        signed.unlink()
        difference = f"artifact {rel} is missing"
    elif tamper == "gate-edited":
        edited = _edit_gate(original.decode()).encode()
        signed.write_bytes(edited)
        difference = (
            f"artifact {rel} changed: sha256 {_sha256(original)} recorded, "
            f"{_sha256(edited)} on disk"
        )
    else:  # another program rewrites the verdict in the ledger row itself
        db.execute("UPDATE ledger_events SET payload = ? WHERE seq = ?", (_edit_gate(payload), seq))
        difference = (
            f"ledger event #{seq} (dna_v2_training_completed) was altered: its hash does not "
            "match its content"
        )
    before = home.count()

    refused = ctl(home.root, "promote", home.stuck)
    assert refused.exit_code == 1, refused.output
    assert refused.stderr == (
        f"Error: run {home.stuck} is not made current: what it would be made current from "
        "differs from what the ledger signed\n"
        f"  - {difference}\n"
        "  - put back what was changed (`oneseekctl ledger verify` lists every difference), "
        "or promote another run\n"
    )
    assert home.count() == before and home.events("model_promoted") == []

    # put back: still held back, as the completion event signed
    signed.write_bytes(original)
    db.execute("UPDATE ledger_events SET payload = ? WHERE seq = ?", (payload, seq))
    db.close()
    held = ctl(home.root, "promote", home.stuck)
    assert held.exit_code == 1, held.output
    assert held.stderr == (
        f"Error: run {home.stuck} was not made current when it was certified: {why}\n"
        "  - to make it current anyway, say why (it is recorded in the ledger): "
        f'oneseekctl promote {home.stuck} --reason "..."\n'
    )
    assert home.count() == before
    assert home.pointer() == home.old
    home.verified()

    done = ctl(home.root, "promote", home.stuck, "--reason", REASON)
    assert done.exit_code == 0, done.output
    [promoted] = home.events("model_promoted")
    assert (promoted["reason"], promoted["overrides_gate"]) == (REASON, why)
    assert home.pointer() == home.new
    home.verified()


@pytest.mark.timeout(600)
def test_a_settle_never_judges_a_move_whose_transaction_is_still_open(
    trained: tuple[Path, str, str], tmp_path: Path
) -> None:
    """Promote A stops between its intent note and its commit; oneseekctl B starts meanwhile.
    B's opening settle must wait for A's transaction to end instead of dropping A's note, and
    A's printed success must be true: CURRENT moved, the ledger verifies."""
    home = Home(trained, tmp_path / "home")
    a = home.paused(tmp_path / "a", "promote", home.stuck, "--reason", REASON)
    wait_for(lambda: (tmp_path / "a" / "noted").exists() or a.poll() is not None, timeout=120)
    assert a.poll() is None, a.communicate()
    assert home.note.exists()
    b = home.paused(tmp_path / "b", "promote", "run-nobody")
    wait_for(lambda: (tmp_path / "b" / "settling").exists() or b.poll() is not None, timeout=120)
    time.sleep(2)  # B's settle, unlocked, judged and dropped A's note within milliseconds
    assert home.note.exists(), "B dropped A's note while A's transaction was open"
    assert not (tmp_path / "b" / "settled").exists()

    (tmp_path / "a" / "release").write_text("go")
    a_out, a_err = a.communicate(timeout=120)
    _, b_err = b.communicate(timeout=120)
    assert a.returncode == 0, a_err
    assert a_out == f"{CURRENT} -> {home.new} (run {home.stuck}), was {home.old}.\n"
    assert b.returncode == 1 and "Error: no run 'run-nobody'" in b_err, b_err
    assert home.pointer() == home.new
    assert not home.note.exists()
    home.verified()


@pytest.mark.timeout(600)
def test_a_txt_left_as_a_folder_is_refused_before_anything_is_recorded(
    trained: tuple[Path, str, str], tmp_path: Path
) -> None:
    home = Home(trained, tmp_path / "home")
    txt = home.certified / f"{CURRENT}.txt"
    txt.unlink()
    txt.mkdir()
    (txt / "another-program.json").write_text("{}")
    before = home.count()

    refused = ctl(home.root, "promote", home.stuck, "--reason", REASON)
    assert refused.exit_code == 1, refused.output
    assert refused.stderr == (
        f"Error: {CURRENT} is not moved: nothing was recorded\n"
        f"  - {txt} is a folder, where the file naming the current model belongs: move it "
        f"out of the way (mv '{txt}' '{txt}.moved'), then run "
        f'`oneseekctl promote {home.stuck} --reason "..."`\n'
    )
    assert home.count() == before
    assert os.readlink(home.certified / CURRENT) == home.old
    assert (txt / "another-program.json").read_text() == "{}"  # never deleted
    home.verified()

    txt.rename(home.root / "moved")
    done = ctl(home.root, "promote", home.stuck, "--reason", REASON)
    assert done.exit_code == 0, done.output
    assert home.pointer() == home.new
    home.verified()


@pytest.mark.timeout(600)
def test_a_txt_that_became_a_folder_mid_move_is_finished_by_the_next_start(
    trained: tuple[Path, str, str], tmp_path: Path
) -> None:
    """The folder appears after promote checked, before it settles: the recorded JSONs are
    written all the same (the ledger verifies), the note stays, and the daemon's next start
    finishes the move once the folder is gone."""
    home = Home(trained, tmp_path / "home")
    a = home.paused(tmp_path / "a", "promote", home.stuck, "--reason", REASON)
    wait_for(lambda: (tmp_path / "a" / "noted").exists() or a.poll() is not None, timeout=120)
    txt = home.certified / f"{CURRENT}.txt"
    txt.unlink()
    txt.mkdir()
    (tmp_path / "a" / "release").write_text("go")
    _, err = a.communicate(timeout=120)
    assert a.returncode == 1, err
    assert err[err.index("Error: ") :] == (
        f"Error: the move of {CURRENT} to {home.new} is recorded, but it cannot be finished\n"
        f"  - {txt} is a folder, where the file naming the current model belongs: move it "
        f"out of the way (mv '{txt}' '{txt}.moved'), then run "
        f"`oneseekctl promote {home.new}`\n"
        "  - or restart oneseekd: its start finishes the move\n"
    )
    assert os.readlink(home.certified / CURRENT) == home.new and home.note.exists()
    home.verified()  # the weights JSONs hold what was recorded for them

    txt.rmdir()
    done = run_until_idle(home.root, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert home.pointer() == home.new
    assert not home.note.exists()
    home.verified()


@pytest.mark.timeout(600)
def test_a_move_noted_over_a_committed_unfinished_one_finishes_that_one_first(
    trained: tuple[Path, str, str], tmp_path: Path
) -> None:
    """A promotion killed after its commit, before it moved anything, leaves a committed note.
    The next move noted without a settle first (as a certification notes one, here called in
    this process) finishes it before recording its own flips: no recorded weights JSON is
    left unwritten, and it does not wait on its own write transaction."""
    home = Home(trained, tmp_path / "home")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONESEEK_")}
    argv = ["--home", str(home.root), "promote", home.stuck, "--reason", REASON]
    killed = subprocess.run(
        [*promote_command("run_linked"), *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert home.note.exists() and os.readlink(home.certified / CURRENT) == home.old

    config = load_config(home.root, env={})
    engine = make_engine(config.db_url)
    try:
        ledger = Ledger.for_home(engine, config.home)
        with write_session(engine) as session:
            [(pk, version)] = session.execute(
                select(Run.id, Run.version).where(Run.run_id == home.learned)
            ).all()
            payload = {"run_id": home.learned, "dna": home.old, "version": version}
            event = ledger.append(session, "model_promoted", payload, pk)
            current.note_move(session, ledger, config.home, home.old, home.learned, version, event)
        assert current.settle(engine, config.home) == home.old
    finally:
        engine.dispose()
    assert home.pointer() == home.old
    assert not home.note.exists()
    home.verified()
