"""oneseekctl runs / show: light (oneseekd/cli/read.py), no SQLAlchemy on a SQLite home."""

from __future__ import annotations

from typing import Any

import click

from oneseekd.certify.gate import interval_notes, not_current_note
from oneseekd.certify.layout import current_summary, run_dna, run_gate
from oneseekd.cli import gain, runinfo
from oneseekd.cli.context import Context, emit_json, json_option
from oneseekd.cli.display import columns, iso, shown, shown_lines, shown_table
from oneseekd.cli.names import FORMS, resolve_run
from oneseekd.cli.read import Row, open_reader
from oneseekd.cli.status import describe_progress
from oneseekd.home import HomePaths
from oneseekd.times import human_text

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
    held = (
        gain.held_out(paths, run.run_id, run.state, dna)
        if paths is not None
        else {"figures": {}, "no_figures": None}
    )
    return {
        "dna": dna,
        "current": dna is not None and dna == current,
        # certify/gate.py's verdict at certification: made_current, and the reasons if not
        "gate": gate,
        "held_back": not_current_note(gate),
        # per model: held-out loss, bits per byte and accuracy of base and trained, the gain
        # and the change in percent with the gate's interval (cli/gain.py); or why none
        "figures": held["figures"],
        "no_figures": held["no_figures"],
        "duration_s": runinfo.duration_seconds(run),
    } | columns(run, RUN_COLUMNS)


def state_text(run: Row) -> str:
    """The state, and the outcome only when it says more (`failed (interrupted)`)."""
    if run.outcome and run.outcome != run.state:
        return f"{run.state} ({run.outcome})"
    return str(run.state)


@click.command("runs")
@click.option("--limit", default=50, show_default=True, help="How many of the newest runs.")
@click.option(
    "--state",
    type=click.Choice(["queued", "running", "succeeded", "failed", "cancelled"]),
    help="Only the runs in this state.",
)
@json_option
@click.pass_obj
def runs_cmd(obj: Context, limit: int, state: str | None, as_json: bool) -> None:
    """The history of runs, newest first.

    * marks the current run; GAIN is the held-out gain in bits per byte of the run's least
    improved model, against its base (`oneseekctl show RUN` has every figure).
    """
    runs = open_reader(obj)[0].runs(limit, state)
    home = obj.config.home
    now = current_summary(home)
    listed = [run_dict(r, home, now["dna"]) for r in runs]
    if as_json:
        emit_json(listed)
        return
    if not runs:
        click.echo(
            "No runs yet. Submit one with `oneseekctl submit` or drop a request file "
            f"into {obj.config.home.requests}/"
        )
        return
    click.echo(
        shown_table(
            ["", "RUN", "STATE", "VERSION", "DNA", "MODELS", "QUEUED", "FINISHED", "GAIN"],
            [
                [
                    "*" if data["current"] else "",
                    r.run_id,
                    state_text(r),
                    r.version,
                    data["dna"] or "-",
                    ",".join(r.base_models or []),
                    human_text(r.queued_at),
                    human_text(r.finished_at),
                    gain.gain_cell(data["figures"]),
                ]
                for r, data in zip(runs, listed, strict=True)
            ],
        )
    )
    if now["dna"]:
        click.echo(f"Current (*): {shown(now['dna'])} (run {shown(now['run_id'] or '?')})")
    for r, data in zip(runs, listed, strict=True):
        line = held_back_line(data)
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
@click.argument("name", metavar="RUN")
@json_option
@click.pass_obj
def show_cmd(obj: Context, name: str, as_json: bool) -> None:
    """One run in full: settings, figures, promotions, every state change, the error.

    RUN is FORMS_HERE.

    \b
    Examples:
    oneseekctl show latest
    oneseekctl show v1.2
    oneseekctl show 318fcc --json
    """
    reader = open_reader(obj)[0]
    home = obj.config.home
    run = resolve_run(reader, home, name).run
    request = reader.request(run.request_id)
    events = reader.events(run.id)
    now = current_summary(home)
    data = run_dict(run, home, now["dna"])
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
    data["settings"] = runinfo.settings(run)
    data["tokens_per_s"] = runinfo.throughput(reader, run)
    data["promotions"] = [m | {"at": iso(m["at"])} for m in runinfo.promotions(reader, run)]
    data["events"] = [
        {"at": iso(e.at), "from": e.old_state, "to": e.new_state, "detail": e.detail}
        for e in events
    ]
    if as_json:
        emit_json(data)
        return
    _show_text(run, request, events, data)


def _show_text(run: Row, request: Row | None, events: list[Row], data: dict[str, Any]) -> None:
    click.echo(f"run {shown(run.run_id)}: {shown(state_text(run))}")
    models = ", ".join(run.base_models or [])
    click.echo(f"  models:   {shown(models)}   version: {shown(run.version)}")
    click.echo(f"  dataset:  {shown(run.dataset)}   attempts: {run.attempts}")
    if request is not None:
        click.echo(
            f"  request:  #{request.id} from {shown(request.source)}"
            + (f" ({shown(request.source_name)})" if request.source_name else "")
            + f", {shown(request.status)}"
        )
    precision = runinfo.resolved_precision(run.log_path)
    for key, values in data["settings"].items():
        if values.get("precision") == "auto" and key in precision:
            values = values | {"precision": f"auto ({precision[key]})"}
        click.echo(f"  settings: {shown(key)}: {shown(runinfo.settings_line(values))}")
    when = f"queued {human_text(run.queued_at)}"
    if run.started_at is not None:
        when += f", started {human_text(run.started_at)}"
    if run.finished_at is not None:
        when += f", finished {human_text(run.finished_at)}"
    click.echo(f"  times:    {when}")
    speed = ", ".join(
        f"{shown(k)} {v:g} tok/s" for k, v in data["tokens_per_s"].items() if v is not None
    )
    if data["duration_s"] is not None or speed:
        took = runinfo.human_duration(data["duration_s"])
        click.echo(f"  took:     {took}" + (f" ({speed})" if speed else ""))
    if data["dna"]:
        mark = " (current)" if data["current"] else ""
        click.echo(f"  dna:      {shown(data['dna'])}{mark}")
    for text in gain.lines(data):
        click.echo(f"  figures:  {text}")
    if data["dna"]:
        held = held_back_line(data)
        if held:
            click.echo(f"  gate:     {held}")
        elif data["gate"]:
            click.echo("  gate:     every model measurably beat its base on held-out bits per byte")
        for note in interval_notes(data["gate"]):
            click.echo(f"            {shown(note)}")
    for move in data["promotions"]:
        click.echo(f"  current:  {human_text(move['at'])}  {shown(runinfo.promotion_line(move))}")
    if run.log_path:
        click.echo(f"  log:      {shown(run.log_path)}   (oneseekctl logs {shown(run.run_id)})")
    progress = run.progress if isinstance(run.progress, dict) else None
    if progress:
        updated = progress.get("updated_at")
        label = "progress" if run.state == "running" else "last step"
        click.echo(f"  {label + ':':<9} {describe_progress(progress)}")
        if updated:
            click.echo(f"            as of {human_text(updated)}")
    click.echo("  history:")
    for e in events:
        moved = f"{shown(e.old_state or '-'):>9} -> {shown(e.new_state):<9}"
        click.echo(f"    {human_text(e.at)}  {moved}  {shown(e.detail or '')}")
    if run.error:
        click.echo("  error:")
        click.echo(shown_lines(run.error, "    "))


show_cmd.help = (show_cmd.help or "").replace("FORMS_HERE", FORMS)
