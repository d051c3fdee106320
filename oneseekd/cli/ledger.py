"""oneseekctl ledger verify and ledger tip."""

from __future__ import annotations

from dataclasses import asdict

import click

from oneseekd.certify.keys import pinned_key_id
from oneseekd.certify.tip import read_tip
from oneseekd.certify.verify import verify
from oneseekd.cli.context import Context, emit_json, json_option
from oneseekd.errors import OneseekError
from oneseekd.metrics import verified


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


@click.group("ledger")
def ledger_group() -> None:
    """The signed, hash-chained training ledger."""


@ledger_group.command("verify")
@json_option
@click.pass_obj
def verify_cmd(obj: Context, as_json: bool) -> None:
    """Re-check the hash chain, the signatures, every artifact's sha256 against its file and
    every ledger_proof.json; exit 1 on any mismatch."""
    report = verify(obj.engine(), obj.config.home)
    # for the daemon's metrics (oneseekd_ledger_verify_*): an alert watches the last result
    unwritten = verified.record(
        obj.config.home, report.ok, report.events, report.artifacts, len(report.problems)
    )
    if unwritten is not None:
        click.echo(f"(the result is not recorded for the daemon's metrics: {unwritten})", err=True)
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


@ledger_group.command("tip")
@json_option
@click.pass_obj
def tip_cmd(obj: Context, as_json: bool) -> None:
    """Print the anchored tip (HOME/ledger.tip: the newest event's seq, hash and signature)
    and the pinned key, for a witness kept elsewhere; `ledger verify` on this host cannot
    catch an attacker who rewrites every copy of the tip here."""
    tip = read_tip(obj.config.home)
    if isinstance(tip, str):
        raise OneseekError(tip, ["restore ledger.tip from a copy, or wait for the next event"])
    if tip is None:
        raise OneseekError(
            "no ledger tip yet: ledger.tip is written at the first ledger event",
            ["start oneseekd, or submit a request, then ask again"],
        )
    pinned = pinned_key_id(obj.config.home)
    data = {**asdict(tip), "pinned_key_id": pinned}
    if as_json:
        emit_json(data)
        return
    click.echo(f"seq {tip.seq}")
    click.echo(f"hash {tip.hash}")
    click.echo(f"signature {tip.signature}")
    click.echo(f"key_id {tip.key_id}")
    click.echo(f"at {tip.at}")
    click.echo(f"pinned_key_id {pinned}")
