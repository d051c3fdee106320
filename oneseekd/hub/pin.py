"""Pinning: which commit a revision is, and which of its files a pull fetches.

The revision is resolved to a commit before the first byte, and every later request names the
commit, so a branch moved on the Hub mid-pull cannot mix two versions of a model. The Hub's
metadata gives each file's size and, for large (LFS) files, its sha256; small files have their
git blob id. fetch.py checks every byte against them.

Only what training needs is fetched: safetensors weights, config, tokenizer and generation
files. Pickled weights (`*.bin`, `*.pt`, ...) only with allow_pickle, and only when the
repository has no safetensors weights; code (`*.py`) never: oneseekd loads no remote code.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from oneseekd.hub.repo import HubError, RepoRef

CONFIG = ("config.json", "generation_config.json")
TOKENIZER = (
    *("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json"),
    *("vocab.json", "vocab.txt", "merges.txt", "added_tokens.json", "spiece.model"),
    *("sentencepiece.bpe.model", "*.tiktoken", "chat_template.jinja", "chat_template.json"),
    "preprocessor_config.json",
)
SAFE_WEIGHTS = ("*.safetensors", "*.safetensors.index.json")
PICKLES = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "pytorch_model.bin.index.json")
CODE = ("*.py",)


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name.lower(), p) for p in patterns)


@dataclass(frozen=True)
class HubFile:
    name: str
    size: int
    sha256: str | None  # an LFS file's, from the Hub's metadata
    blob_id: str | None  # a small file's git blob id


@dataclass(frozen=True)
class Pinned:
    ref: RepoRef
    commit: str
    files: list[HubFile]  # what is fetched
    skipped: dict[str, str] = field(default_factory=dict)  # file -> why it is not

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def choose(files: list[HubFile], *, allow_pickle: bool) -> tuple[list[HubFile], dict[str, str]]:
    """The files a pull fetches, and why each other file is left on the Hub."""
    names = [f.name for f in files]
    top = [n for n in names if "/" not in n]
    has_safe = any(_matches(n, ("*.safetensors",)) for n in top)
    keep: list[HubFile] = []
    skipped: dict[str, str] = {}
    for f in files:
        if "/" in f.name:
            skipped[f.name] = "in a subfolder: a model folder's own files are at its top"
        elif _matches(f.name, CODE):
            skipped[f.name] = "code: oneseekd never loads a repository's own code"
        elif _matches(f.name, PICKLES):
            if not allow_pickle:
                skipped[f.name] = "a pickle, which can run code when loaded (--allow-pickle)"
            elif has_safe:
                skipped[f.name] = "a pickle beside safetensors weights, which are used instead"
            else:
                keep.append(f)
        elif _matches(f.name, SAFE_WEIGHTS + CONFIG + TOKENIZER):
            keep.append(f)
        else:
            skipped[f.name] = "not needed to train"
    return keep, skipped


def check_choice(ref: RepoRef, keep: list[HubFile], skipped: dict[str, str]) -> None:
    """Refuse a pull that would not give a model oneseekd can train, saying what is there."""
    kept = {f.name for f in keep}
    problems = []
    if "config.json" not in kept:
        problems.append(
            f"{ref.repo} has no config.json at its top: it is not a transformers model folder"
        )
    weights = [n for n in kept if _matches(n, ("*.safetensors", *PICKLES))]
    if not weights:
        pickles = [n for n, why in skipped.items() if why.startswith("a pickle")]
        problems.append(
            f"{ref.repo} has no safetensors weights"
            + (
                f"; it has pickled ones ({', '.join(sorted(pickles)[:3])}): pull with "
                "--allow-pickle if you trust its publisher"
                if pickles
                else ""
            )
        )
    if problems:
        raise HubError(f"cannot pull {ref}", problems)


T = TypeVar("T")


def hub_call(ref: RepoRef, endpoint: str, token_file: Path, call: Callable[[], T]) -> T:
    """Run a call to the Hub; its errors become HubError naming the problem and the fix."""
    from huggingface_hub import errors

    try:
        return call()
    except errors.GatedRepoError as exc:
        raise HubError(
            f"{ref.repo} is gated on {endpoint}",
            [
                "accept its license on the Hub with your account, then put a token of that "
                f"account in {token_file} (mode 0600)",
                _status(exc),
            ],
        ) from None
    except errors.RepositoryNotFoundError as exc:
        raise HubError(
            f"no repository {ref.repo} on {endpoint} (or it is private)",
            [
                "check the repository id for a typo",
                f"for a private repository, put a token that can read it in {token_file} "
                "(mode 0600)",
                _status(exc),
            ],
        ) from None
    except errors.RevisionNotFoundError:
        raise HubError(
            f"{ref.repo} has no revision {ref.revision!r}",
            ["name a branch, a tag or a full commit id after '@', or leave it out for main"],
        ) from None
    except errors.RemoteEntryNotFoundError as exc:
        raise HubError(f"a file of {ref} is gone from {endpoint}", [_status(exc)]) from None
    except errors.HfHubHTTPError as exc:
        code = exc.response.status_code if exc.response is not None else None
        if code in (401, 403):
            raise HubError(
                f"{endpoint} refused access to {ref.repo} ({code})",
                [f"the token in {token_file} is missing, expired or lacks read access"],
            ) from None
        raise Retryable(f"{endpoint} answered {code}: {exc}") from None
    except OSError as exc:  # connection refused, DNS, reset: httpx's errors are not OSErrors
        raise Retryable(f"cannot reach {endpoint}: {exc}") from None
    except Exception as exc:
        if _network_error(exc):
            raise Retryable(f"cannot reach {endpoint}: {exc}") from None
        raise


class Retryable(Exception):
    """A failure worth another try after a pause: the network, a 5xx, a dropped transfer."""


def _status(exc: Any) -> str:
    response = getattr(exc, "response", None)
    code = getattr(response, "status_code", "?")
    return f"the Hub answered {code}"


def _network_error(exc: BaseException) -> bool:
    module = type(exc).__module__
    return module.startswith(("httpx", "httpcore", "requests", "urllib3", "h11"))


def pin(
    ref: RepoRef,
    *,
    endpoint: str,
    token: str | None,
    token_file: Path,
    allow_pickle: bool = False,
) -> Pinned:
    """Resolve `ref` to a commit and choose its files (one metadata request)."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=token if token else False)
    info = hub_call(
        ref,
        endpoint,
        token_file,
        lambda: api.model_info(ref.repo, revision=ref.revision, files_metadata=True),
    )
    if not info.sha:
        raise Retryable(f"{endpoint} gave no commit for {ref}")
    files = [
        HubFile(
            s.rfilename,
            int(s.lfs.size if s.lfs is not None else (s.size or 0)),
            s.lfs.sha256 if s.lfs is not None else None,
            None if s.lfs is not None else s.blob_id,
        )
        for s in info.siblings or []
    ]
    keep, skipped = choose(files, allow_pickle=allow_pickle)
    check_choice(ref, keep, skipped)
    return Pinned(ref, info.sha, keep, skipped)
