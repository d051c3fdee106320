"""oneseekctl submit / cancel: the commands that write, through the intake and the queue.

The intake, the queue and the ledger (SQLAlchemy, pydantic) are imported when a command runs,
not when it is loaded: `submit --help` answers as fast as `--version`."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from oneseekd.cli.context import Context, emit_json, json_option
from oneseekd.cli.display import shown
from oneseekd.cli.flaghelp import ALIASES, FLAG_HELP, REFUSED, FlagHelp
from oneseekd.cli.names import FORMS
from oneseekd.errors import OneseekError
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


def _help(flag: str) -> dict[str, Any]:
    """The click settings that give a flag its text, default and choices (cli/flaghelp.py);
    the option's own default stays None: an unset flag leaves the request file's value."""
    info = FLAG_HELP.get(flag)
    if info is None:
        return {}
    text = info.text if info.default is None else f"{info.text}  [default: {info.default}]"
    settings: dict[str, Any] = {"help": text}
    if info.choices is not None:
        settings["type"] = click.Choice(info.choices)
    return settings


def _admin_options(command: Callable[..., Any]) -> Callable[..., Any]:
    for f in reversed(ADMIN_FLAGS):
        if f.flag in _OWN_FLAGS:
            continue
        # the other spellings and the refused DeepSpeed flags are taken, never listed
        hidden = f.flag in ALIASES or f.flag in REFUSED
        info = FLAG_HELP.get(f.flag, FlagHelp(f"sets {f.field} (docs/training.md)"))
        settings = _help(f.flag) or {"help": info.text}
        if f.switch is not None:
            command = click.option(f.flag, is_flag=True, default=None, hidden=hidden, **settings)(
                command
            )
        else:
            settings.setdefault("type", f.kind)
            command = click.option(f.flag, hidden=hidden, **settings)(command)
    return command


_EPILOG = (
    "train_dna_v2.py's other spellings are taken too: "
    + ", ".join(ALIASES)
    + ' (docs/training.md, "Options"). Every field of a request file is in '
    "docs/interface.md, section 4."
)


@click.command("submit", epilog=_EPILOG)
@click.argument("args", nargs=-1, metavar="[FILE.json]")
@click.option(
    "--base-models",
    "base_models",
    multiple=True,
    help="Base models to train (A B ... or A,B), as `oneseekctl resolve` names them. "
    "Env fallback: BASE_MODELS.",
)
@click.option("--dataset", **_help("--dataset"))
@click.option("--version", **_help("--version"))
@click.option("--epochs", type=int, **_help("--epochs"))
@click.option("--batch-size", type=int, **_help("--batch-size"))
@click.option("--learning-rate", type=float, **_help("--learning-rate"))
@click.option("--seed", type=int, **_help("--seed"))
@click.option("--max-seq-len", type=int, **_help("--max-seq-len"))
@click.option("--lora-r", type=int, **_help("--lora-r"))
@click.option("--lora-alpha", type=int, **_help("--lora-alpha"))
@click.option("--lora-dropout", type=float, **_help("--lora-dropout"))
@click.option("--target-modules", **_help("--target-modules"))
@click.option("--request-id", **_help("--request-id"))
@click.option("--priority", type=int, **_help("--priority"))
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

    Flags lay their fields over the file's. Every problem is listed at once, and the command
    exits 1 when the request is refused.

    \b
    Examples:
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
    from oneseekd.intake.accept import Intake

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
                "download": verdict.download,
            }
        )
    elif verdict.status == "waiting":
        click.echo(
            f"Waiting for {shown(str(verdict.waiting_for))} (request #{verdict.request_pk}): "
            "the run is queued once the model is in the catalog, or the request is refused "
            "with the download's reason. Follow it with `oneseekctl status`."
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
    exits 0 saying so (like `systemctl stop` of a stopped unit). A download (`oneseekctl
    pull`) is cancelled by its id, download-N, or by its repository ORG/NAME while it is
    pending or running; what arrived is kept for a later pull.
    """
    if is_download(name):
        cancel_download(obj, name, as_json)
        return
    from oneseekd import queue
    from oneseekd.certify.ledger import Ledger
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


def is_download(name: str) -> bool:
    """download-N, or a repository ORG/NAME: no run is named with a '/'."""
    return name.startswith("download-") or "/" in name


def cancel_download(obj: Context, name: str, as_json: bool) -> None:
    """A pending download is cancelled at once; a running one is asked to stop (it does
    within a second, keeping what arrived)."""
    from sqlalchemy import or_, select, update

    from oneseekd.db.engine import write_session
    from oneseekd.db.models import ModelDownload, utcnow

    number = name.removeprefix("download-")
    with write_session(obj.engine()) as session:
        query = select(ModelDownload).order_by(ModelDownload.id.desc())
        if name.startswith("download-"):
            if not number.isdigit():
                raise OneseekError(
                    f"{name!r} names no download", ["write download-N, N its id in `status`"]
                )
            query = query.where(ModelDownload.id == int(number))
        else:
            repo = name.removeprefix("hf:").partition("@")[0]
            query = query.where(
                ModelDownload.repository == repo,
                or_(ModelDownload.status == "pending", ModelDownload.status == "running"),
            )
        row = session.scalars(query.limit(1)).first()
        if row is None:
            raise OneseekError(
                f"no download {name}" + ("" if number.isdigit() else " pending or running"),
                ["`oneseekctl status` lists the downloads in progress"],
            )
        ended = row.status not in ("pending", "running")
        immediate = False
        if not ended:
            immediate = bool(
                session.execute(
                    update(ModelDownload)
                    .where(ModelDownload.id == row.id, ModelDownload.status == "pending")
                    .values(
                        status="cancelled",
                        cancel_requested=True,
                        finished_at=utcnow(),
                        error="cancelled before it started",
                    )
                ).rowcount  # type: ignore[attr-defined]
            )
            if not immediate:
                session.execute(
                    update(ModelDownload)
                    .where(ModelDownload.id == row.id)
                    .values(cancel_requested=True)
                )
        row_id, repository, status = row.id, row.repository, row.status
    label = f"download-{row_id} ({shown(repository)})"
    if as_json:
        emit_json(
            {
                "download": row_id,
                "name": f"download-{row_id}",
                "state": "cancelled" if immediate else status,
                "immediate": immediate,
                "ended": ended,
            }
        )
    elif ended:
        click.echo(f"Download {label} had already ended ({shown(status)}).")
    elif immediate:
        click.echo(f"Cancelled {label} (it had not started).")
    else:
        click.echo(f"Asked {label} to stop; it does within a second, keeping what arrived.")


cancel_cmd.help = (cancel_cmd.help or "").replace("FORMS_HERE", FORMS)
