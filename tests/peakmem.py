"""The most bytes of tensors alive at once while a piece of code runs, on the CPU.

A dispatch mode sees every tensor torch makes (the forward, autograd's backward on this thread,
the optimizer) and follows each storage until it is freed. Unlike the process's RSS, it is not
moved by the allocator, page faults or other threads; unlike torch's MemTracker, it takes
frozen parameters. Tensors made before it starts count only once an op returns them again.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary


class Peak(TorchDispatchMode):
    """Follows the storages ops return; `held` (a model's parameters and buffers) count from
    the start, each storage once."""

    def __init__(self, held: Iterable[torch.Tensor] = ()) -> None:
        super().__init__()
        self.seen: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self.now = 0
        self.peak = 0
        for t in held:
            self._count(t)

    def _freed(self, size: int) -> Callable[[Any], None]:
        def gone(_: Any) -> None:
            self.now -= size

        return gone

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                self._count(t)
        return out

    def _count(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        if storage in self.seen:
            return
        size = storage.nbytes()
        # the callback holds the size, not the storage (which must be free to go)
        self.seen[storage] = weakref.ref(storage, self._freed(size))
        self.now += size
        self.peak = max(self.peak, self.now)


def peak_bytes(fn: Callable[[], object], held: Iterable[torch.Tensor] = ()) -> int:
    """The most bytes of tensors alive at once while `fn` runs: those it makes, and `held`."""
    with Peak(held) as peak:
        fn()
    return peak.peak
