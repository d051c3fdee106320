"""The one error root. Errors carry every problem at once, each with its fix."""

from __future__ import annotations

from collections.abc import Sequence


class OneseekError(Exception):
    """Base of every error oneseekd raises on purpose; the CLI prints it as `Error: ...`."""

    exit_code = 1

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.problems = list(problems)

    def __str__(self) -> str:
        if not self.problems:
            return self.message
        lines = [self.message]
        lines.extend(f"  - {p}" for p in self.problems)
        return "\n".join(lines)


class ConfigError(OneseekError):
    """The configuration (flags, environment, oneseekd.toml) is invalid."""

    exit_code = 2


class DatabaseError(OneseekError):
    """The database cannot be used as it is (too new, unreachable, not migrated)."""

    exit_code = 3


class ModelResolutionError(OneseekError):
    """A requested model name matches no catalog model, or more than one."""


class RunNotFound(OneseekError):
    """No run has the id (or row number) given."""


class DaemonAlreadyRunning(OneseekError):
    """Another oneseekd holds the home's lock."""

    exit_code = 4
