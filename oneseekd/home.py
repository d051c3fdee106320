"""The home folder: where everything a daemon keeps lies, by name (CONTRACT's layout).

Imported everywhere, so it imports nothing heavy; what the settings in oneseekd.toml mean is
config.py's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import overload

CONFIG_FILE = "oneseekd.toml"


class _Under:
    """One place of the layout: its path below the home's root."""

    def __init__(self, *parts: str) -> None:
        self.parts = parts

    @overload
    def __get__(self, home: None, owner: type) -> _Under: ...

    @overload
    def __get__(self, home: HomePaths, owner: type) -> Path: ...

    def __get__(self, home: HomePaths | None, owner: type) -> _Under | Path:
        return self if home is None else home.root.joinpath(*self.parts)


@dataclass(frozen=True)
class HomePaths:
    """The layout of a home folder (CONTRACT.md section 2)."""

    root: Path

    db_file = _Under("oneseek.db")
    config_file = _Under(CONFIG_FILE)
    lock_file = _Under("oneseekd.lock")
    models = _Under("models")
    zero = _Under("models", "oneseek-7b-zero")
    base_models = _Under("models", "oneseek-7b-zero", "base_models")
    certified = _Under("models", "oneseek-certified")
    requests = _Under("requests")
    datasets = _Under("datasets")
    logs = _Under("logs")
    # downloads from the Hub arrive here and are renamed into base_models/ once checked; the
    # catalog skips it (a folder whose name starts with a dot)
    incoming = _Under("models", ".incoming")
    keys = _Under("keys")
    hf_token = _Under("keys", "hf_token")  # a token for gated or private repositories (0600)
    # what oneseekd remembers to answer faster and can always find out again (never a record)
    cache = _Under("cache")

    def ensure(self) -> None:
        """Create the folders the daemon owns; existing ones are left as they are."""
        for folder in (
            self.base_models,
            self.zero / "lora_adapters",
            self.zero / "weights",
            self.certified,
            self.requests / "accepted",
            self.requests / "rejected",
            self.datasets,
            self.logs,
        ):
            folder.mkdir(parents=True, exist_ok=True)


def default_db_url(home: Path) -> str:
    return f"sqlite:///{HomePaths(home).db_file}"
