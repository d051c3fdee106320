"""How many processes a run (or one model of it) trains with, decided without importing torch.

A request asks for `gpus: N` or `gpus: "all"`. On a host with GPUs that is N, or every GPU the
daemon may see. On a host without one, `[trainer] cpu_processes` CPU processes (DDP over gloo)
stand in for GPUs: 1 by default, so only single-process runs are accepted there.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")


def host_gpus(env: Mapping[str, str] | None = None, proc_root: Path = NVIDIA_GPUS) -> int:
    """The GPUs a child of this process can use: the NVIDIA driver's list, narrowed by
    CUDA_VISIBLE_DEVICES when it is set (an empty value or -1 hides them all)."""
    env = os.environ if env is None else env
    try:
        present = sum(1 for _ in proc_root.iterdir())
    except OSError:
        present = 0
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return present
    named: list[str] = []
    for item in visible.split(","):
        item = item.strip()
        if not item or item.startswith("-"):
            break  # CUDA ignores everything from the first invalid entry on
        named.append(item)
    return min(len(named), present)


def resolve(asked: int | str, devices: int) -> int:
    """A `gpus` value as a number of processes: "all" is every device there is."""
    return devices if asked == "all" else int(asked)


def asked_for(config: Mapping[str, Any], key: str) -> int | str:
    """What a run's stored config asks for one model: its per_model override, else the
    request's value, else 1 (runs queued before `gpus` existed). A run spec (spec_version,
    oneseekd/spec/request.py) holds each model's value resolved."""
    if "spec_version" in config:
        value = config["models"][key]["gpus"]
        return value if value == "all" else int(value)
    override = config.get("per_model", {}).get(key, {})
    value = override.get("gpus", config.get("gpus", 1))
    return value if value == "all" else int(value)


def too_many(asked: int | str, gpus_here: int, cpu_processes: int) -> str | None:
    """Why a `gpus` value cannot be run on this host (with gpus_here GPUs), or None."""
    if asked == "all" or int(asked) <= (gpus_here if gpus_here > 0 else cpu_processes):
        return None
    if gpus_here > 0:
        return f"asks for {asked} GPUs, but this host has {gpus_here}"
    return (
        f"asks for {asked} GPUs, but this host has none (and trainer.cpu_processes = "
        f"{cpu_processes} CPU processes stand in for them)"
    )


@functools.cache
def device_memory(gpus_here: int) -> int | None:
    """The memory one process of a run may plan on, in bytes, without importing torch: the
    smallest GPU's (nvidia-smi; None when it cannot say), or on a host without GPUs its
    physical memory. Asked once per process: intake judges every request with it."""
    if gpus_here == 0:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        done = subprocess.run(
            [smi, "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return min(int(line) for line in done.stdout.split()) * 2**20  # MiB
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
