"""oneseekctl ledger verify."""

from __future__ import annotations

from dataclasses import asdict

import click

from oneseekd.certify.ledger import verify
from oneseekd.cli.context import Context, emit_json
from oneseekd.errors import OneseekError


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


@click.group("ledger")
def ledger_group() -> None:
    """The signed, hash-chained training ledger."""


@ledger_group.command("verify")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.pass_obj
def verify_cmd(obj: Context, as_json: bool) -> None:
    """Re-check the hash chain, the signatures, every artifact's sha256 against its file and
    every ledger_proof.json; exit 1 on any mismatch."""
    report = verify(obj.engine(), obj.config.home)
    if as_json:
        emit_json(asdict(report))
        if not report.ok:
            raise SystemExit(1)
        return
    if not report.ok:
        raise OneseekError("the ledger does not verify", report.problems)
    checked = [_count(report.events, "event"), _count(report.artifacts, "artifact")]
    if report.proofs:
        checked.append(_count(report.proofs, "ledger proof"))
    click.echo(f"Ledger OK: {', '.join(checked)} verified.")
    if report.current:
        click.echo(f"Current: {report.current}")
