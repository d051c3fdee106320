"""Large tensors from their own mappings, so the trainer's memory goes back as it is freed.

glibc's malloc serves a request under its mmap threshold from the heap. The threshold starts
at 128 KiB and rises (up to 32 MiB) each time a larger mapped block is freed, so from the
second step on a training step's activations (9 to 25 MB each at batch 8 x 512 on
SmolLM2-135M) come from the heap, where the blocks freed by the backward pass fragment and
are not returned: the process's peak RSS grows well past what it ever holds at once (at
4 x 512, 4925 MB against 3945 MB with the threshold fixed; bench/options.py). Setting the
threshold with mallopt also turns its rising off. Each large allocation then costs a mapping
and its first-touch page faults: a fraction of a percent of a step that computes on them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
THRESHOLD = 1 << 20  # 1 MiB: every activation of a real batch, few of the small tensors


def mallopt() -> Any:
    """glibc's mallopt, or None where libc is not glibc (musl has none)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        call = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_int]
    call.restype = ctypes.c_int
    return call


def fix_mmap_threshold(threshold: int = THRESHOLD) -> bool:
    """Fix glibc's mmap threshold for this process; False where libc is not glibc."""
    call = mallopt()
    return call is not None and bool(call(M_MMAP_THRESHOLD, threshold))
