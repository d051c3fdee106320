"""Configuration: flags and ONESEEK_* environment for where things are, oneseekd.toml for the rest.

Every default lives in this module. oneseekd.toml is checked by one schema: a frozen dataclass
per [section], each setting carrying its default and the rule that checks it (configrules.py),
walked by one validator that lists every problem at once. (Not pydantic, as requests are: every
oneseekctl command reads the configuration, and its read path must not import pydantic.)
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oneseekd import configrules as rule
from oneseekd.errors import ConfigError
from oneseekd.home import CONFIG_FILE, HomePaths, default_db_url

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
DEFAULT_CACHE_BYTES = 20 * 2**30  # 20 GiB of tokenized datasets
DEFAULT_COLLECTIVE_TIMEOUT_SECONDS = 1800.0
# A claimed run's lease: renewed with every trainer heartbeat; another daemon may take the run
# over once it has expired (docs/scale-out.md).
DEFAULT_LEASE_SECONDS = 60.0
DEFAULT_TRAINER_THREADS = 0  # 0: torch's own choice (or the daemon's OMP_NUM_THREADS)
DEFAULT_HUB_ENDPOINT = "https://huggingface.co"
# [metrics]: the Prometheus endpoint, off unless `listen` is set; a bare port binds to loopback
# (METRICS_LOOPBACK, configrules.py)
# Prometheus' usual scrape interval: a snapshot read more often is mostly never served, and each
# read is the status queries (an idle daemon's largest CPU cost with metrics on)
DEFAULT_METRICS_REFRESH_SECONDS = 15.0


def default_host(env: Mapping[str, str] | None = None) -> str:
    """The host name rows and claims carry when none is configured: ONESEEK_HOST (what the
    daemon hands its trainer), else the machine's name. The one fallback every module uses."""
    env = os.environ if env is None else env
    return (env.get("ONESEEK_HOST") or "").strip() or socket.gethostname()


# --- the schema: one frozen dataclass per section, each setting with the rule that checks it
# (the rules: configrules.py) ---
def _setting(default: Any, check: rule.Rule, *, factory: Callable[[], Any] | None = None) -> Any:
    """A setting of the schema: its default and the rule a value in the file must pass."""
    if factory is not None:
        return field(default_factory=factory, metadata={"rule": check})
    return field(default=default, metadata={"rule": check})


@dataclass(frozen=True)
class CatalogConfig:
    # the name this daemon's catalog rows and claimed runs carry (several hosts, one database)
    host: str = _setting(None, rule.host, factory=default_host)
    settle_seconds: float = _setting(DEFAULT_SETTLE_SECONDS, rule.seconds(0.0))
    rescan_interval_seconds: float = _setting(
        DEFAULT_RESCAN_INTERVAL_SECONDS, rule.seconds(MIN_RESCAN_INTERVAL_SECONDS)
    )
    extra_roots: tuple[Path, ...] = _setting((), rule.roots)


@dataclass(frozen=True)
class IntakeConfig:
    settle_seconds: float = _setting(DEFAULT_INTAKE_SETTLE_SECONDS, rule.seconds(0.0))


@dataclass(frozen=True)
class TrainerConfig:
    """The child process: what starts it, how it is stopped, how often it is retried."""

    command: tuple[str, ...] = _setting(DEFAULT_TRAINER_COMMAND, rule.command)
    max_attempts: int = _setting(
        DEFAULT_MAX_ATTEMPTS, rule.whole(1, "a whole number of at least 1")
    )
    # on a host without GPUs, how many CPU processes (DDP over gloo) stand in for them
    cpu_processes: int = _setting(
        DEFAULT_CPU_PROCESSES, rule.whole(1, "a whole number of at least 1")
    )
    # how long a rank of a multi-process run waits on the others before the run fails
    collective_timeout_seconds: float = _setting(
        DEFAULT_COLLECTIVE_TIMEOUT_SECONDS, rule.seconds(1.0)
    )
    # CPU threads of the child's torch; 0: its default
    threads: int = _setting(
        DEFAULT_TRAINER_THREADS, rule.whole(0, "a whole number of CPU threads (0: torch's default)")
    )
    # the tokenization cache's bound in bytes (home/cache/tokenized/, least recently used
    # evicted; 0: no cache): each dataset is tokenized once per tokenizer and options
    cache_bytes: int = _setting(
        DEFAULT_CACHE_BYTES, rule.whole(0, "a whole number of bytes (0: no tokenization cache)")
    )
    cancel_grace_seconds: float = _setting(DEFAULT_CANCEL_GRACE_SECONDS, rule.seconds(0.0))
    stop_grace_seconds: float = _setting(DEFAULT_STOP_GRACE_SECONDS, rule.seconds(0.0))
    heartbeat_seconds: float = _setting(DEFAULT_HEARTBEAT_SECONDS, rule.seconds(0.05))
    lease_seconds: float = _setting(DEFAULT_LEASE_SECONDS, rule.seconds(1.0))
    # where a run reports its curves when its request has no report_to (configrules.REPORTERS);
    # none: nowhere
    report_to: tuple[str, ...] = _setting((), rule.reporters)

    def problems(self) -> list[str]:
        """What no single setting shows: checked on the values in force."""
        if self.lease_seconds < 3 * self.heartbeat_seconds:
            return [
                f"trainer.lease_seconds ({self.lease_seconds:g}) must be at least three "
                f"heartbeats (3 x trainer.heartbeat_seconds = {3 * self.heartbeat_seconds:g}), "
                "or a live daemon could lose its run"
            ]
        return []


