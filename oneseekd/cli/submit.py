"""oneseekctl submit / cancel: the commands that write, through the intake and the queue."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from oneseekd import queue
from oneseekd.certify.ledger import Ledger
from oneseekd.cli.context import Context, emit_json, json_option
from oneseekd.cli.display import shown
from oneseekd.cli.names import FORMS
from oneseekd.errors import OneseekError
from oneseekd.intake.accept import Intake
from oneseekd.spec.names import FLAGS as ADMIN_FLAGS
from oneseekd.spec.names import request_from_flags

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
    pairs = [
        (f.flag, None if f.switch is not None else str(options[name]))
        for name, f in _ADMIN.items()
        if options.get(name) is not None and options.get(name) is not False
    ]
    fields, problems = request_from_flags(pairs)
    if problems:  # click has typed the values; kept for a flag table out of step
        raise OneseekError("the flags were refused", problems)
    data.update(fields)
    lora = {
        key: options[flag] for flag, key in _LORA_FLAGS.items() if options.get(flag) is not None
    }
    if options.get("target_modules"):
        lora["target_modules"] = [m for m in options["target_modules"].split(",") if m]
    if lora:
        existing = data.get("lora")
        data["lora"] = {**(existing if isinstance(existing, dict) else {}), **lora}
    return json.dumps(data).encode(), Path(files[0]).name if files else None


# the problems of a request without a file, worded with the flags that fix them
_FLAG_FIXES = {
    "base_models is required": "base_models is required: name them with --base-models A B "
    "(or A,B; BASE_MODELS=a,b in the environment)",
    "dataset is required": "dataset is required: name a file under HOME/datasets/ with "
    "--dataset FILE",
}


# the options of the run spec as train_dna_v2.py's flags (oneseekd/spec/names.py), beside
# the flags submit had before; each sets its request field, which the validator then judges
_OWN_FLAGS = {
    *("--dataset", "--version", "--epochs", "--batch-size", "--learning-rate", "--seed"),
    *("--max-seq-len", "--lora-r", "--lora-alpha", "--lora-dropout", "--target-modules"),
    *("--request-id", "--priority", "--json", "--base-models"),
}
_ADMIN = {
    f.flag.removeprefix("--").replace("-", "_"): f for f in ADMIN_FLAGS if f.flag not in _OWN_FLAGS
}


def _admin_options(command: Callable[..., Any]) -> Callable[..., Any]:
    for f in reversed(ADMIN_FLAGS):
        if f.flag in _OWN_FLAGS:
            continue
        if f.switch is not None:
            command = click.option(
                f.flag, is_flag=True, default=None, help=f"sets {f.field} (docs/training.md)"
            )(command)
        else:
            command = click.option(f.flag, type=f.kind, help=f"sets {f.field} (docs/training.md)")(
                command
            )
    return command


@click.command("submit")
@click.argument("args", nargs=-1, metavar="[FILE.json]")
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
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print what would run (records, tokens, labels, predicted memory); queue nothing.",
)
@_admin_options
@json_option
@click.pass_obj
def submit_cmd(
    obj: Context,
    /,
    args: tuple[str, ...],
    base_models: tuple[str, ...],
    as_json: bool,
    dry_run: bool,
    **options: Any,
) -> None:
    """Validate a request (FILE.json and/or flags) and queue it, exactly as a dropped file.

    \b
    oneseekctl submit request.json
    oneseekctl submit --base-models SmolLM2-135M-Instruct --dataset civic.jsonl --epochs 1
    oneseekctl submit request.json --dry-run   (what would run; nothing queued)
    """
    env = dict(os.environ)
    if not args and not base_models and not env.get("BASE_MODELS") and not any(options.values()):
        raise OneseekError(
            "nothing to submit",
            [
                "give a request file: oneseekctl submit FILE.json",
                "or flags: oneseekctl submit --base-models A B --dataset FILE [--epochs N ...]",
            ],
        )
    raw, name = build_request(args, base_models, options, env)
    if dry_run:
        from oneseekd.cli.dryrun import dry_run as report_of
        from oneseekd.cli.dryrun import show

        show(report_of(obj, raw), as_json)
        return
    # a home prepared for the daemon (models/ in place) gets its database here; a folder
    # without models/ is more likely a mistyped --home, and is refused as not a home
    obj.create_database = obj.config.home.models.is_dir()
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
            problems = (
                verdict.problems if name else [_FLAG_FIXES.get(p, p) for p in verdict.problems]
            )
            raise OneseekError("the request was refused", problems)
        raise SystemExit(1)


@click.command("cancel")
@click.argument("name", metavar="RUN")
@json_option
@click.pass_obj
def cancel_cmd(obj: Context, name: str, as_json: bool) -> None:
    """Cancel a queued run now, or ask a running one to stop at its next step.

    RUN is FORMS_HERE. A run that has ended already is left as it is, and the command
    exits 0 saying so (like `systemctl stop` of a stopped unit).
    """
    from oneseekd.cli.names import resolve_run
    from oneseekd.cli.read import open_reader
    from oneseekd.db.models import FINISHED_STATES

    reader = open_reader(obj)[0]
    run = resolve_run(reader, obj.config.home, name).run
    result = None
    if run.state not in FINISHED_STATES:
        ledger = Ledger.for_home(obj.engine(), obj.config.home)
        try:
            result = queue.request_cancel(obj.engine(), run.run_id, ledger=ledger)
        except OneseekError:
            # it ended between the look and the cancel: as if it had ended before
            ended = reader.run(run.run_id)
            if ended is None or ended.state not in FINISHED_STATES:
                raise
            run = ended
    if result is None:
        if as_json:
            emit_json({"run_id": run.run_id, "state": run.state, "immediate": False, "ended": True})
        else:
            click.echo(f"Run {shown(run.run_id)} had already ended ({shown(run.state)}).")
        return
    if as_json:
        emit_json(
            {
                "run_id": result.run_id,
                "state": result.state,
                "immediate": result.immediate,
                "ended": False,
            }
        )
    elif result.immediate:
        click.echo(f"Cancelled run {result.run_id} (it was still queued).")
    else:
        click.echo(
            f"Asked run {result.run_id} to stop at its next step; the daemon stops it "
            "for good after the grace period."
        )


cancel_cmd.help = (cancel_cmd.help or "").replace("FORMS_HERE", FORMS)
