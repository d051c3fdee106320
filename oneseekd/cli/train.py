"""oneseekctl train: CivicAI's training start (`scripts/train_dna_v2.py`), unchanged.

Takes the flags and environment CivicAI's admin panel gives that script, builds a request,
queues it through the same validator as every other door, follows the run and prints what the
admin panel parses: `Epoch i/N`, `loss: x`, and last `DNA: OneSeek-7B-Zero.v…`. Exit 0 on
success, 1 on a failed or cancelled run, 2 on a rejected request; SIGTERM or SIGINT (the admin
panel's stop) asks the daemon to cancel the run and exits 128 + the signal's number.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import click
from sqlalchemy import Engine, select

from oneseekd import queue
from oneseekd.certify.ledger import Ledger
from oneseekd.certify.publish import certified_dna
from oneseekd.cli.context import Context
from oneseekd.cli.display import shown, shown_lines
from oneseekd.db.engine import read_session
from oneseekd.db.models import ModelTraining, Run
from oneseekd.errors import OneseekError
from oneseekd.intake.accept import Intake
from oneseekd.spec.names import BY_FLAG, request_from_flags

EXIT_FAILED = 1
EXIT_REJECTED = 2
POLL_SECONDS = 0.5
TRUE = frozenset({"1", "true", "yes", "on"})


class TrainRefused(OneseekError):
    """The training start was refused before anything was queued, or by the validator."""

    exit_code = EXIT_REJECTED


@dataclass(frozen=True)
class Flag:
    """How one train_dna_v2.py flag becomes a request field: the field's path, and how the
    text after the flag converts (None: a switch that sets `value`)."""

    field: tuple[str, ...]
    convert: Callable[[str], Any] | None = None
    value: Any = None


def _comma(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _dataset(text: str) -> str:
    """`datasets/<id>` (the admin panel's form, relative to its project root) and `<id>` both
    name HOME/datasets/<id>."""
    path = text.replace("\\", "/").removeprefix("./")
    return path.removeprefix("datasets/")


# The flags that say what to train, and those read differently from train_dna_v2.py's own
# table; every other option flag CivicAI's admin panel may pass is in spec.names.FLAGS,
# which names the request field it sets (the validator then refuses, by name, an option
# the trainer does not carry out yet: nothing is ignored silently).
FLAGS: dict[str, Flag] = {
    "--dataset": Flag(("dataset",), _dataset),
    "--epochs": Flag(("epochs",), int),
    "--learning-rate": Flag(("learning_rate",), float),
    "--seed": Flag(("seed",), int),
    "--language": Flag(("language",), str),
    "--batch-size": Flag(("batch_size",), int),
    "--lora-rank": Flag(("lora", "r"), int),
    "--lora-alpha": Flag(("lora", "alpha"), int),
    "--dropout": Flag(("lora", "dropout"), float),
    "--target-modules": Flag(("lora", "target_modules"), _comma),
    "--max-seq-length": Flag(("max_seq_len",), int),
    "--gradient-accumulation-steps": Flag(("gradient_accumulation_steps",), int),
    "--no-gradient-checkpointing": Flag(("gradient_checkpointing",), None, False),
}
UNSUPPORTED_PREFIXES = ("--deepspeed-",)  # --deepspeed-stage, --deepspeed-config, ...


def _set(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for part in path[:-1]:
        data = data.setdefault(part, {})
    data[path[-1]] = value


def build_request(argv: list[str], env: Mapping[str, str], models_dir: Path) -> dict[str, Any]:
    """The request train_dna_v2.py's argv and environment describe; every problem at once."""
    data: dict[str, Any] = {}
    problems: list[str] = []
    unsupported: list[str] = []
    models: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, rest = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        inline: str | None = rest if eq else None
        i += 1
        if name == "--base-models":
            while i < len(argv) and not argv[i].startswith("--"):
                models += _comma(argv[i])
                i += 1
            continue
        if name not in FLAGS and name in BY_FLAG:  # the run spec's options
            takes_value = BY_FLAG[name].switch is None
            if takes_value and inline is None and i < len(argv):
                inline, i = argv[i], i + 1
            fields, more = request_from_flags([(name, inline)])
            data.update(fields)
            problems += more
            continue
        if name.startswith(UNSUPPORTED_PREFIXES):
            unsupported.append(name)
            if inline is None and i < len(argv) and not argv[i].startswith("--"):
                i += 1  # its value, if it has one
            continue
        flag = FLAGS.get(name)
        if flag is None:
            problems.append(f"unknown argument {arg!r}")
            continue
        if flag.convert is None:
            _set(data, flag.field, flag.value)
            continue
        if inline is None:
            if i >= len(argv):
                problems.append(f"{name} needs a value")
                continue
            inline, i = argv[i], i + 1
        try:
            _set(data, flag.field, flag.convert(inline))
        except ValueError:
            problems.append(f"{name} {inline!r} is not a valid value")
    if unsupported:
        problems.append(
            f"oneseekd does not support {', '.join(unsupported)} yet; leave "
            f"{'it' if len(unsupported) == 1 else 'them'} out (nothing is ignored silently)"
        )
    models = models or _comma(env.get("BASE_MODELS", ""))
    if models:
        data["base_models"] = models
    if env.get("RUN_ID"):
        data["run_id"] = env["RUN_ID"]
    if env.get("USE_DDP", "").strip().lower() in TRUE:
        data["sharding"] = "ddp"
    given = env.get("MODELS_DIR")
    if given and Path(given).expanduser().resolve() != models_dir.resolve():
        problems.append(
            f"MODELS_DIR={given} is not this home's models folder {models_dir}; "
            "run with --home (or ONESEEK_HOME) set to the folder that holds it"
        )
    if problems:
        raise TrainRefused("the training start was refused", problems)
    return data


class _Stop:
    """SIGTERM/SIGINT: only a flag here; the loop cancels the run."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def __call__(self, signum: int, _frame: FrameType | None) -> None:
        self.signal = signum


@click.command(
    "train",
    context_settings={"ignore_unknown_options": True, "help_option_names": ["-h", "--help"]},
)
@click.argument("argv", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def train_cmd(obj: Context, argv: tuple[str, ...]) -> None:
    """CivicAI's `scripts/train_dna_v2.py`: its flags, BASE_MODELS and RUN_ID; queues the run,
    follows it printing `Epoch i/N`, `loss: x` and `DNA: ...`; a kill cancels it. With
    --dry-run: what would run (as `submit --dry-run`), nothing queued, no daemon needed."""
    if "--dry-run" in argv:
        from oneseekd.cli.dryrun import dry_run, show

        rest = [a for a in argv if a != "--dry-run"]
        show(
            dry_run(
                obj, json.dumps(build_request(rest, os.environ, obj.config.home.models)).encode()
            ),
            False,
        )
        return
    stop = _Stop()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    home = obj.config.home
    data = build_request(list(argv), os.environ, home.models)
    if not obj.daemon().held:
        raise OneseekError(
            f"no oneseekd serves {home.root}: nothing was queued",
            [
                "start it (`systemctl start oneseekd`, or `oneseekd --home "
                f"{home.root}`), then run this again"
            ],
        )
    engine = obj.engine()
    verdict = Intake(
        engine, home, host=obj.config.catalog.host, cpu_processes=obj.config.trainer.cpu_processes
    ).take_bytes(json.dumps(data).encode(), source="submit", source_name="train")
    if verdict.status != "queued" or verdict.run_id is None:
        raise TrainRefused("the request was refused", verdict.problems)
    click.echo(f"Queued as run {verdict.run_id}")
    sys.exit(_follow(obj, engine, verdict.run_id, stop))


def _follow(obj: Context, engine: Engine, run_id: str, stop: _Stop) -> int:
    shown_progress: tuple[Any, ...] = ()
    shown_epochs: set[tuple[str, Any]] = set()  # (model, epoch) that had a line
    while True:
        if stop.signal is not None:
            queue.request_cancel(engine, run_id, ledger=Ledger.for_home(engine, obj.config.home))
            click.echo(f"Cancelled run {run_id} ({signal.Signals(stop.signal).name})", err=True)
            return 128 + stop.signal
        with read_session(engine) as session:
            run = session.scalars(select(Run).where(Run.run_id == run_id)).one()
            state, progress, error, pk = run.state, run.progress or {}, run.error, run.id
        line = _progress_line(progress)
        if line and line[0] != shown_progress:
            shown_progress = line[0]
            shown_epochs.add(line[0][:2])
            click.echo(line[1])
        if state == "succeeded":
            # an epoch that ended between two looks still gets its line: the admin panel's
            # progress parser counts every `Epoch i/N`
            _missed_epochs(engine, pk, shown_epochs)
            click.echo(f"DNA: {certified_dna(engine, pk)}")
            return 0
        if state in ("failed", "cancelled"):
            # the cause first, on the Error line itself; the end of the run's log after it
            cause, _, rest = (error or "").strip().partition("\n")
            click.echo(
                f"Error: run {run_id} {state}" + (f": {shown(cause)}" if cause else ""), err=True
            )
            if rest:
                click.echo(shown_lines(rest, "  "), err=True)
            return EXIT_FAILED
        if not obj.daemon().held:
            click.echo(
                f"Error: oneseekd stopped serving {obj.config.home.root}; run {run_id} goes "
                "on when it starts again (follow it with `oneseekctl show`)",
                err=True,
            )
            return EXIT_FAILED
        time.sleep(POLL_SECONDS)


def _missed_epochs(engine: Engine, run_pk: int, shown_epochs: set[tuple[str, Any]]) -> None:
    with read_session(engine) as session:
        rows = session.scalars(
            select(ModelTraining)
            .where(ModelTraining.run_id == run_pk)
            .order_by(ModelTraining.position)
        ).all()
        trained = [(r.model_key, list(r.train_losses or [])) for r in rows]
    for index, (key, losses) in enumerate(trained, start=1):
        for epoch, loss in enumerate(losses, start=1):
            if (key, epoch) not in shown_epochs:
                click.echo(
                    f"Epoch {epoch}/{len(losses)}  model {index}/{len(trained)}  {shown(key)}  "
                    f"loss: {loss:.5f}"
                )


def _progress_line(progress: dict[str, Any]) -> tuple[tuple[Any, ...], str] | None:
    """One line per progress update, in the form CivicAI's parsers read."""
    if not progress.get("model") or not progress.get("epochs"):
        return None
    key = (progress["model"], progress.get("epoch"), progress.get("step"))
    parts = [f"Epoch {progress.get('epoch')}/{progress.get('epochs')}"]
    if progress.get("models"):
        parts.append(f"model {progress.get('model_index')}/{progress['models']}")
    parts.append(shown(progress["model"]))
    if progress.get("steps"):
        parts.append(f"step {progress.get('step')}/{progress['steps']}")
    loss = progress.get("loss")
    if isinstance(loss, int | float):
        parts.append(f"loss: {loss:.5f}")
    return key, "  ".join(parts)
