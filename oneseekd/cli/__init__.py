"""oneseekctl: the operator's command line. Never imports torch; answers in well under a second.

Each command's module is imported only when that command runs, so that `status`, `models`,
`runs` and `show` (oneseekd/cli/read.py) start in about 0.1 s. A new command is one line in
COMMANDS: its name, module and the click command in it.

Library errors (OneseekError) become `Error: ...` and an exit code in exactly one place:
`OneseekGroup.invoke`.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from oneseekd import __version__
from oneseekd.cli import encoder
from oneseekd.cli.context import Context, machine_error
from oneseekd.cli.display import shown_lines
from oneseekd.errors import OneseekError
from oneseekd.options import home_and_db_options

# name -> (module, attribute), in the order `--help` lists them
COMMANDS: dict[str, tuple[str, str]] = {
    "status": ("oneseekd.cli.status", "status_cmd"),
    "models": ("oneseekd.cli.catalog", "models_cmd"),
    "resolve": ("oneseekd.cli.catalog", "resolve_cmd"),
    "submit": ("oneseekd.cli.submit", "submit_cmd"),
    "runs": ("oneseekd.cli.runs", "runs_cmd"),
    "show": ("oneseekd.cli.runs", "show_cmd"),
    "cancel": ("oneseekd.cli.submit", "cancel_cmd"),
    "requests": ("oneseekd.cli.requests", "requests_cmd"),
    "ledger": ("oneseekd.cli.ledger", "ledger_group"),
    "db": ("oneseekd.cli.db", "db_group"),
    "promote": ("oneseekd.cli.promote", "promote_cmd"),
    "train": ("oneseekd.cli.train", "train_cmd"),
}
# the commands whose modules import nothing heavy; every other one gets the full machinery
# (SQLAlchemy, structlog set to warnings on stderr) as it is loaded
LIGHT = frozenset({"status", "models", "runs", "show", "requests"})


class OneseekGroup(click.Group):
    def main(self, args: Any = None, *rest: Any, **kwargs: Any) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        encoder.start_early(argv)  # a dry run's child, before the heavy imports below
        return super().main(argv, *rest, **kwargs)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*COMMANDS, *(n for n in super().list_commands(ctx) if n not in COMMANDS)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return super().get_command(ctx, cmd_name)
        if cmd_name not in LIGHT:
            from oneseekd.cli.read import full_machinery

            full_machinery()
        module, attribute = COMMANDS[cmd_name]
        command = getattr(importlib.import_module(module), attribute)
        assert isinstance(command, click.Command)
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except OneseekError as exc:
            # names in an error (a resolve's candidates) may come from rows others wrote
            click.echo(shown_lines(f"Error: {exc}"), err=True)
            sys.exit(exc.exit_code)
        except Exception as exc:  # read-only, full disk: never a traceback
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
    ctx.obj = Context(home=home, db_url=db_url)
