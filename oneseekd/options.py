"""The options `oneseekd` and `oneseekctl` share, declared once so that they cannot drift."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import click

F = TypeVar("F", bound=Callable[..., object])


def home_and_db_options(command: F) -> F:
    """--home (env ONESEEK_HOME) and --db-url (env ONESEEK_DB_URL)."""
    command = click.option(
        "--db-url",
        envvar="ONESEEK_DB_URL",
        help="SQLAlchemy URL of the state database. Env: ONESEEK_DB_URL. "
        "Default: sqlite:///HOME/oneseek.db",
    )(command)
    return click.option(
        "--home",
        envvar="ONESEEK_HOME",
        type=click.Path(file_okay=False),
        help="The home folder (models/, requests/, oneseek.db). Env: ONESEEK_HOME.",
    )(command)
