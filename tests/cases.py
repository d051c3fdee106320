"""Parametrized cases of which plain `pytest` runs a chosen few and `pytest -m slow` the rest."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

import pytest


def slow_but(default: Collection[tuple[Any, ...]], cases: Iterable[tuple[Any, ...]]) -> list[Any]:
    """Every case as a pytest.param named by its values joined with "-"; those not in
    `default` marked slow. One test then covers all of them: CI's plain run takes the
    default few (the regression tests of bugs found), `-m slow` the rest."""
    return [
        pytest.param(
            *case,
            id="-".join(map(str, case)),
            marks=() if case in default else pytest.mark.slow,
        )
        for case in cases
    ]
