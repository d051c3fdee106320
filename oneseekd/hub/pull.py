"""One pull from start to end: pin, fetch into staging, check, install (fetch.py has how)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from oneseekd.hub.fetch import (
    MANIFEST,
    Transfer,
    fetch,
    install,
    installed_manifest,
    staging_folder,
)
from oneseekd.hub.pin import Pinned, Retryable, pin
from oneseekd.hub.repo import HubError, RepoRef
from oneseekd.hub.token import read_token

T = TypeVar("T")


@dataclass(frozen=True)
class Where:
    """The folders and settings a pull works with."""

    base_models: Path  # models/oneseek-7b-zero/base_models/
    incoming: Path  # models/.incoming/
    token_file: Path  # keys/hf_token
    endpoint: str  # [hub] endpoint, HF_ENDPOINT, or https://huggingface.co
    offline: bool = False  # [hub] offline


@dataclass(frozen=True)
class Pulled:
    target: Path
    pinned: Pinned | None  # None when the model was already there (nothing asked of the Hub)
    commit: str
    sha256s: dict[str, str]
    fetched: bool  # False: the same commit was already installed


def _offline_refusal(ref: RepoRef, target: Path, why: str) -> HubError:
    return HubError(
        f"cannot pull {ref}: {why}",
        [
            f"on a machine that can reach the Hub, download {ref.repo} (its config.json, "
            "tokenizer files and *.safetensors) and copy the folder to "
            f"{target}/; the catalog takes it in like any model folder",
            "or point [hub] endpoint / HF_ENDPOINT at a mirror this machine can reach",
        ],
    )


def retried(
    what: Callable[[], T],
    *,
    attempts: int,
    backoff_s: float,
    sleep: Callable[[float], None],
    on_failure: Callable[[str], HubError],
) -> T:
    for attempt in range(1, attempts + 1):
        try:
            return what()
        except Retryable as exc:
            if attempt == attempts:
                raise on_failure(str(exc)) from None
            sleep(min(backoff_s * 2 ** (attempt - 1), 60.0))
    raise AssertionError("unreachable")


def pull_model(
    ref: RepoRef,
    where: Where,
    *,
    folder: str | None = None,
    allow_pickle: bool = False,
    progress: Callable[[Transfer], None] = lambda t: None,
    cancelled: Callable[[], bool] = lambda: False,
    attempts: int = 5,
    backoff_s: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
    free_bytes: Callable[[Path], int] | None = None,
    on_pinned: Callable[[Pinned], None] = lambda p: None,
    pinned_commit: str | None = None,
) -> Pulled:
    """`pinned_commit`: the commit this download pinned before it was interrupted (its row's);
    a folder installed from that commit is this download's own, finished by the rename just
    before a kill: taken as it is, without asking the Hub again."""
    target = where.base_models / (folder or ref.folder)
    have = installed_manifest(target)
    same_repo = have is not None and have.get("repository") == ref.repo
    if have is not None and same_repo and have.get("commit") in (ref.revision, pinned_commit):
        return Pulled(target, None, str(have["commit"]), _sha256s(have), fetched=False)
    if where.offline:
        raise _offline_refusal(ref, target, "[hub] offline is set")
    token = read_token(where.token_file)
    pinned = retried(
        lambda: pin(
            ref,
            endpoint=where.endpoint,
            token=token,
            token_file=where.token_file,
            allow_pickle=allow_pickle,
        ),
        attempts=attempts,
        backoff_s=backoff_s,
        sleep=sleep,
        on_failure=lambda why: _offline_refusal(ref, target, why),
    )
    on_pinned(pinned)
    if have is not None and same_repo and have.get("commit") == pinned.commit:
        return Pulled(target, pinned, pinned.commit, _sha256s(have), fetched=False)
    if target.exists():
        source = f"{have.get('repository')}@{have.get('commit')}" if have else "a model copied in"
        raise HubError(
            f"{target} already holds {source}",
            [f"pull with --name to give {ref} a folder of its own, or move that one away"],
        )
    staging = staging_folder(where.incoming, pinned, target.name)
    extra = {"free_bytes": free_bytes} if free_bytes is not None else {}
    sha256s = fetch(
        pinned,
        staging,
        endpoint=where.endpoint,
        token=token,
        token_file=where.token_file,
        progress=progress,
        cancelled=cancelled,
        attempts=attempts,
        backoff_s=backoff_s,
        sleep=sleep,
        **extra,
    )
    install(pinned, staging, target, sha256s)
    return Pulled(target, pinned, pinned.commit, sha256s, fetched=True)


def _sha256s(manifest: dict[str, object]) -> dict[str, str]:
    files = manifest.get("files")
    if not isinstance(files, dict):
        return {}
    return {str(k): str(v.get("sha256")) for k, v in files.items() if isinstance(v, dict)}


__all__ = ["MANIFEST", "Pulled", "Where", "pull_model"]
