"""The most bytes of tensors alive at once while a piece of code runs, on the CPU.

A dispatch mode sees every tensor torch makes (the forward, autograd's backward on this thread,
the optimizer) and follows each storage until it is freed. Unlike the process's RSS, it is not
moved by the allocator, page faults or other threads; unlike torch's MemTracker, it takes
frozen parameters. Tensors made before it starts count only once an op returns them again.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary


class Peak(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.seen: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self.now = 0
        self.peak = 0

    def _freed(self, size: int) -> Callable[[Any], None]:
        def gone(_: Any) -> None:
            self.now -= size

        return gone

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                storage = t.untyped_storage()
                if storage in self.seen:
                    continue
                size = storage.nbytes()
                # the callback holds the size, not the storage (which must be free to go)
                self.seen[storage] = weakref.ref(storage, self._freed(size))
                self.now += size
                self.peak = max(self.peak, self.now)
        return out


def peak_bytes(fn: Callable[[], object]) -> int:
    """The most bytes of tensors made by `fn` alive at once while it runs."""
    with Peak() as peak:
        fn()
    return peak.peak
