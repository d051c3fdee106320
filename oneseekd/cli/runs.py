"""oneseekctl runs / show: light (oneseekd/cli/read.py), no SQLAlchemy on a SQLite home."""

from __future__ import annotations

from typing import Any

import click

from oneseekd.certify.gate import interval_notes, not_current_note
from oneseekd.certify.layout import current_summary, run_dna, run_gate
from oneseekd.cli.context import Context, emit_json, json_option
from oneseekd.cli.display import columns, iso, shown, shown_lines, shown_table
from oneseekd.cli.read import Row, open_reader
from oneseekd.cli.status import describe_progress
from oneseekd.errors import RunNotFound
from oneseekd.home import HomePaths


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"


RUN_COLUMNS = (
    *("run_id", "state", "outcome", "version", "base_models", "dataset", "priority"),
    *("attempts", "pid", "cancel_requested", "error", "exit_code", "log_path", "progress"),
    *("queued_at", "started_at", "finished_at", "heartbeat_at"),
)


def run_dict(
    run: Row, paths: HomePaths | None = None, current: str | None = None
) -> dict[str, Any]:
    dna = run_dna(paths, run.run_id) if paths is not None else None
    gate = run_gate(paths, dna) if paths is not None else None
    return {
        "dna": dna,
        "current": dna is not None and dna == current,
        # certify/gate.py's verdict at certification: made_current, and the reasons if not
        "gate": gate,
        "held_back": not_current_note(gate),
    } | columns(run, RUN_COLUMNS)


@click.command("runs")
@click.option("--limit", default=50, show_default=True, help="How many of the newest runs.")
@click.option(
    "--state", type=click.Choice(["queued", "running", "succeeded", "failed", "cancelled"])
)
@json_option
@click.pass_obj
def runs_cmd(obj: Context, limit: int, state: str | None, as_json: bool) -> None:
    """The history of runs, newest first."""
    runs = open_reader(obj)[0].runs(limit, state)
    home = obj.config.home
    now = current_summary(home)
    if as_json:
        emit_json([run_dict(r, home, now["dna"]) for r in runs])
        return
    if not runs:
        click.echo(
            "No runs yet. Submit one with `oneseekctl submit` or drop a request file "
            f"into {obj.config.home.requests}/"
        )
        return
    click.echo(
        shown_table(
            ["RUN", "STATE", "VERSION", "MODELS", "QUEUED", "FINISHED", "OUTCOME"],
            [
                [
                    r.run_id,
                    r.state,
                    r.version,
                    ",".join(r.base_models or []),
                    _when(r.queued_at),
                    _when(r.finished_at),
                    r.outcome or "-",
                ]
                for r in runs
            ],
        )
    )
    if now["dna"]:
        click.echo(f"Current: {shown(now['dna'])} (run {shown(now['run_id'] or '?')})")
    for r in runs:
        line = held_back_line(run_dict(r, home, now["dna"]))
        if line:
            click.echo(f"{shown(r.run_id)} {line}")


def held_back_line(data: dict[str, Any]) -> str | None:
    """Why a certified run was not made current (the gate, docs/training.md), or None."""
    note = data.get("held_back")
    if not note:
        return None
    since = ", promoted since" if data.get("current") else ""
    return f"was not made current{since}: {shown(note)}"


@click.command("show")
@click.argument("run_id")
@json_option
@click.pass_obj
def show_cmd(obj: Context, run_id: str, as_json: bool) -> None:
    """One run in full: the request, its verdict, every state change, the error."""
    reader = open_reader(obj)[0]
    run = reader.run(run_id)
    if run is None:
        raise RunNotFound(f"no run {run_id!r}", ["list the runs with `oneseekctl runs`"])
    request = reader.request(run.request_id)
    events = reader.events(run.id)
    now = current_summary(obj.config.home)
    data = run_dict(run, obj.config.home, now["dna"])
    data["request"] = None
    if request is not None:
        data["request"] = {
            "id": request.id,
            "source": request.source,
            "source_name": request.source_name,
            "status": request.status,
            "created_at": iso(request.created_at),
            "decided_at": iso(request.decided_at),
            "payload": request.payload,
        }
    data["config"] = run.config
    data["fingerprints"] = run.fingerprints
    data["events"] = [
        {"at": iso(e.at), "from": e.old_state, "to": e.new_state, "detail": e.detail}
        for e in events
    ]
    if as_json:
        emit_json(data)
        return
    # the outcome says more than the state only when they differ (failed: interrupted, ...)
    outcome = f" ({shown(run.outcome)})" if run.outcome and run.outcome != run.state else ""
    click.echo(f"run {shown(run.run_id)}: {shown(run.state)}{outcome}")
    models = ", ".join(run.base_models or [])
    click.echo(f"  models:   {shown(models)}   version: {shown(run.version)}")
    click.echo(f"  dataset:  {shown(run.dataset)}   attempts: {run.attempts}")
    if request is not None:
        click.echo(
            f"  request:  #{request.id} from {shown(request.source)}"
            + (f" ({shown(request.source_name)})" if request.source_name else "")
            + f", {shown(request.status)}"
        )
    if data["dna"]:
        mark = " (current)" if data["current"] else ""
        click.echo(f"  dna:      {shown(data['dna'])}{mark}")
        held = held_back_line(data)
        if held:
            click.echo(f"  gate:     {held}")
        elif data["gate"]:
            click.echo("  gate:     every model measurably beat its base on held-out bits per byte")
        for note in interval_notes(data["gate"]):
            click.echo(f"            {shown(note)}")
    if run.log_path:
        click.echo(f"  log:      {shown(run.log_path)}")
    progress = run.progress if isinstance(run.progress, dict) else None
    if progress:
        when = progress.get("updated_at")
        label = "progress" if run.state == "running" else "last step"
        click.echo(f"  {label + ':':<9} {describe_progress(progress)}")
        if when:
            click.echo(f"            as of {shown(when)}")
    click.echo("  history:")
    for e in events:
        moved = f"{shown(e.old_state or '-'):>9} -> {shown(e.new_state):<9}"
        click.echo(f"    {_when(e.at)}  {moved}  {shown(e.detail or '')}")
    if run.error:
        click.echo("  error:")
        click.echo(shown_lines(run.error, "    "))
