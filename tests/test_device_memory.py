"""The device memory a run holds, in its progress (`device_memory_bytes`): what the metrics
endpoint exports as `oneseekd_run_device_memory_bytes` (issue 29). Absent on the CPU, never a
made-up 0; on a GPU, torch's reserved bytes, read without a device sync."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from trainhomes import TinyHome

from oneseekd.trainer import loading, reporting
from oneseekd.trainer.loading import Device, memory_in_use


def test_the_cpu_holds_no_device_memory_and_a_gpu_reports_its_reserved_bytes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert memory_in_use(Device("cpu", torch.float32, scaler=False)) is None
    asked: list[int] = []

    def reserved(index: int) -> int:
        asked.append(index)
        return 3 * 2**30

    monkeypatch.setattr(torch.cuda, "memory_reserved", reserved)
    gpu = Device("cuda", torch.bfloat16, scaler=False)
    assert memory_in_use(gpu, 1) == 3 * 2**30
    assert asked == [1]  # this rank's own GPU


@pytest.mark.timeout(300)
def test_every_step_report_carries_the_memory_the_device_holds(
    tmp_path: Path,
    cache: Path,
    monkeypatch: pytest.MonkeyPatch,
    progress_reports: list[dict[str, Any]],
) -> None:
    seen = progress_reports
    home = TinyHome(tmp_path / "home", cache, {"Tiny-Llama": "llama"})
    try:
        home.train(["llama"], epochs=1)  # on the CPU: no device memory in any report
        stepping = [r for r in seen if r.get("step") is not None]
        assert stepping and all("device_memory_bytes" not in r for r in stepping)
        seen.clear()
        monkeypatch.setattr(reporting, "memory_in_use", lambda device, index: 7 * 2**20)
        home.train(["llama"], epochs=2)  # another request: the same one is a duplicate
    finally:
        home.engine.dispose()
    stepping = [r for r in seen if r.get("step") is not None]
    assert stepping and all(r["device_memory_bytes"] == 7 * 2**20 for r in stepping)
    assert loading.memory_in_use is memory_in_use  # only the recipe's reader was replaced
