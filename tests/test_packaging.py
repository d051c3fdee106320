"""The wheel must carry every package: a non-editable install misses what is not listed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_folder_is_listed_in_pyproject() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {
        ".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "oneseekd").rglob("__init__.py")
    }
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"
    assert config["package-dir"]["oneseekd_migrations"] == "migrations"
    assert {"oneseekd_migrations", "oneseekd_migrations.versions"} <= listed


def test_building_the_package_prints_no_warning(tmp_path: Path) -> None:
    """`make install` builds the editable wheel: no setuptools warning box (a license table,
    ...) reaches the operator; the Makefile silences only the named informational one."""
    makefile = (ROOT / "Makefile").read_text()
    [silenced] = re.findall(r"^INSTALL_WARNINGS := (.+)$", makefile, re.M)
    script = (
        "from setuptools import build_meta as b; "
        f"b.build_editable({str(tmp_path)!r}, metadata_directory=None)"
    )
    env = {**os.environ, "PYTHONWARNINGS": silenced}
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    assert "Warning" not in done.stderr + done.stdout, done.stderr[-3000:]
    assert "!!" not in done.stderr, done.stderr[-3000:]
    assert isinstance(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"], str
    )
