"""oneseekctl promote RUN|DNA: make a certified run the current one (a rollback too)."""

from __future__ import annotations

import click

from oneseekd.certify.layout import CURRENT_LINK, is_dna
from oneseekd.cli.context import Context, emit_json, json_option
from oneseekd.cli.display import shown
from oneseekd.cli.names import FORMS, resolve_run
from oneseekd.cli.read import open_reader


@click.command("promote")
@click.argument("name", metavar="RUN")
@click.option(
    "--reason",
    default=None,
    help="Why (recorded in the ledger); needed for a run the gate did not make current.",
)
@json_option
@click.pass_obj
def promote_cmd(obj: Context, name: str, reason: str | None, as_json: bool) -> None:
    """Make a certified run the current one (a rollback too).

    Points oneseek-certified/OneSeek-7B-Zero-CURRENT at it, with its .txt and isCurrent in the
    weights JSONs; recorded in the ledger. A run that did not beat its base (or the current
    model) is made current only with --reason. RUN is FORMS_HERE.

    \b
    Examples:
    oneseekctl promote v1.2
    oneseekctl promote 318fcc --reason "rollback: v1.3 answers worse"
    """
    from oneseekd.certify.ledger import Ledger
    from oneseekd.certify.promote import promote

    engine = obj.engine()
    home = obj.config.home
    # a DNA goes as it is: promote() finds its run from the signed completion event
    ref = name if is_dna(name) else resolve_run(open_reader(obj)[0], home, name).run.run_id
    done = promote(engine, home, Ledger.for_home(engine, home), ref, reason=reason)
    if as_json:
        emit_json(
            {
                "run_id": done.run_id,
                "dna": done.dna,
                "previous": done.previous,
                "changed": done.changed,
            }
        )
    elif not done.changed:
        click.echo(f"{done.dna} (run {shown(done.run_id)}) is current already.")
    else:
        was = f", was {done.previous}" if done.previous else ""
        click.echo(f"{CURRENT_LINK} -> {done.dna} (run {shown(done.run_id)}){was}.")


promote_cmd.help = (promote_cmd.help or "").replace("FORMS_HERE", FORMS)
