"""What to pull: `ORG/NAME[@REVISION]`, or `hf:ORG/NAME[@REVISION]` in a request's base_models."""

from __future__ import annotations

import re
from dataclasses import dataclass

from oneseekd.errors import OneseekError

PREFIX = "hf:"
# the Hub's own rule for repository names: letters, digits, '-', '_', '.', no '--' or '..'
_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_REPO = re.compile(rf"{_PART}/{_PART}")
_REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,199}")


class HubError(OneseekError):
    """A pull that cannot be done as asked: a bad name, the Hub's refusal, a failed check."""


@dataclass(frozen=True)
class RepoRef:
    repo: str  # ORG/NAME
    revision: str  # a branch, a tag or a commit; "main" when none was named

    @property
    def folder(self) -> str:
        """The folder name a pull installs into by default: the repository's own name."""
        return self.repo.split("/", 1)[1]

    def __str__(self) -> str:
        return self.repo if self.revision == "main" else f"{self.repo}@{self.revision}"


def is_hub_name(name: str) -> bool:
    """Whether a requested base model names a Hub repository (`hf:ORG/NAME[@REV]`)."""
    return name.strip().lower().startswith(PREFIX)


def parse(text: str) -> RepoRef:
    """`ORG/NAME`, `ORG/NAME@REV` or the same with `hf:` before it; HubError says what is
    wrong with anything else."""
    raw = text.strip()
    if raw.lower().startswith(PREFIX):
        raw = raw[len(PREFIX) :]
    repo, _, revision = raw.partition("@")
    problems = []
    if "--" in repo or ".." in repo or not _REPO.fullmatch(repo):
        problems.append(
            f"{repo!r} is not a Hub repository id: write ORG/NAME, for example "
            "Qwen/Qwen2.5-7B-Instruct"
        )
    if revision and (".." in revision or not _REVISION.fullmatch(revision)):
        problems.append(
            f"{revision!r} is not a revision: name a branch, a tag or a commit after '@'"
        )
    if problems:
        raise HubError(f"cannot pull {text!r}", problems)
    return RepoRef(repo, revision or "main")
