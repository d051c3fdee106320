"""oneseekctl submit / runs / show / cancel."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click
from sqlalchemy import select

from oneseekd import queue
from oneseekd.certify.layout import current_summary, run_dna
from oneseekd.certify.ledger import Ledger
from oneseekd.cli.context import Context, emit_json
from oneseekd.cli.display import iso, shown, shown_lines, shown_table
from oneseekd.config import HomePaths
from oneseekd.db.engine import read_session
from oneseekd.db.models import Run, RunEvent, TrainingRequest
from oneseekd.errors import OneseekError
from oneseekd.intake.accept import Intake

# flag -> request field
_FLAGS = {
    "dataset": "dataset",
    "version": "version",
    "epochs": "epochs",
    "batch_size": "batch_size",
    "learning_rate": "learning_rate",
    "seed": "seed",
    "max_seq_len": "max_seq_len",
    "request_id": "request_id",
    "priority": "priority",
}
_LORA_FLAGS = {"lora_r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout"}


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"


def build_request(
    args: tuple[str, ...],
    base_models: tuple[str, ...],
    options: dict[str, Any],
    env: dict[str, str],
) -> tuple[bytes, str | None]:
    """The request file (if any) with the flags laid over it, as the bytes a file would hold."""
    files = [a for a in args if a.endswith(".json") or Path(a).is_file()]
    extra = [a for a in args if a not in files]
    if len(files) > 1:
        raise OneseekError("submit takes one request file", [f"got {', '.join(files)}"])
    if extra and not base_models:
        raise OneseekError(
            f"unexpected argument {extra[0]!r}", ["name base models with --base-models A B ..."]
        )
    if files:
        path = Path(files[0])
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise OneseekError(f"cannot read {path}: {exc.strerror}") from exc
        if not any(options.values()) and not base_models and not env.get("BASE_MODELS"):
            return raw, path.name
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return raw, path.name  # refused by the intake with the exact reason
        if not isinstance(data, dict):
            return raw, path.name
    else:
        data = {}
    models = [*base_models, *extra]
    if models:
        data["base_models"] = [m for name in models for m in name.split(",") if m]
    elif "base_models" not in data and "baseModels" not in data and env.get("BASE_MODELS"):
        data["base_models"] = [m.strip() for m in env["BASE_MODELS"].split(",") if m.strip()]
    for flag, field in _FLAGS.items():
        if options.get(flag) is not None:
            data[field] = options[flag]
    lora = {
        key: options[flag] for flag, key in _LORA_FLAGS.items() if options.get(flag) is not None
    }
    if options.get("target_modules"):
        lora["target_modules"] = [m for m in options["target_modules"].split(",") if m]
    if lora:
        existing = data.get("lora")
        data["lora"] = {**(existing if isinstance(existing, dict) else {}), **lora}
    return json.dumps(data).encode(), Path(files[0]).name if files else None


@click.command("submit")
@click.argument("args", nargs=-1)
@click.option(
    "--base-models",
    "base_models",
    multiple=True,
    help="Base models to train (A B ... or A,B). Env fallback: BASE_MODELS.",
)
@click.option("--dataset", help="Dataset file under HOME/datasets/.")
@click.option("--version", help="MAJOR.MINOR; the next free one when omitted.")
@click.option("--epochs", type=int)
@click.option("--batch-size", type=int)
@click.option("--learning-rate", type=float)
@click.option("--seed", type=int)
@click.option("--max-seq-len", type=int)
@click.option("--lora-r", type=int)
@click.option("--lora-alpha", type=int)
@click.option("--lora-dropout", type=float)
@click.option("--target-modules", help="Comma-separated LoRA target modules.")
@click.option("--request-id", help="Idempotency key: the same key is never queued twice.")
@click.option("--priority", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.pass_obj
def submit_cmd(
    obj: Context,
    /,
    args: tuple[str, ...],
    base_models: tuple[str, ...],
    as_json: bool,
    **options: Any,
) -> None:
    """Validate a request (FILE.json and/or flags) and queue it, exactly as a dropped file."""
    raw, name = build_request(args, base_models, options, dict(os.environ))
    obj.fresh_catalog()
    verdict = Intake(
        obj.engine(),
        obj.config.home,
        host=obj.config.catalog.host,
        cpu_processes=obj.config.trainer.cpu_processes,
    ).take_bytes(raw, source="submit", source_name=name)
    if as_json:
        emit_json(
            {
                "status": verdict.status,
                "request": verdict.request_pk,
                "run_id": verdict.run_id,
                "duplicate_of": verdict.duplicate_of,
                "problems": verdict.problems,
            }
        )
    elif verdict.status == "queued":
        click.echo(f"Queued as run {verdict.run_id} (request #{verdict.request_pk}).")
    elif verdict.status == "duplicate":
        click.echo(f"Not queued again: {shown(verdict.problems[0])}.")
    if verdict.status == "rejected":
        if not as_json:
            raise OneseekError("the request was refused", verdict.problems)
        raise SystemExit(1)


def run_dict(
    run: Run, paths: HomePaths | None = None, current: str | None = None
) -> dict[str, Any]:
    dna = run_dna(paths, run.run_id) if paths is not None else None
    return {
        "dna": dna,
        "current": dna is not None and dna == current,
        "run_id": run.run_id,
        "state": run.state,
        "outcome": run.outcome,
        "version": run.version,
        "base_models": run.base_models,
        "dataset": run.dataset,
        "priority": run.priority,
        "attempts": run.attempts,
        "pid": run.pid,
        "cancel_requested": run.cancel_requested,
        "error": run.error,
        "exit_code": run.exit_code,
        "log_path": run.log_path,
        "progress": run.progress,
        "queued_at": iso(run.queued_at),
        "started_at": iso(run.started_at),
        "finished_at": iso(run.finished_at),
        "heartbeat_at": iso(run.heartbeat_at),
    }


@click.command("runs")
@click.option("--limit", default=50, show_default=True, help="How many of the newest runs.")
@click.option(
    "--state", type=click.Choice(["queued", "running", "succeeded", "failed", "cancelled"])
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.pass_obj
def runs_cmd(obj: Context, limit: int, state: str | None, as_json: bool) -> None:
    """The history of runs, newest first."""
    with read_session(obj.engine()) as session:
        query = select(Run).order_by(Run.id.desc()).limit(limit)
        if state:
            query = query.where(Run.state == state)
        runs = list(session.scalars(query))
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


@click.command("show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.pass_obj
def show_cmd(obj: Context, run_id: str, as_json: bool) -> None:
    """One run in full: the request, its verdict, every state change, the error."""
    with read_session(obj.engine()) as session:
        run = queue.find_run(session, run_id)
        request = session.get_one(TrainingRequest, run.request_id)
        events = list(
            session.scalars(select(RunEvent).where(RunEvent.run_id == run.id).order_by(RunEvent.id))
        )
    now = current_summary(obj.config.home)
    data = run_dict(run, obj.config.home, now["dna"])
    data["request"] = {
        "id": request.id,
        "source": request.source,
        "source_name": request.source_name,
        "status": request.status,
        "created_at": iso(request.created_at),
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
    outcome = f" ({shown(run.outcome)})" if run.outcome else ""
    click.echo(f"run {shown(run.run_id)}: {shown(run.state)}{outcome}")
    click.echo(f"  models:   {shown(', '.join(run.base_models))}   version: {shown(run.version)}")
    click.echo(f"  dataset:  {shown(run.dataset)}   attempts: {run.attempts}")
    click.echo(
        f"  request:  #{request.id} from {shown(request.source)}"
        + (f" ({shown(request.source_name)})" if request.source_name else "")
        + f", {shown(request.status)}"
    )
    if data["dna"]:
        mark = " (current)" if data["current"] else ""
        click.echo(f"  dna:      {shown(data['dna'])}{mark}")
    if run.log_path:
        click.echo(f"  log:      {shown(run.log_path)}")
    if run.progress:
        click.echo(f"  progress: {json.dumps(run.progress)}")
    click.echo("  history:")
    for e in events:
        moved = f"{shown(e.old_state or '-'):>9} -> {shown(e.new_state):<9}"
        click.echo(f"    {_when(e.at)}  {moved}  {shown(e.detail or '')}")
    if run.error:
        click.echo("  error:")
        click.echo(shown_lines(run.error, "    "))


@click.command("cancel")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.pass_obj
def cancel_cmd(obj: Context, run_id: str, as_json: bool) -> None:
    """Cancel a queued run now, or ask a running one to stop at its next step."""
    ledger = Ledger.for_home(obj.engine(), obj.config.home)
    result = queue.request_cancel(obj.engine(), run_id, ledger=ledger)
    if as_json:
        emit_json({"run_id": result.run_id, "state": result.state, "immediate": result.immediate})
    elif result.immediate:
        click.echo(f"Cancelled run {result.run_id} (it was still queued).")
    else:
        click.echo(
            f"Asked run {result.run_id} to stop at its next step; the daemon stops it "
            "for good after the grace period."
        )
