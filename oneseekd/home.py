"""The home folder: where everything a daemon keeps lies, by name (CONTRACT's layout).

Imported everywhere, so it imports nothing heavy; what the settings in oneseekd.toml mean is
config.py's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CONFIG_FILE = "oneseekd.toml"


@dataclass(frozen=True)
class HomePaths:
    """The layout of a home folder (CONTRACT.md section 2)."""

    root: Path

    @property
    def db_file(self) -> Path:
        return self.root / "oneseek.db"

    @property
    def config_file(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def lock_file(self) -> Path:
        return self.root / "oneseekd.lock"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def zero(self) -> Path:
        return self.models / "oneseek-7b-zero"

    @property
    def base_models(self) -> Path:
        return self.zero / "base_models"

    @property
    def certified(self) -> Path:
        return self.models / "oneseek-certified"

    @property
    def requests(self) -> Path:
        return self.root / "requests"

    @property
    def datasets(self) -> Path:
        return self.root / "datasets"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

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
