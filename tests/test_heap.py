"""The trainer child's fixed mmap threshold: memory freed by a step goes back to the system."""

from __future__ import annotations

import subprocess
import sys

import pytest

from oneseekd.trainer import heap

# a freed 8 MB block makes glibc raise its mmap threshold past 2 MB; then 100 blocks of 2 MB
# are written and all but the last freed (the last pins the heap's top, as live tensors do)
SCRIPT = """
import ctypes, sys
from oneseekd.trainer import heap
if sys.argv[1] == "fixed":
    assert heap.fix_mmap_threshold()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
libc.free(libc.malloc(8 << 20))
blocks = [libc.malloc(2 << 20) for _ in range(100)]
for b in blocks:
    ctypes.memset(b, 1, 2 << 20)
before = rss()
for b in blocks[:-1]:
    libc.free(b)
print(before - rss())
"""


def returned(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True
    )
    return int(out.stdout)


@pytest.mark.skipif(heap.mallopt() is None, reason="libc is not glibc")
def test_freed_blocks_go_back_with_the_threshold_fixed_and_stay_without() -> None:
    assert returned("fixed") > 150 << 20  # of the 198 MB freed
    assert returned("default") < 50 << 20  # glibc keeps them in its heap
