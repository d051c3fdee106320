"""The `oneseekd` command: flags, logging, and the exit status of the daemon's run."""

from __future__ import annotations

import sys

import click
import structlog

from oneseekd import __version__
from oneseekd.config import load_config
from oneseekd.daemon.service import Daemon
from oneseekd.errors import OneseekError
from oneseekd.logs import configure_logging
from oneseekd.options import home_and_db_options

log = structlog.get_logger("oneseekd")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@home_and_db_options
@click.option(
    "--exit-when-idle",
    is_flag=True,
    help="Exit 0 once the catalog is current and nothing is left to do.",
)
@click.version_option(__version__, prog_name="oneseekd")
def main(home: str | None, db_url: str | None, exit_when_idle: bool) -> None:
    """Run the oneseekd training daemon in the foreground. It logs to stderr: readable lines
    on a terminal, JSON lines when piped or under systemd (ONESEEK_LOG_FORMAT=json|human
    decides outright)."""
    configure_logging("info")
    try:
        config = load_config(home, db_url)
        configure_logging(config.log_level)
        code = Daemon(config, exit_when_idle=exit_when_idle).run()
    except OneseekError as exc:
        log.error("daemon_start_failed", error=exc.message, problems=exc.problems)
        click.echo(f"Error: {exc}", err=True)
        sys.exit(exc.exit_code)
    sys.exit(code)
