"""bitsandbytes is imported only by a trainer whose run uses it (issue 24, item 3): a run
that neither quantizes nor steps with an 8-bit optimizer starts about a second faster without
it, and peft then imports none; a run that uses it imports it as before (trainer/hubless.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from trainhomes import TinyHome

from oneseekd.trainer.__main__ import uses_bitsandbytes

# the trainer's entry on a claimed run, in a fresh interpreter; then what it imported
PROBE = """
import sys
from oneseekd.trainer.__main__ import main
code = main(["--home", sys.argv[1], "--db-url", sys.argv[2], "--run-id", sys.argv[3]])
held = sys.modules.get("bitsandbytes", "absent")
print("RESULT", code, "absent" if held is None or held == "absent" else "imported")
"""


def _config(home: TinyHome, run_id: str) -> object:
    [(config,)] = home.rows("SELECT config FROM runs WHERE run_id = ?", run_id)
    return json.loads(str(config)) if isinstance(config, str) else config


def test_only_quantized_or_8_bit_optimizer_runs_use_it(tmp_path: Path, cache: Path) -> None:
    home = TinyHome(tmp_path / "home", cache, {"Tiny-Llama": "llama"})
    plain = home.submit(["llama"])
    four = home.submit(["llama"], load_in_4bit=True)
    eight = home.submit(["llama"], optimizer="adamw_8bit")
    assert not uses_bitsandbytes(_config(home, plain))
    assert uses_bitsandbytes(_config(home, four))
    assert uses_bitsandbytes(_config(home, eight))
    assert uses_bitsandbytes({"spec_version": 999})  # refused by its own loading: as before


def test_a_plain_run_trains_without_importing_it(tmp_path: Path, cache: Path) -> None:
    home = TinyHome(tmp_path / "home", cache, {"Tiny-Llama": "llama"})
    run_id = home.start(["llama"], epochs=1)
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(home.root), home.config.db_url, run_id],
        capture_output=True,
        text=True,
        timeout=300,
    )
    [result] = [line for line in done.stdout.splitlines() if line.startswith("RESULT")]
    assert result == "RESULT 0 absent", done.stderr[-3000:]
    [(state,)] = home.rows("SELECT state FROM model_trainings")
    assert state == "trained"


def test_a_hidden_bitsandbytes_asked_for_is_a_loud_error() -> None:
    code = (
        "from oneseekd.trainer.hubless import hide_bitsandbytes, import_bitsandbytes\n"
        "hide_bitsandbytes()\n"
        "import importlib.util\n"
        "assert importlib.util.find_spec('bitsandbytes') is None  # what peft asks\n"
        "try:\n"
        "    import_bitsandbytes()\n"
        "except RuntimeError as exc:\n"
        "    print('REFUSED', 'uses_bitsandbytes' in str(exc))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "REFUSED True", done.stderr
