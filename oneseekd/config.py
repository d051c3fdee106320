"""Configuration: flags and ONESEEK_* environment for where things are, oneseekd.toml for the rest.

Every default lives in this module. A bad configuration is refused with every problem listed.
"""

from __future__ import annotations

import os
import socket
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oneseekd.errors import ConfigError
from oneseekd.home import CONFIG_FILE, default_db_url

# shim until the helpers' branches are merged: certify/, trainer/ and cli/runs.py import the
# home's paths from here; they belong to oneseekd.home (remove with those imports)
from oneseekd.home import HomePaths as HomePaths

LOG_LEVELS = ("debug", "info", "warning", "error")

# --- every default in one place -------------------------------------------------------------
DEFAULT_LOG_LEVEL = "info"
DEFAULT_SETTLE_SECONDS = 5.0
DEFAULT_RESCAN_INTERVAL_SECONDS = 300.0
MIN_RESCAN_INTERVAL_SECONDS = 1.0
SQLITE_BUSY_TIMEOUT_MS = 30_000
DEFAULT_INTAKE_SETTLE_SECONDS = 0.25
DEFAULT_TRAINER_COMMAND: tuple[str, ...] = (sys.executable, "-m", "oneseekd.trainer")
DEFAULT_CANCEL_GRACE_SECONDS = 30.0
DEFAULT_STOP_GRACE_SECONDS = 120.0
DEFAULT_HEARTBEAT_SECONDS = 1.0
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_CPU_PROCESSES = 1
DEFAULT_COLLECTIVE_TIMEOUT_SECONDS = 1800.0
# sharding "auto" shards a model whose weights take more than this share of one GPU's memory
FSDP_AUTO_FRACTION = 0.5
# A claimed run's lease: renewed with every trainer heartbeat; another daemon may take the run
# over once it has expired (docs/scale-out.md).
DEFAULT_LEASE_SECONDS = 60.0
MAX_HOST_LENGTH = 255
DEFAULT_TRAINER_THREADS = 0  # 0: torch's own choice (or the daemon's OMP_NUM_THREADS)


def default_host(env: Mapping[str, str] | None = None) -> str:
    """The host name rows and claims carry when none is configured: ONESEEK_HOST (what the
    daemon hands its trainer), else the machine's name. The one fallback every module uses."""
    env = os.environ if env is None else env
    return (env.get("ONESEEK_HOST") or "").strip() or socket.gethostname()


@dataclass(frozen=True)
class CatalogConfig:
    settle_seconds: float = DEFAULT_SETTLE_SECONDS
    rescan_interval_seconds: float = DEFAULT_RESCAN_INTERVAL_SECONDS
    extra_roots: tuple[Path, ...] = ()
    # the name this daemon's catalog rows and claimed runs carry (several hosts, one database)
    host: str = field(default_factory=default_host)


@dataclass(frozen=True)
class IntakeConfig:
    settle_seconds: float = DEFAULT_INTAKE_SETTLE_SECONDS


@dataclass(frozen=True)
class TrainerConfig:
    """The child process: what starts it, how it is stopped, how often it is retried."""

    command: tuple[str, ...] = DEFAULT_TRAINER_COMMAND
    cancel_grace_seconds: float = DEFAULT_CANCEL_GRACE_SECONDS
    stop_grace_seconds: float = DEFAULT_STOP_GRACE_SECONDS
    heartbeat_seconds: float = DEFAULT_HEARTBEAT_SECONDS
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    # on a host without GPUs, how many CPU processes (DDP over gloo) stand in for them
    cpu_processes: int = DEFAULT_CPU_PROCESSES
    # how long a rank of a multi-process run waits on the others before the run fails
    collective_timeout_seconds: float = DEFAULT_COLLECTIVE_TIMEOUT_SECONDS
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    threads: int = DEFAULT_TRAINER_THREADS  # CPU threads of the child's torch; 0: its default


@dataclass(frozen=True)
class CertifyConfig:
    # a new certification becomes oneseek-certified/OneSeek-7B-Zero-CURRENT; false leaves
    # the pointer to `oneseekctl promote` (or to CivicAI's "Set as Active")
    make_current: bool = True


