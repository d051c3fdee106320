"""oneseekctl: the operator's command line. Never imports torch; answers in well under a second.

Each command's module is imported only when that command runs, so that `status`, `models`,
`runs`, `show` and `logs` (oneseekd/cli/read.py) start in about 0.1 s, and `--help` lists the
commands from SUMMARIES without importing any. A new command is one line in COMMANDS: its
name, module and the click command in it (and one in SUMMARIES, or `--help` imports it).

Errors end a command in exactly one place, `fail`: library errors (OneseekError) and failures
of the machine from `OneseekGroup.invoke`, click's usage errors from click itself, or, when
`--json` is on the command line, from `OneseekGroup.main` as JSON. The exit codes are
oneseekd/errors.py's table.
"""

from __future__ import annotations

import importlib
import json
import sys
from typing import Any, NoReturn

import click

from oneseekd import __version__
from oneseekd.cli import encoder
from oneseekd.cli.context import Context, machine_error
from oneseekd.cli.display import shown_lines
from oneseekd.errors import EXIT_REFUSED, OneseekError
from oneseekd.options import home_and_db_options

# name -> (module, attribute), in the order `--help` lists them
COMMANDS: dict[str, tuple[str, str]] = {
    "status": ("oneseekd.cli.status", "status_cmd"),
    "models": ("oneseekd.cli.catalog", "models_cmd"),
    "resolve": ("oneseekd.cli.catalog", "resolve_cmd"),
    "submit": ("oneseekd.cli.submit", "submit_cmd"),
    "runs": ("oneseekd.cli.runs", "runs_cmd"),
    "show": ("oneseekd.cli.runs", "show_cmd"),
    "logs": ("oneseekd.cli.logs", "logs_cmd"),
    "cancel": ("oneseekd.cli.submit", "cancel_cmd"),
    "requests": ("oneseekd.cli.requests", "requests_cmd"),
    "ledger": ("oneseekd.cli.ledger", "ledger_group"),
    "db": ("oneseekd.cli.db", "db_group"),
    "promote": ("oneseekd.cli.promote", "promote_cmd"),
    "train": ("oneseekd.cli.train", "train_cmd"),
    "pull": ("oneseekd.cli.pull", "pull_cmd"),
}
# what `oneseekctl --help` says of each command, in full and without importing it (a command
# missing here is imported for its own first docstring line); tests/test_cli_help.py checks
SUMMARIES: dict[str, str] = {
    "status": "Is the daemon alive; the catalog, the queue, the run in progress, recent runs.",
    "models": "List the catalog of base models.",
    "resolve": "Show which catalog model each NAME means, and by which matching strategy.",
    "submit": "Validate a request (FILE.json and/or flags) and queue it, as a dropped file.",
    "runs": "The history of runs, newest first.",
    "show": "One run in full: settings, figures, promotions, every state change, the error.",
    "logs": "Print a run's log as readable lines; -f follows it until the run ends.",
    "cancel": "Cancel a queued run now, or ask a running one to stop at its next step.",
    "requests": "The recent requests from every door and their verdicts, newest first.",
    "ledger": "The signed, hash-chained training ledger.",
    "db": "The state database.",
    "promote": "Make a certified run the current one (a rollback too).",
    "train": "CivicAI's training start: train_dna_v2.py's flags, followed to its DNA: line.",
    "pull": "Download a base model from the Hugging Face Hub into the catalog, pinned and "
    "verified.",
}
# the commands whose modules import nothing heavy; every other one gets the full machinery
# (SQLAlchemy, structlog set to warnings on stderr) as it is loaded
LIGHT = frozenset({"status", "models", "runs", "show", "logs", "requests"})


def wants_json(argv: list[str]) -> bool:
    """Whether the command line asks for JSON (before a `--`): then its errors are JSON too,
    those click finds in the command line included."""
    words = argv[: argv.index("--")] if "--" in argv else argv
    return "--json" in words


def fail(message: str, fixes: list[str], code: int, as_json: bool) -> NoReturn:
    """The one way a command ends in an error: `Error: ...` with its fixes on stderr, or with
    --json the object {"error", "fixes", "exit_code"} on stderr (stdout carries only answers),
    then the exit code of docs/interface.md's table."""
    if as_json:
        click.echo(
            json.dumps({"error": message, "fixes": fixes, "exit_code": code}, indent=2), err=True
        )
    else:
        # names in an error (a resolve's candidates) may come from rows others wrote
        text = "\n".join([message, *(f"  - {f}" for f in fixes)])
        click.echo(shown_lines(f"Error: {text}"), err=True)
    sys.exit(code)


