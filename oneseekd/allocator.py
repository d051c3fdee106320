"""Giving the C heap's free pages back to the system after a burst of work.

glibc's malloc keeps what a process frees: a page goes back to the system only when it is at
the very top of the heap, so a burst of small allocations (a full catalog scan reads and writes
every model's row: 1,000 models, 3 to 4 MB at the peak) leaves the idle daemon that much larger
for as long as it runs, though it holds none of it. `malloc_trim(0)` returns every whole free
page of every arena (madvise), at the cost of a walk over the heap (well under a millisecond at
the daemon's size). Elsewhere than glibc (musl, macOS) there is no malloc_trim and nothing is
done. The trainer's own heap policy is in trainer/heap.py.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

_trim: Callable[[int], int] | None = None
_looked = False


def _malloc_trim() -> Callable[[int], int] | None:
    global _trim, _looked
    if not _looked:
        _looked = True
        try:
            # the symbols the process already has: libc's, with no library search (find_library
            # would start ldconfig)
            call = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError):
            return None
        call.argtypes = [ctypes.c_size_t]
        call.restype = ctypes.c_int
        _trim = call
    return _trim


def give_back() -> bool:
    """Return the heap's free pages to the system; whether there was a malloc_trim to call."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