@dataclass(frozen=True)
class Config:
    home: HomePaths
    db_url: str
    log_level: str = DEFAULT_LOG_LEVEL
    catalog: CatalogConfig = field(default_factory=CatalogConfig)
    intake: IntakeConfig = field(default_factory=IntakeConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    certify: CertifyConfig = field(default_factory=CertifyConfig)


def _number(
    table: Mapping[str, Any], key: str, where: str, problems: list[str], *, minimum: float
) -> float | None:
    if key not in table:
        return None
    value = table[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        problems.append(f"{where}.{key} must be a number of seconds, got {value!r}")
        return None
    if value < minimum:
        problems.append(f"{where}.{key} must be at least {minimum:g}, got {value!r}")
        return None
    return float(value)


def _unknown(table: Mapping[str, Any], known: set[str], where: str, problems: list[str]) -> None:
    for key in sorted(set(table) - known):
        allowed = ", ".join(sorted(known))
        problems.append(f"{where}: unknown setting {key!r} (known: {allowed})")


def _host(value: Any, where: str, problems: list[str]) -> str | None:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_HOST_LENGTH:
        problems.append(
            f"{where} must be a host name of 1 to {MAX_HOST_LENGTH} characters, got {value!r}"
        )
        return None
    return value.strip()


def _catalog(table: Any, home: Path, problems: list[str], env: Mapping[str, str]) -> CatalogConfig:
    if not isinstance(table, dict):
        problems.append("[catalog] must be a table")
        return CatalogConfig()
    _unknown(
        table,
        {"settle_seconds", "rescan_interval_seconds", "extra_roots", "host"},
        "[catalog]",
        problems,
    )
    host = _host(table["host"], "catalog.host", problems) if "host" in table else None
    if env.get("ONESEEK_HOST"):
        host = _host(env["ONESEEK_HOST"], "ONESEEK_HOST", problems)
    settle = _number(table, "settle_seconds", "catalog", problems, minimum=0.0)
    rescan = _number(
        table, "rescan_interval_seconds", "catalog", problems, minimum=MIN_RESCAN_INTERVAL_SECONDS
    )
    roots: list[Path] = []
    raw_roots = table.get("extra_roots", [])
    if not isinstance(raw_roots, list) or not all(isinstance(r, str) for r in raw_roots):
        problems.append(f"catalog.extra_roots must be a list of folder paths, got {raw_roots!r}")
    else:
        for raw in raw_roots:
            root = Path(raw).expanduser()
            root = root if root.is_absolute() else home / root
            if not root.is_dir():
                problems.append(
                    f"catalog.extra_roots: {raw!r} is not a folder ({root}); "
                    "create it or remove it from the list"
                )
            else:
                roots.append(root)
    return CatalogConfig(
        settle_seconds=DEFAULT_SETTLE_SECONDS if settle is None else settle,
        rescan_interval_seconds=DEFAULT_RESCAN_INTERVAL_SECONDS if rescan is None else rescan,
        extra_roots=tuple(roots),
        host=host or default_host(env),
    )


def _table(data: dict[str, Any], name: str, known: set[str], problems: list[str]) -> dict[str, Any]:
    table = data.get(name, {})
    if not isinstance(table, dict):
        problems.append(f"[{name}] must be a table")
        return {}
    _unknown(table, known, f"[{name}]", problems)
    return table


def _intake(data: dict[str, Any], problems: list[str]) -> IntakeConfig:
    table = _table(data, "intake", {"settle_seconds"}, problems)
    settle = _number(table, "settle_seconds", "intake", problems, minimum=0.0)
    return IntakeConfig(DEFAULT_INTAKE_SETTLE_SECONDS if settle is None else settle)


def _trainer(data: dict[str, Any], problems: list[str]) -> TrainerConfig:
    known = {
        "command",
        "cancel_grace_seconds",
        "stop_grace_seconds",
        "heartbeat_seconds",
        "max_attempts",
        "cpu_processes",
        "collective_timeout_seconds",
        "lease_seconds",
        "threads",
    }
    table = _table(data, "trainer", known, problems)
    command = table.get("command", list(DEFAULT_TRAINER_COMMAND))
    if not (
        isinstance(command, list) and command and all(isinstance(c, str) and c for c in command)
    ):
        problems.append(
            f"trainer.command must be a non-empty list of strings (an argv), got {command!r}"
        )
        command = list(DEFAULT_TRAINER_COMMAND)
    attempts = table.get("max_attempts", DEFAULT_MAX_ATTEMPTS)
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
        problems.append(
            f"trainer.max_attempts must be a whole number of at least 1, got {attempts!r}"
        )
        attempts = DEFAULT_MAX_ATTEMPTS
    cpus = table.get("cpu_processes", DEFAULT_CPU_PROCESSES)
    if isinstance(cpus, bool) or not isinstance(cpus, int) or cpus < 1:
        problems.append(f"trainer.cpu_processes must be a whole number of at least 1, got {cpus!r}")
        cpus = DEFAULT_CPU_PROCESSES
    collective = _number(table, "collective_timeout_seconds", "trainer", problems, minimum=1.0)
    threads = table.get("threads", DEFAULT_TRAINER_THREADS)
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        problems.append(
            "trainer.threads must be a whole number of CPU threads (0: torch's default), "
            f"got {threads!r}"
        )
        threads = DEFAULT_TRAINER_THREADS
    cancel = _number(table, "cancel_grace_seconds", "trainer", problems, minimum=0.0)
    stop = _number(table, "stop_grace_seconds", "trainer", problems, minimum=0.0)
    beat = _number(table, "heartbeat_seconds", "trainer", problems, minimum=0.05)
    lease = _number(table, "lease_seconds", "trainer", problems, minimum=1.0)
    heartbeat = DEFAULT_HEARTBEAT_SECONDS if beat is None else beat
    lease = DEFAULT_LEASE_SECONDS if lease is None else lease
    if lease < 3 * heartbeat:
        problems.append(
            f"trainer.lease_seconds ({lease:g}) must be at least three heartbeats "
            f"(3 x trainer.heartbeat_seconds = {3 * heartbeat:g}), or a live daemon could "
            "lose its run"
        )
    return TrainerConfig(
        command=tuple(command),
        cancel_grace_seconds=DEFAULT_CANCEL_GRACE_SECONDS if cancel is None else cancel,
        stop_grace_seconds=DEFAULT_STOP_GRACE_SECONDS if stop is None else stop,
        heartbeat_seconds=heartbeat,
        max_attempts=attempts,
        cpu_processes=cpus,
        collective_timeout_seconds=(
            DEFAULT_COLLECTIVE_TIMEOUT_SECONDS if collective is None else collective
        ),
        lease_seconds=lease,
        threads=threads,
    )


def _certify(data: dict[str, Any], problems: list[str]) -> CertifyConfig:
    table = _table(data, "certify", {"make_current"}, problems)
    make_current = table.get("make_current", True)
    if not isinstance(make_current, bool):
        problems.append(f"certify.make_current must be true or false, got {make_current!r}")
        make_current = True
    return CertifyConfig(make_current=make_current)


def _log_level(value: Any, where: str, problems: list[str]) -> str:
    if not isinstance(value, str) or value.lower() not in LOG_LEVELS:
        problems.append(f"{where} must be one of {', '.join(LOG_LEVELS)}, got {value!r}")
        return DEFAULT_LOG_LEVEL
    return value.lower()


def resolve_home(home: str | os.PathLike[str] | None, env: Mapping[str, str]) -> Path:
    """--home, else ONESEEK_HOME; one of them is required."""
    raw = home if home is not None else env.get("ONESEEK_HOME")
    if raw is None or str(raw) == "":
        raise ConfigError(
            "no home folder given",
            ["pass --home DIR or set ONESEEK_HOME=DIR (DIR holds models/, requests/, oneseek.db)"],
        )
    return Path(raw).expanduser().resolve()


def load_config(
    home: str | os.PathLike[str] | None,
    db_url: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Config:
    """Build the configuration from flags, environment and HOME/oneseekd.toml."""
    env = os.environ if env is None else env
    root = resolve_home(home, env)
    paths = HomePaths(root)
    problems: list[str] = []
    if root.exists() and not root.is_dir():
        raise ConfigError(f"home {root} is not a folder", ["pass --home a folder path"])

    data: dict[str, Any] = {}
    if paths.config_file.exists():
        try:
            data = tomllib.loads(paths.config_file.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"{paths.config_file} is not valid TOML",
                [f"{exc}; fix the file or move it away to use the defaults"],
            ) from exc
        except OSError as exc:
            raise ConfigError(f"cannot read {paths.config_file}", [str(exc)]) from exc

    _unknown(data, {"log_level", "catalog", "intake", "trainer", "certify"}, CONFIG_FILE, problems)
    log_level = _log_level(data.get("log_level", DEFAULT_LOG_LEVEL), "log_level", problems)
    if env.get("ONESEEK_LOG_LEVEL"):
        log_level = _log_level(env["ONESEEK_LOG_LEVEL"], "ONESEEK_LOG_LEVEL", problems)
    catalog = _catalog(data.get("catalog", {}), root, problems, env)
    intake = _intake(data, problems)
    trainer = _trainer(data, problems)
    certify = _certify(data, problems)

    url = db_url or env.get("ONESEEK_DB_URL") or default_db_url(root)
    if "://" not in url:
        problems.append(
            f"database URL {url!r} is not an SQLAlchemy URL; "
            "use e.g. sqlite:////var/lib/oneseekd/oneseek.db"
        )
    if problems:
        raise ConfigError(f"the configuration in {root} is invalid", problems)
    return Config(
        home=paths,
        db_url=url,
        log_level=log_level,
        catalog=catalog,
        intake=intake,
        trainer=trainer,
        certify=certify,
    )
