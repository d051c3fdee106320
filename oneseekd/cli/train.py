"""oneseekctl train: CivicAI's training start (`scripts/train_dna_v2.py`), unchanged.

Takes the flags and environment CivicAI's admin panel gives that script, builds a request,
queues it through the same validator as every other door, follows the run and prints what the
admin panel parses: `Epoch i/N` (counted over the whole run, model x epoch, so it never runs
backwards), `loss: x` (also at each epoch's end), `Not made current: <reason>` when the gate
held the run back (matched by none of the panel's patterns), and last `DNA:
OneSeek-7B-Zero.v…` (examples/civicai/README.md). Exit 0 on
success, 1 on a failed or cancelled run, 2 on a rejected request; SIGTERM or SIGINT (the admin
panel's stop) asks the daemon to cancel the run and exits 128 + the signal's number.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import click

from oneseekd.cli.context import Context
from oneseekd.cli.display import shown, shown_lines
from oneseekd.cli.trainhelp import TrainCommand
from oneseekd.errors import OneseekError
from oneseekd.spec.names import BY_FLAG, request_from_flags

if TYPE_CHECKING:  # `train --help` imports none of the machinery: it is imported to train
    from sqlalchemy import Engine

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


KNOWN_FLAGS = tuple(sorted({*FLAGS, *BY_FLAG, "--base-models", "--dry-run"}))


def did_you_mean(name: str) -> str:
    """`: did you mean --epochs?` for a flag train takes by another spelling, else ""."""
    if not name.startswith("-"):
        return ""
    close = difflib.get_close_matches(name, KNOWN_FLAGS, n=2, cutoff=0.75)
    offered = [c for c in close if not c.startswith((*UNSUPPORTED_PREFIXES, "--use-deepspeed"))]
    if offered:
        return f": did you mean {' or '.join(offered)}?"
    return " (`oneseekctl train --help` lists the flags)"


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
            problems.append(f"unknown argument {arg!r}" + did_you_mean(name))
            if name.startswith("--") and inline is None and i < len(argv):
                i += 0 if argv[i].startswith("--") else 1  # its value, not another problem
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


# --- `oneseekctl train --help` -------------------------------------------------------------------
class _Stop:
    """SIGTERM/SIGINT: only a flag here; the loop cancels the run."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def __call__(self, signum: int, _frame: FrameType | None) -> None:
        self.signal = signum


