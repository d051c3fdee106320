"""oneseekctl logs RUN [-f]: a run's log (logs/<run_id>.log, JSON lines) as lines a person reads.

The run log is JSON for programs (docs/interface.md, "Logs"); this prints each event as
`2026-11-24 19:00:00 info    epoch_finished  model=tiny-llama epoch=1 train_loss=5.94`, a
`progress` event as `step 5/12 loss 4.36 812 tok/s`, and with -f follows the file until the run
has ended and every line is printed. `--json` passes the lines through as they are. Light:
no SQLAlchemy on a SQLite home (oneseekd/cli/read.py).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from oneseekd.cli.context import Context, json_option
from oneseekd.cli.display import shown
from oneseekd.cli.names import FORMS, resolve_run
from oneseekd.cli.read import Reader, Row, open_reader
from oneseekd.errors import OneseekError
from oneseekd.times import human_text

POLL_SECONDS = 0.5
ENDED = frozenset({"succeeded", "failed", "cancelled"})
# fields every line has, or that say nothing a person needs here (the argv is in `show`)
_LEFT_OUT = frozenset({"timestamp", "level", "event", "run_id", "argv", "logger_name"})
_MAX_VALUE = 120  # a long value (a list of record bits) is cut, with its length said


@click.command("logs")
@click.argument("name", metavar="RUN")
@click.option(
    "-f",
    "--follow",
    is_flag=True,
    help="Keep printing new lines until the run has ended (Ctrl-C stops).",
)
@json_option
@click.pass_obj
def logs_cmd(obj: Context, name: str, follow: bool, as_json: bool) -> None:
    """Print a run's log as readable lines; -f follows it until the run ends.

    RUN is FORMS_HERE. --json prints the log's JSON lines as they are.

    \b
    Examples:
    oneseekctl logs latest -f
    oneseekctl logs 318fcc --json | jq 'select(.event == "epoch_finished")'
    """
    reader = open_reader(obj)[0]
    run = resolve_run(reader, obj.config.home, name).run
    path = Path(run.log_path) if run.log_path else obj.config.home.logs / f"{run.run_id}.log"
    if not follow:
        if not path.is_file():
            if run.state in ENDED:
                raise OneseekError(
                    f"run {run.run_id} left no log at {path}",
                    [f"`oneseekctl show {run.run_id}` has its state changes and its error"],
                )
            click.echo(
                f"Run {shown(run.run_id)} has no log yet (it is {shown(run.state)}).", err=True
            )
            return
        for line in _lines(path, 0)[0]:
            _emit(line, as_json)
        return
    try:
        _follow(obj, reader, run, path, as_json)
    except KeyboardInterrupt:
        sys.exit(130)  # Ctrl-C: quietly, as `tail -f`


def _follow(obj: Context, reader: Reader, run: Row, path: Path, as_json: bool) -> None:
    """Print new lines as they come; once the run has ended, print what is left and stop."""
    offset = 0
    warned = False
    while True:
        ended = run.state in ENDED  # read before the file: its last lines come before this
        if path.is_file():
            lines, offset = _lines(path, offset)
            for line in lines:
                _emit(line, as_json)
        if ended:
            if not as_json:
                click.echo(f"-- run {shown(run.run_id)} {shown(run.state)} --")
            return
        if not warned and not obj.daemon().held:
            click.echo(
                f"(no oneseekd serves {obj.config.home.root}: the run moves once it starts)",
                err=True,
            )
            warned = True
        time.sleep(POLL_SECONDS)
        run = reader.run(run.run_id) or run


def _lines(path: Path, offset: int) -> tuple[list[str], int]:
    """The whole lines from `offset` on, and where the next read starts (a line still being
    written is left for the next read; a file cut shorter is read again from its start)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, 2)
            if fh.tell() < offset:
                offset = 0
            fh.seek(offset)
            data = fh.read()
    except OSError as exc:
        raise OneseekError(f"cannot read {path}: {exc.strerror}") from exc
    end = data.rfind(b"\n") + 1
    text = data[:end].decode("utf-8", "replace")
    return [line for line in text.split("\n") if line], offset + end


def _emit(line: str, as_json: bool) -> None:
    click.echo(line if as_json else human_line(line))


def human_line(line: str) -> str:
    """One JSON log line as `time level event  key=value ...`; a line that is not a JSON
    object is shown as it is (escaped)."""
    try:
        data = json.loads(line)
    except ValueError:
        return shown(line)
    if not isinstance(data, dict):
        return shown(line)
    when = human_text(data.get("timestamp")) if data.get("timestamp") else "-"
    level = str(data.get("level", "-"))
    event = str(data.get("event", "-"))
    text = progress_text(data) if event == "progress" else _fields(data)
    return shown(f"{when} {level:<7} {event}" + (f"  {text}" if text else ""))


def progress_text(data: dict[str, Any]) -> str:
    """`tiny-llama epoch 1/3 step 5/12 loss 4.36 812 tok/s ETA 2m49s`, from what the event
    has; a phase outside the training steps as its name (`evaluating held-out: base`)."""
    parts: list[str] = []
    if data.get("model"):
        parts.append(str(data["model"]))
    if data.get("phase"):
        parts.append(str(data["phase"]))
    for what in ("epoch", "step"):
        if data.get(what) is not None:
            total = data.get(f"{what}s")
            parts.append(f"{what} {data[what]}" + (f"/{total}" if total is not None else ""))
    if isinstance(data.get("loss"), int | float):
        parts.append(f"loss {data['loss']:.3g}")
    speed = data.get("tokens_per_s", data.get("tokens_per_second"))
    if isinstance(speed, int | float):
        parts.append(f"{speed:.0f} tok/s")
    if isinstance(data.get("eta_s"), int | float):
        parts.append(f"ETA {_duration(data['eta_s'])}")
    rest = {
        k: v
        for k, v in data.items()
        if k not in _LEFT_OUT
        and k
        not in {"model", "phase", "epoch", "epochs", "step", "steps", "loss", "eta_s"}
        | {"tokens_per_s", "tokens_per_second"}
    }
    return " ".join(parts + ([_fields(rest)] if rest else []))


def _duration(seconds: float) -> str:
    whole = int(seconds)
    if whole >= 3600:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 60}m{whole % 60:02d}s" if whole >= 60 else f"{whole}s"


def _fields(data: dict[str, Any]) -> str:
    return " ".join(f"{k}={_value(v)}" for k, v in _items(data))


def _items(data: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    for key, value in data.items():
        if key not in _LEFT_OUT and value is not None:
            yield key, value


def _value(value: Any) -> str:
    if isinstance(value, float):
        text = f"{value:.6g}"
    elif isinstance(value, str):
        text = value if value and " " not in value else json.dumps(value, ensure_ascii=False)
    else:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if len(text) > _MAX_VALUE:
        text = f"{text[: _MAX_VALUE - 1]}… ({len(text)} characters)"
    return text


logs_cmd.help = (logs_cmd.help or "").replace("FORMS_HERE", FORMS)
