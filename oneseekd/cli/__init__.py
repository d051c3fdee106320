"""oneseekctl: the operator's command line. Never imports torch; answers in well under a second.

Library errors (OneseekError) become `Error: ...` and an exit code in exactly one place:
`OneseekGroup.invoke`.
"""

from __future__ import annotations

import sys
from typing import Any

import click
from sqlalchemy.exc import SQLAlchemyError

from oneseekd import __version__
from oneseekd.cli.catalog import models_cmd, resolve_cmd
from oneseekd.cli.context import Context, machine_error
from oneseekd.cli.db import db_group
from oneseekd.cli.display import shown_lines
from oneseekd.cli.ledger import ledger_group
from oneseekd.cli.promote import promote_cmd
from oneseekd.cli.runs import cancel_cmd, runs_cmd, show_cmd, submit_cmd
from oneseekd.cli.status import status_cmd
from oneseekd.cli.train import train_cmd
from oneseekd.errors import OneseekError
from oneseekd.logs import configure_logging
from oneseekd.options import home_and_db_options


class OneseekGroup(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except OneseekError as exc:
            # names in an error (a resolve's candidates) may come from rows others wrote
            click.echo(shown_lines(f"Error: {exc}"), err=True)
            sys.exit(exc.exit_code)
        except (SQLAlchemyError, OSError) as exc:  # read-only, full disk: never a traceback
            error = machine_error(exc, ctx.obj) if isinstance(ctx.obj, Context) else None
            if error is None:
                raise
            click.echo(shown_lines(f"Error: {error}"), err=True)
            sys.exit(error.exit_code)


@click.group(cls=OneseekGroup, context_settings={"help_option_names": ["-h", "--help"]})
@home_and_db_options
@click.version_option(__version__, prog_name="oneseekctl")
@click.pass_context
def main(ctx: click.Context, home: str | None, db_url: str | None) -> None:
    """Inspect and drive oneseekd: the catalog, requests, runs and the ledger."""
    configure_logging("warning")
    ctx.obj = Context(home=home, db_url=db_url)


main.add_command(status_cmd)
main.add_command(models_cmd)
main.add_command(resolve_cmd)
main.add_command(db_group)
main.add_command(submit_cmd)
main.add_command(runs_cmd)
main.add_command(show_cmd)
main.add_command(cancel_cmd)
main.add_command(ledger_group)
main.add_command(promote_cmd)
main.add_command(train_cmd)