class OneseekGroup(click.Group):
    json_errors = False
    argv: tuple[str, ...] = ()

    def main(self, args: Any = None, *rest: Any, **kwargs: Any) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        encoder.start_early(argv)  # a dry run's child, before the heavy imports below
        self.json_errors = wants_json(argv)
        self.argv = tuple(argv)
        if not self.json_errors or kwargs.get("standalone_mode") is False:
            return super().main(argv, *rest, **kwargs)
        # click prints its own usage errors as text: here they become JSON like any other
        kwargs["standalone_mode"] = False
        try:
            code = super().main(argv, *rest, **kwargs)
        except click.ClickException as exc:
            fail(exc.format_message(), _usage_fixes(exc), exc.exit_code, True)
        except click.exceptions.Abort:
            fail("aborted", [], EXIT_REFUSED, True)
        sys.exit(code if isinstance(code, int) else 0)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*COMMANDS, *(n for n in super().list_commands(ctx) if n not in COMMANDS)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return super().get_command(ctx, cmd_name)
        if cmd_name not in LIGHT and not _only_help(ctx):
            from oneseekd.cli.read import full_machinery

            full_machinery()
        module, attribute = COMMANDS[cmd_name]
        command = getattr(importlib.import_module(module), attribute)
        assert isinstance(command, click.Command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Each command's first docstring line in full (click cuts it at 45 characters),
        read without importing the command: `--help` stays as light as `--version`."""
        rows = [(name, SUMMARIES.get(name) or _summary(ctx, name)) for name in COMMANDS]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except OneseekError as exc:
            fail(exc.message, exc.problems, exc.exit_code, self.json_errors)
        except click.ClickException:
            raise  # click prints it (or main, as JSON) with its exit code
        except Exception as exc:  # read-only, full disk: never a traceback
            error = machine_error(exc, ctx.obj) if isinstance(ctx.obj, Context) else None
            if error is None:
                raise
            fail(error.message, error.problems, error.exit_code, self.json_errors)


def _summary(ctx: click.Context, name: str) -> str:
    """A command SUMMARIES does not list: its own help's first line, importing it."""
    command = ctx.command.get_command(ctx, name) if isinstance(ctx.command, click.Group) else None
    return command.get_short_help_str(limit=200) if command is not None else ""


def _usage_fixes(exc: click.ClickException) -> list[str]:
    ctx = getattr(exc, "ctx", None)
    if ctx is None:
        return []
    return [f"see `{ctx.command_path} --help`"]


def _only_help(ctx: click.Context) -> bool:
    """Whether the command line asks for a command's help: its module is imported for its
    options, without the machinery (structlog) a run of it needs."""
    group = ctx.command
    argv = group.argv if isinstance(group, OneseekGroup) else ()
    return any(word in ("-h", "--help") for word in argv)


_EPILOG = """\b
Examples:
  oneseekctl --home DIR status --watch          the daemon, the queue, the run in progress
  oneseekctl --home DIR submit --base-models smollm2 --dataset civic.jsonl --epochs 1
  oneseekctl --home DIR logs latest -f          follow the newest run's log
  oneseekctl --home DIR show v1.2               what a run was: settings, figures, promotions
  oneseekctl --home DIR promote v1.1 --reason "rollback"

RUN, wherever a command takes one, is a run id, a DNA, a version (v1.2), the end of either
(318fcc), latest or current. `oneseekctl COMMAND --help` says more; --json on any command
prints JSON, errors included. Exit codes: docs/interface.md."""


@click.group(
    "oneseekctl",
    cls=OneseekGroup,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=_EPILOG,
)
@home_and_db_options
@click.version_option(__version__, prog_name="oneseekctl")
@click.pass_context
def main(ctx: click.Context, home: str | None, db_url: str | None) -> None:
    """Inspect and drive oneseekd: the catalog, requests, runs and the ledger."""
    ctx.obj = Context(home=home, db_url=db_url)
