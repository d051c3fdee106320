"""The one error root and the one exit-code table. Errors carry every problem at once, each
with its fix.

Exit codes of `oneseekd` and `oneseekctl` (docs/interface.md, "Exit codes"); a script tells
them apart without reading the text:

    0   done, including what was done already (cancel of an ended run, promote of the
        current run), like `systemctl stop` of a stopped unit
    1   refused: a request, a name that names no run or model (or several), a ledger
        mismatch, a run that cannot be cancelled or promoted
    2   usage: an unknown command or option, a missing argument, a value of the wrong type
        (click's own code, kept so that a typo on the command line reads as one)
    3   database: unreachable, damaged, read-only, behind the newest revision
    4   a daemon already runs on the home (oneseekd)
    76  the daemon's database file was replaced under it (systemd restarts it)
    78  configuration: no home, a home that is not one, an invalid oneseekd.toml (sysexits'
        EX_CONFIG)

`oneseekctl train` keeps the codes CivicAI's admin panel knows from train_dna_v2.py: 1 the run
failed or was cancelled, 2 refused, 128+N killed by signal N.
"""

from __future__ import annotations

from collections.abc import Sequence

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_DATABASE = 3
EXIT_DAEMON_RUNNING = 4
EXIT_DATABASE_CHANGED = 76
EXIT_CONFIG = 78

# code -> what it means, as docs/interface.md lists it (tests/test_interface_doc.py checks)
EXIT_CODES: dict[int, str] = {
    EXIT_OK: "done, or done already",
    EXIT_REFUSED: "refused",
    EXIT_USAGE: "usage",
    EXIT_DATABASE: "database",
    EXIT_DAEMON_RUNNING: "a daemon already runs on the home",
    EXIT_DATABASE_CHANGED: "the database file was replaced under the daemon",
    EXIT_CONFIG: "configuration",
}


class OneseekError(Exception):
    """Base of every error oneseekd raises on purpose; the CLI prints it as `Error: ...`."""

    exit_code = EXIT_REFUSED

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

    exit_code = EXIT_CONFIG


class DatabaseError(OneseekError):
    """The database cannot be used as it is (too new, unreachable, not migrated)."""

    exit_code = EXIT_DATABASE


class ModelResolutionError(OneseekError):
    """A requested model name matches no catalog model, or more than one."""


class RunNotFound(OneseekError):
    """No run has the name given, or several have (the candidates are named)."""


class DaemonAlreadyRunning(OneseekError):
    """Another oneseekd holds the home's lock."""

    exit_code = EXIT_DAEMON_RUNNING