@click.command(
    "train",
    cls=TrainCommand,
    context_settings={"ignore_unknown_options": True, "help_option_names": ["-h", "--help"]},
)
@click.argument("argv", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def train_cmd(obj: Context, argv: tuple[str, ...]) -> None:
    """Queue a run from CivicAI's train_dna_v2.py flags and follow it.

    Takes the flags and environment CivicAI's admin panel gives scripts/train_dna_v2.py,
    queues the run through the same validator as `submit`, and follows it, printing `Epoch
    i/N`, `loss: x` and last `DNA: ...` (examples/civicai/README.md). Exit 0 on success, 1 on
    a failed or cancelled run, 2 on a refused request; a SIGTERM or Ctrl-C cancels the run.
    With --dry-run: what would run, nothing queued, no daemon needed."""
    from oneseekd.cli.read import full_machinery

    full_machinery()  # here, not at import: `train --help` stays light
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
    from oneseekd.intake.accept import Intake

    engine = obj.engine()
    verdict = Intake(
        engine, home, host=obj.config.catalog.host, cpu_processes=obj.config.trainer.cpu_processes
    ).take_bytes(json.dumps(data).encode(), source="submit", source_name="train")
    run_id = verdict.run_id
    if verdict.status == "waiting":
        run_id = _await_download(obj, engine, verdict, stop)
    elif verdict.status != "queued":
        raise TrainRefused("the request was refused", verdict.problems)
    assert run_id is not None
    click.echo(f"Queued as run {run_id}")
    sys.exit(_follow(obj, engine, run_id, stop))


def _await_download(obj: Context, engine: Engine, verdict: Any, stop: _Stop) -> str:
    """A request naming `hf:ORG/NAME` whose model is not here: print the download's progress
    until the daemon decides the request; its run's id, or the refusal (the download's reason).
    A stop meanwhile withdraws the request (the download goes on, for a later request)."""
    from oneseekd.cli.pull import follow_request

    click.echo(f"Waiting for {shown(str(verdict.waiting_for))} (request #{verdict.request_pk})")
    status, run_id, problems = follow_request(
        engine,
        verdict.request_pk,
        lambda: stop.signal is not None,
        alive=lambda: obj.daemon().held,
    )
    if status == "queued" and run_id is not None:
        return run_id
    if status == "pending" and stop.signal is not None:
        from oneseekd.intake.accept import Intake

        name = signal.Signals(stop.signal).name
        withdrawn = Intake(engine, obj.config.home, host=obj.config.catalog.host).withdraw(
            verdict.request_pk, f"withdrawn by `oneseekctl train`'s stop ({name})"
        )
        if withdrawn:
            click.echo(
                f"Withdrew request #{verdict.request_pk} ({name}); {verdict.waiting_for} goes on",
                err=True,
            )
            sys.exit(128 + stop.signal)
        # decided meanwhile: a queued run is cancelled by _follow, which sees the stop
        status, run_id, problems = follow_request(
            engine, verdict.request_pk, lambda: False, alive=lambda: True
        )
        if status == "queued" and run_id is not None:
            return run_id
    if status == "pending":
        raise OneseekError(
            f"oneseekd stopped serving {obj.config.home.root}; request #{verdict.request_pk} "
            f"still waits for {verdict.waiting_for}",
            ["it goes on when the daemon starts again (follow it with `oneseekctl status`)"],
        )
    raise TrainRefused("the request was refused", problems)


def _follow(obj: Context, engine: Engine, run_id: str, stop: _Stop) -> int:
    from sqlalchemy import select

    from oneseekd import queue
    from oneseekd.certify.gate import not_current_note
    from oneseekd.certify.layout import run_dna, run_gate
    from oneseekd.certify.ledger import Ledger
    from oneseekd.certify.publish import certified_dna
    from oneseekd.db.engine import read_session
    from oneseekd.db.models import Run

    lines: EpochLines | None = None
    while True:
        if stop.signal is not None:
            queue.request_cancel(engine, run_id, ledger=Ledger.for_home(engine, obj.config.home))
            click.echo(f"Cancelled run {run_id} ({signal.Signals(stop.signal).name})", err=True)
            return 128 + stop.signal
        with read_session(engine) as session:
            run = session.scalars(select(Run).where(Run.run_id == run_id)).one()
            state, progress, error, pk = run.state, run.progress or {}, run.error, run.id
            if lines is None:
                lines = EpochLines(planned_epochs(run.base_models, run.config))
        if progress.get("model_index", 1) > 1 + lines.models_flushed:
            lines.echo(lines.trained(_trained(engine, pk)))  # the models before this one
        lines.echo(lines.progress(progress))
        if state == "succeeded":
            # an epoch that ended between two looks still gets its line: the admin panel's
            # progress parser counts every `Epoch i/N`
            lines.echo(lines.trained(_trained(engine, pk)))
            held = not_current_note(run_gate(obj.config.home, run_dna(obj.config.home, run_id)))
            if held:  # certified, yet the gate kept the current model: exit 0 all the same
                click.echo(not_made_current(held))
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


def _trained(engine: Engine, run_pk: int) -> list[tuple[str, list[float]]]:
    """Each trained model of the run, in order, with its epochs' training losses."""
    from sqlalchemy import select

    from oneseekd.db.engine import read_session
    from oneseekd.db.models import ModelTraining

    with read_session(engine) as session:
        rows = session.scalars(
            select(ModelTraining)
            .where(ModelTraining.run_id == run_pk, ModelTraining.state == "trained")
            .order_by(ModelTraining.position)
        ).all()
        return [(r.model_key, list(r.train_losses or [])) for r in rows]


def planned_epochs(base_models: object, config: object) -> list[tuple[str, int]]:
    """Each model of the run, in training order, with the epochs it is set to train."""
    from oneseekd.spec import request as runspec

    keys = [str(k) for k in base_models] if isinstance(base_models, list) else []
    try:
        spec = runspec.load(config if isinstance(config, dict) else {})
    except runspec.SpecError:
        return [(k, 1) for k in keys]
    return [(k, spec.models[k].epochs if k in spec.models else 1) for k in keys]


# what the admin panel's parsers look for (docs/training.md, "What CivicAI reads"): text that
# is not one of its lines must not look like one
_PANEL_LOOKALIKES = (
    (re.compile(r"Epoch (\d+)\s*/\s*(\d+)"), r"epoch \1 of \2"),
    (re.compile(r"(loss)\s*[=:]", re.IGNORECASE), r"\1"),
    (re.compile(r"DNA\s*:"), "DNA"),
)


def not_made_current(reason: str) -> str:
    """`Not made current: <reason>`, the line for a run the gate held back, written so that
    none of the panel's patterns (Epoch i/N, loss:, DNA:) match it."""
    text = " ".join(shown(reason).split())
    for pattern, replacement in _PANEL_LOOKALIKES:
        text = pattern.sub(replacement, text)
    return f"Not made current: {text}"


class EpochLines:
    """The lines CivicAI's admin panel parses, from the run's progress: `Epoch i/N` counted
    over the whole run (model x epoch: the second model's first epoch follows the first
    model's last), so the panel's bar never runs backwards, and a `loss:` line at each
    epoch's end."""

    def __init__(self, planned: list[tuple[str, int]]) -> None:
        self.offset: dict[str, int] = {}
        self.index: dict[str, int] = {}
        total = 0
        for position, (key, epochs) in enumerate(planned, start=1):
            self.offset[key], self.index[key] = total, position
            total += epochs
        self.total = max(total, 1)
        self.models = len(planned)
        self.models_flushed = 0  # the models whose every epoch end has a line
        self.high = 0  # the highest i printed: a line never goes below it
        self.ended: set[tuple[str, int]] = set()
        self.last: tuple[Any, ...] = ()

    def echo(self, lines: list[str]) -> None:
        for line in lines:
            click.echo(line)

    def _line(self, key: str, epoch: int, rest: list[str]) -> list[str]:
        i = min(self.offset.get(key, 0) + epoch, self.total)
        if i < self.high:
            return []
        self.high = i
        model = f"model {self.index.get(key, 1)}/{self.models}"
        return ["  ".join([f"Epoch {i}/{self.total}", model, shown(key), *rest])]

    def epoch_end(self, key: str, epoch: int, loss: float) -> list[str]:
        if (key, epoch) in self.ended:
            return []
        self.ended.add((key, epoch))
        return self._line(key, epoch, ["epoch end", f"loss: {loss:.5f}"])

    def trained(self, models: list[tuple[str, list[float]]]) -> list[str]:
        """The epoch ends of the models trained so far (their rows), not yet printed."""
        out: list[str] = []
        for key, losses in models:
            for epoch, loss in enumerate(losses, start=1):
                out += self.epoch_end(key, epoch, loss)
            self.models_flushed = max(self.models_flushed, self.index.get(key, 0))
        return out

    def progress(self, p: dict[str, Any]) -> list[str]:
        """One line per new step, after the lines of the epochs that ended before it."""
        key = p.get("model")
        if not key or not p.get("epochs"):
            return []
        key, now = str(key), int(p.get("epoch") or 1)
        ends = [
            (epoch, float(loss))
            for epoch, loss in enumerate(p.get("epoch_losses") or [], start=1)
            if isinstance(loss, int | float)
        ]
        # the ends of earlier epochs, then this step, then this epoch's end (when it is over)
        out = [line for e, loss in ends if e < now for line in self.epoch_end(key, e, loss)]
        where = (key, p.get("epoch"), p.get("step"))
        if where != self.last and p.get("step"):
            self.last = where
            rest = [f"step {p.get('step')}/{p['steps']}"] if p.get("steps") else []
            loss = p.get("loss")
            if isinstance(loss, int | float):
                rest.append(f"loss: {loss:.5f}")
            out += self._line(key, now, rest)
        return out + [line for e, loss in ends if e >= now for line in self.epoch_end(key, e, loss)]