@dataclass(frozen=True)
class CertifyConfig:
    # a new certification becomes oneseek-certified/OneSeek-7B-Zero-CURRENT; false leaves
    # the pointer to `oneseekctl promote` (or to CivicAI's "Set as Active")
    make_current: bool = _setting(True, rule.boolean)
    # a run whose model does not beat its base on held-out bits per byte is refused
    # certification (false: certified, but not made current)
    require_improvement: bool = _setting(False, rule.boolean)
    # a run on the base models of the current one becomes current only if no model of it is
    # worse than the current one's on this run's held-out data
    compare_with_current: bool = _setting(True, rule.boolean)
    # the held-out tokens evaluated per model (a deterministic prefix of the validation split)
    eval_tokens: int = _setting(50_000, rule.whole(1, "a whole number >= 1"))
    # below this many held-out records, or target bytes, the gate gives no verdict: the run is
    # certified "too few held-out data", not made current (certify/gate.py)
    min_held_out_records: int = _setting(10, rule.whole(2, "a whole number >= 2"))
    min_held_out_bytes: int = _setting(256, rule.whole(1, "a whole number >= 1"))
    # greedy generations of base and trained for this many held-out prompts (samples.json)
    sample_prompts: int = _setting(3, rule.whole(0, "a whole number >= 0"))
    sample_tokens: int = _setting(48, rule.whole(0, "a whole number >= 0"))


@dataclass(frozen=True)
class HubConfig:
    """Where `oneseekctl pull` and the daemon's downloads fetch base models (oneseekd/hub/)."""

    # the Hub or a mirror; default: HF_ENDPOINT from the environment, else huggingface.co
    endpoint: str = _setting(DEFAULT_HUB_ENDPOINT, rule.endpoint)
    # true: no download asks the network; a pull is refused naming what to copy in by hand
    # (HF_HUB_OFFLINE=1 in the environment sets it too)
    offline: bool = _setting(False, rule.boolean)


@dataclass(frozen=True)
class MetricsConfig:
    """The daemon's Prometheus endpoint (oneseekd/metrics/, docs/operations.md "Metrics")."""

    # (host, port) to serve /metrics on; None (the default): no endpoint, nothing imported
    listen: tuple[str, int] | None = _setting(None, rule.listen)
    # how often the catalog, queue and running run's figures are read from the database into
    # what a scrape answers (a scrape itself never reads the database)
    refresh_seconds: float = _setting(DEFAULT_METRICS_REFRESH_SECONDS, rule.seconds(0.1))


@dataclass(frozen=True)
class Settings:
    """oneseekd.toml as a whole: the top-level settings and one table per section."""

    log_level: str = _setting(DEFAULT_LOG_LEVEL, rule.log_level)
    catalog: CatalogConfig = field(default_factory=CatalogConfig)
    intake: IntakeConfig = field(default_factory=IntakeConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    certify: CertifyConfig = field(default_factory=CertifyConfig)
    hub: HubConfig = field(default_factory=HubConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)


@dataclass(frozen=True)
class Config:
    home: HomePaths
    db_url: str
    log_level: str = DEFAULT_LOG_LEVEL
    catalog: CatalogConfig = field(default_factory=CatalogConfig)
    intake: IntakeConfig = field(default_factory=IntakeConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    certify: CertifyConfig = field(default_factory=CertifyConfig)
    hub: HubConfig = field(default_factory=HubConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)


# a setting an ONESEEK_* variable overrides, checked by the setting's own rule after it
OVERRIDDEN_BY = {("", "log_level"): "ONESEEK_LOG_LEVEL", ("catalog", "host"): "ONESEEK_HOST"}


def _validate(
    cls: type[Any],
    table: Any,
    section: str,
    home: Path,
    env: Mapping[str, str],
    problems: list[str],
) -> Any:
    """One section (or the file itself, section ""): every setting checked by its rule, every
    problem appended in the schema's order; a refused value leaves its default in force."""
    where = f"[{section}]" if section else CONFIG_FILE
    if not isinstance(table, dict):
        problems.append(f"{where} must be a table")
        return cls()
    settings = dataclasses.fields(cls)
    known = {s.name for s in settings}
    problems += [
        f"{where}: unknown setting {key!r}{rule.did_you_mean(key, known)} "
        f"(known: {', '.join(sorted(known))})"
        for key in sorted(set(table) - known)
    ]
    values: dict[str, Any] = {}
    for setting in settings:
        check: rule.Rule | None = setting.metadata.get("rule")
        if check is None:  # a section of the file
            values[setting.name] = _validate(
                SECTIONS[setting.name],
                table.get(setting.name, {}),
                setting.name,
                home,
                env,
                problems,
            )
            continue
        given = (
            [(f"{section}.{setting.name}" if section else setting.name, table[setting.name])]
            if setting.name in table
            else []
        )
        variable = OVERRIDDEN_BY.get((section, setting.name))
        if variable and env.get(variable):
            given.append((variable, env[variable]))
        for name, value in given:
            try:
                values[setting.name] = check(value, name, home)
            except rule.Problem as exc:
                problems += [str(p) for p in exc.args]
                values.pop(setting.name, None)
    made = cls(**values)
    if hasattr(made, "problems"):
        problems += made.problems()
    return made


SECTIONS: dict[str, type[Any]] = {
    "catalog": CatalogConfig,
    "intake": IntakeConfig,
    "trainer": TrainerConfig,
    "certify": CertifyConfig,
    "hub": HubConfig,
    "metrics": MetricsConfig,
}

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})


