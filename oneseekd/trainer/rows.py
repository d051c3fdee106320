"""Rows of integers held flat, as the tokenization cache maps them from disk (tokcache.py):
one array of every row's values and one of where each row starts. A row is read as a list of
ints when it is asked for (a batch's rows), so a cached dataset of millions of tokens costs
no Python objects until it is used; sums over every row (label counts and bytes) are
computed on the arrays at once."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import overload

import numpy as np


class Rows(Sequence[list[int]]):
    """Rows of ints held flat (`values`, `starts`: the offset of each row and the end), each
    read as a list when asked for; `take` selects rows without reading them."""

    def __init__(self, values: np.ndarray, starts: np.ndarray, index: np.ndarray | None = None):
        self.values, self.starts = values, starts
        self.order = np.arange(len(starts) - 1) if index is None else index

    def __len__(self) -> int:
        return len(self.order)

    @overload
    def __getitem__(self, i: int) -> list[int]: ...

    @overload
    def __getitem__(self, i: slice) -> list[list[int]]: ...

    def __getitem__(self, i: int | slice) -> list[int] | list[list[int]]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        row = int(self.order[i])
        return [int(v) for v in self.values[self.starts[row] : self.starts[row + 1]].tolist()]

    def __iter__(self) -> Iterator[list[int]]:
        for i in range(len(self)):
            yield self[i]

    def lengths(self) -> list[int]:
        return [int(n) for n in (self.starts[self.order + 1] - self.starts[self.order]).tolist()]

    def take(self, indices: Sequence[int]) -> Rows:
        return Rows(self.values, self.starts, self.order[np.asarray(indices, dtype=np.int64)])

    def largest(self) -> int:
        """The largest value of the rows selected."""
        if not len(self.values):
            return 0
        if len(self.order) == len(self.starts) - 1:  # every row: the flat array at once
            return int(self.values.max())
        return max((max(row) for row in self if row), default=0)

    def sums_after_first(self, weights: Rows | None = None) -> list[int]:
        """Each row's sum of its values after the first, each times the same position of
        `weights` when given (rows of the same lengths): label counts from masks, label
        bytes from bytes and masks."""
        flat = np.asarray(self.values, dtype=np.int64)
        if weights is not None:
            flat = flat * np.asarray(weights.values, dtype=np.int64)
        running = np.concatenate([[0], np.cumsum(flat)])
        begin, end = self.starts[self.order], self.starts[self.order + 1]
        first = np.minimum(begin + 1, end)  # an empty row sums to nothing
        return [int(v) for v in (running[end] - running[first]).tolist()]
