"""Model names: normalization, display names and matching (CONTRACT.md section 3).

Pure functions only: no I/O, so the daemon, the CLI and the intake agree exactly.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from oneseekd.errors import ModelResolutionError

_NON_ALNUM = re.compile(r"[^a-z0-9]+")

# The strategies in the order the contract tries them.
EXACT = "exact"
CONTAINMENT = "containment"
NO_SEPARATOR = "no-separator"
STRATEGIES = (EXACT, CONTAINMENT, NO_SEPARATOR)


def normalize_model_name(name: str) -> str:
    """Lowercase; every run of characters outside [a-z0-9] becomes one '-'; no '-' at the ends.

    >>> normalize_model_name("KB-Llama-3.1-8B-Swedish")
    'kb-llama-3-1-8b-swedish'
    """
    return _NON_ALNUM.sub("-", name.lower()).strip("-")


def _squash(key: str) -> str:
    return key.replace("-", "")


HUB_CACHE_PREFIX = "models--"


def display_name(config: Mapping[str, Any] | None, folder_name: str) -> str:
    """config.json's `model_name`, else the last segment of `_name_or_path`, else the folder
    (for a hub cache's `models--org--name`, the repository name)."""
    if folder_name.startswith(HUB_CACHE_PREFIX):
        # a Hugging Face hub cache folder, models--org--name: the repository's name
        folder_name = folder_name.removeprefix(HUB_CACHE_PREFIX).split("--")[-1] or folder_name
    if config:
        model_name = config.get("model_name")
        if isinstance(model_name, str) and model_name.strip():
            return model_name.strip()
        name_or_path = config.get("_name_or_path")
        if isinstance(name_or_path, str):
            last = name_or_path.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1].strip()
            if last:
                return last
    return folder_name


@dataclass(frozen=True)
class Match:
    """The catalog key a requested name resolved to, and the strategy that found it."""

    requested: str
    key: str
    strategy: str


def _candidates(requested_key: str, keys: list[str], strategy: str) -> list[str]:
    if strategy == EXACT:
        return [k for k in keys if k == requested_key]
    if strategy == CONTAINMENT:
        return [k for k in keys if requested_key in k or k in requested_key]
    squashed = _squash(requested_key)
    return [k for k in keys if squashed in _squash(k) or _squash(k) in squashed]


def closest_key(key: str, pool: list[str]) -> str | None:
    """The key a mistyped name most likely means, or None. A key is compared whole and by
    its parts too (`mistrl` is far from `mistral-7b-instruct` as a whole, below difflib's
    cutoff, but one letter from its part `mistral`); of several, the closest."""
    best: tuple[float, str] | None = None
    for candidate in pool:
        parts = candidate.split("-")
        # the key, each part, and each run of parts as long as the name has
        pieces = {candidate, *parts}
        size = key.count("-") + 1
        pieces |= {"-".join(parts[i : i + size]) for i in range(len(parts))}
        score = max(difflib.SequenceMatcher(None, key, p).ratio() for p in pieces if p)
        if score >= 0.75 and (best is None or score > best[0]):
            best = (score, candidate)
    if best is not None:
        return best[1]
    close = difflib.get_close_matches(key, pool, n=1, cutoff=0.6)
    return close[0] if close else None


def match_model(requested: str, keys: Iterable[str]) -> Match:
    """Resolve one requested name against catalog keys, or raise naming the candidates.

    The first strategy that yields exactly one key wins; a strategy that yields several
    refuses the name (never a silent pick).
    """
    key = normalize_model_name(requested)
    pool = sorted(set(keys))
    if not key:
        raise ModelResolutionError(
            f"model name {requested!r} is empty once normalized; "
            "name a base model from `oneseekctl models`"
        )
    for strategy in STRATEGIES:
        found = _candidates(key, pool, strategy)
        if len(found) == 1:
            return Match(requested=requested, key=found[0], strategy=strategy)
        if len(found) > 1:
            raise ModelResolutionError(
                f"model name {requested!r} is ambiguous ({strategy} match): "
                f"it matches {', '.join(found)}; use the full key of one of them"
            )
    available = ", ".join(pool) if pool else "none (the catalog is empty)"
    close = closest_key(key, pool)
    hint = f" (did you mean {close!r}?)" if close else ""
    raise ModelResolutionError(
        f"model name {requested!r} matches no base model{hint}; available: {available}"
    )


def resolve_models(requested: Iterable[str], keys: Iterable[str]) -> list[Match]:
    """Resolve several names, reporting every unknown or ambiguous one at once."""
    pool = list(keys)
    matches: list[Match] = []
    problems: list[str] = []
    for name in requested:
        try:
            matches.append(match_model(name, pool))
        except ModelResolutionError as exc:
            problems.append(exc.message)
    if problems:
        raise ModelResolutionError(
            f"{len(problems)} of the requested model names cannot be resolved", problems
        )
    return matches


# --- artifact names (CONTRACT.md section 2) ----------------------------------------------------
ARTIFACT_FAMILY = "oneseek-7b-zero"


def artifact_prefix() -> str:
    return f"{ARTIFACT_FAMILY}-"


def versioned_name(version: str, key: str | None = None) -> str:
    """`oneseek-7b-zero-v1.1` or, for one model, `oneseek-7b-zero-v1.1-<key>`."""
    base = f"{ARTIFACT_FAMILY}-v{version}"
    return base if key is None else f"{base}-{key}"