def resolve_home(home: str | os.PathLike[str] | None, env: Mapping[str, str]) -> Path:
    """--home, else ONESEEK_HOME; one of them is required."""
    raw = home if home is not None else env.get("ONESEEK_HOME")
    if raw is None or str(raw) == "":
        raise ConfigError(
            "no home folder given",
            ["pass --home DIR or set ONESEEK_HOME=DIR (DIR holds models/, requests/, oneseek.db)"],
        )
    return Path(raw).expanduser().resolve()


def _read_toml(paths: HomePaths) -> dict[str, Any]:
    if not paths.config_file.exists():
        return {}
    try:
        return tomllib.loads(paths.config_file.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"{paths.config_file} is not valid TOML",
            [f"{exc}; fix the file or move it away to use the defaults"],
        ) from exc
    except OSError as exc:
        raise ConfigError(f"cannot read {paths.config_file}", [str(exc)]) from exc


def load_config(
    home: str | os.PathLike[str] | None,
    db_url: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Config:
    """Build the configuration from flags, environment and HOME/oneseekd.toml."""
    env = os.environ if env is None else env
    root = resolve_home(home, env)
    paths = HomePaths(root)
    if root.exists() and not root.is_dir():
        raise ConfigError(f"home {root} is not a folder", ["pass --home a folder path"])
    problems: list[str] = []
    toml = _read_toml(paths)
    settings: Settings = _validate(Settings, toml, "", root, env, problems)
    url = db_url or env.get("ONESEEK_DB_URL") or default_db_url(root)
    if "://" not in url:
        problems.append(
            f"database URL {url!r} is not an SQLAlchemy URL; "
            "use e.g. sqlite:////var/lib/oneseekd/oneseek.db"
        )
    hub = _hub_from_env(settings.hub, toml.get("hub"), env, problems)
    if problems:
        raise ConfigError(f"the configuration in {root} is invalid", problems)
    catalog = settings.catalog
    if "host" not in toml.get("catalog", {}) and not env.get("ONESEEK_HOST"):
        # the machine's name: `env` is the environment that counts here (not necessarily this
        # process's), so default_host is not asked
        catalog = dataclasses.replace(catalog, host=socket.gethostname())
    return Config(
        home=paths,
        db_url=url,
        log_level=settings.log_level,
        catalog=catalog,
        intake=settings.intake,
        trainer=settings.trainer,
        certify=settings.certify,
        hub=hub,
        metrics=settings.metrics,
    )


def _hub_from_env(
    hub: HubConfig, table: Any, env: Mapping[str, str], problems: list[str]
) -> HubConfig:
    """huggingface_hub's own variables, as every tool that downloads from the Hub reads them:
    HF_ENDPOINT when the file names no endpoint, and HF_HUB_OFFLINE=1 turns offline on."""
    given = table if isinstance(table, dict) else {}
    if "endpoint" not in given and env.get("HF_ENDPOINT"):
        try:
            hub = dataclasses.replace(
                hub, endpoint=rule.endpoint(env["HF_ENDPOINT"], "HF_ENDPOINT", Path())
            )
        except rule.Problem as exc:
            problems += [str(p) for p in exc.args]
    if env.get("HF_HUB_OFFLINE", "").strip().lower() in TRUE_WORDS:
        hub = dataclasses.replace(hub, offline=True)
    return hub
