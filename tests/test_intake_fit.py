"""A request whose training step cannot fit the host's memory in any way its options allow is
refused at intake, with the numbers and the fix (spec/plan.py's fit_problem)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from trainhomes import FAST, TinyHome

from oneseekd import gpus
from oneseekd.intake.accept import Intake
from oneseekd.intake.incoming import Verdict

MIB = 2**20


@pytest.fixture
def home(tmp_path: Path) -> TinyHome:
    return TinyHome(tmp_path / "home", tmp_path / "cache", {"Tiny-Llama": "llama"})


def take(home: TinyHome, memory: int | None, **fields: object) -> Verdict:
    body = {"base_models": ["Tiny-Llama"], "dataset": "civic.jsonl", **FAST, **fields}
    intake = Intake(home.engine, home.config.home, device_memory=lambda gpus: memory)
    return intake.take_bytes(json.dumps(body).encode(), source="submit")


def test_a_step_too_large_for_the_host_is_refused_with_the_numbers_and_the_fix(
    home: TinyHome,
) -> None:
    verdict = take(home, 32 * MIB, batch_size=8, max_seq_len=512)
    assert verdict.status == "rejected"
    assert verdict.problems == [
        "base_models: tiny-llama (fp32 base) at batch 8 x 512 tokens needs about 40 MiB of "
        "memory without gradient checkpointing; this host has 32 MiB, of which a run plans on "
        '85% (27 MiB): ask for micro_batch_size "auto" (here 4: the same batch in 2 passes), '
        "or batch_size 4 with gradient_accumulation_steps 2 (the same effective batch)"
    ]


def test_nothing_that_fits_is_named_when_nothing_does(home: TinyHome) -> None:
    verdict = take(home, 1 * MIB, batch_size=8, max_seq_len=512)
    assert verdict.problems[0].endswith(
        ": it cannot train on this host; use a host with more memory"
    )


def test_the_fix_it_names_is_queued(home: TinyHome) -> None:
    verdict = take(home, 32 * MIB, batch_size=4, max_seq_len=512, gradient_accumulation_steps=2)
    assert verdict.status == "queued", verdict.problems


def test_memory_that_cannot_be_told_judges_nothing(home: TinyHome) -> None:
    verdict = take(home, None, batch_size=8, max_seq_len=512)
    assert verdict.status == "queued", verdict.problems


def test_the_memory_a_run_plans_on_comes_from_nvidia_smi_or_the_ram(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\nprintf '81559\\n40960\\n'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    gpus.device_memory.cache_clear()
    try:
        assert gpus.device_memory(2) == 40960 * MIB  # the smallest GPU's
        assert gpus.device_memory(0) == os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        smi.write_text("#!/bin/sh\nexit 9\n")
        gpus.device_memory.cache_clear()
        assert gpus.device_memory(2) is None  # cannot say: intake judges nothing
    finally:
        gpus.device_memory.cache_clear()
