"""No kernel lookup on the Hub: bitsandbytes 0.50 asks the `kernels` package for a CPU kernel
on the Hub when it is imported on a CPU with AVX512-BF16, and tells the operator to set
trust_remote_code when that fails. The trainer imports it with the lookup off.

Each case runs in a fresh interpreter whose CPU is made to look like one with AVX512-BF16
(bitsandbytes' own probe forced, so the test means the same on any CPU) and whose `kernels`
asks a stand-in Hub that records the question and fails, with no network."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from oneseekd.trainer.hubless import HUB_FAILURE

# loaded by the interpreter at start (PYTHONPATH): bitsandbytes' has_avx512bf16() says yes, and
# the real `kernels` package (transformers imports it too) gets a get_kernel that records the
# question and fails as the Hub's refusal does
SITECUSTOMIZE = """
import importlib.abc, importlib.machinery, os, pathlib, sys


def _get_kernel(repo_id, version=None, **kwargs):
    pathlib.Path(os.environ["ASKED_FILE"]).write_text(repo_id)
    raise RuntimeError(
        f"Kernel repository {repo_id!r} could not verify publisher trust status. "
        "Set trust_remote_code=True"
    )


PATCHES = {
    "bitsandbytes.functional": ("has_avx512bf16", lambda: True),
    "kernels": ("get_kernel", _get_kernel),
}


class _Patch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in PATCHES:
            return None
        attribute, value = PATCHES[name]  # find_spec() alone may ask without importing
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            setattr(module, attribute, value)

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _Patch())
"""


def _run(tmp_path: Path, argv: list[str]) -> tuple[bool, str]:
    """Whether the stand-in Hub was asked, and what the interpreter wrote to stderr."""
    shims = tmp_path / "shims"
    shims.mkdir(parents=True, exist_ok=True)
    (shims / "sitecustomize.py").write_text(SITECUSTOMIZE)
    asked = tmp_path / "asked"
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(shims),
        "ASKED_FILE": str(asked),
        "HOME": str(tmp_path),
    }
    done = subprocess.run(
        [sys.executable, *argv], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    return asked.exists(), done.stderr


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_importing_peft_without_the_guard_asks_the_hub(tmp_path: Path) -> None:
    """The defect itself, with the stand-in Hub: the control that makes the guarded case
    below mean something (slow: it is the library's behaviour, not oneseekd's)."""
    asked, stderr = _run(tmp_path / "plain", ["-c", "import peft"])
    assert asked and HUB_FAILURE in stderr and "trust_remote_code" in stderr


@pytest.mark.timeout(300)
def test_importing_peft_with_the_guard_does_not_ask_the_hub(tmp_path: Path) -> None:
    # and `kernels` is importable again afterwards, for whatever else may want it
    guarded = (
        "from oneseekd.trainer.hubless import import_bitsandbytes as i; i(); import peft; "
        "import kernels"
    )
    asked, stderr = _run(tmp_path / "guarded", ["-c", guarded])
    assert not asked and "kernels-community" not in stderr, stderr
    assert stderr == "", stderr


@pytest.mark.timeout(300)
def test_the_trainer_entry_imports_bitsandbytes_without_asking_the_hub(tmp_path: Path) -> None:
    """The trainer child as the supervisor starts it, on a run that does not exist: it gets
    past every import of peft and transformers before it fails."""
    home = tmp_path / "home"
    home.mkdir()
    argv = ["-m", "oneseekd.trainer", "--home", str(home), "--run-id", "20261207-000000-x"]
    argv += ["--db-url", f"sqlite:///{tmp_path / 'none.db'}"]
    asked, stderr = _run(tmp_path, argv)
    assert "trainer_crashed" in stderr or "Error" in stderr, stderr[-2000:]
    assert not asked and "kernels-community" not in stderr, stderr[-2000:]
