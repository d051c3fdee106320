"""structlog set-up: one JSON object per line on stderr (human lines on a terminal), stable
snake_case event names; and how a run log's lines read as text (the run's error, `oneseekctl
show`)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import warnings
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any, TextIO

import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def _lead_with_time_level_event(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """timestamp, level and event first, so that a line reads left to right."""
    lead = {k: event.pop(k) for k in ("timestamp", "level", "event") if k in event}
    return {**lead, **event}


def human_wanted(stream: TextIO, env: Mapping[str, str] | None = None) -> bool:
    """The one switch between the two renderers: human lines for a person at a terminal, JSON
    lines for everything else (a pipe, a file, the journal). systemd sets JOURNAL_STREAM for a
    unit whose stderr is the journal; ONESEEK_LOG_FORMAT=json or human decides outright."""
    env = os.environ if env is None else env
    chosen = env.get("ONESEEK_LOG_FORMAT", "").strip().lower()
    if chosen in ("json", "human"):
        return chosen == "human"
    if env.get("JOURNAL_STREAM"):
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or a stand-in stream
        return False


# Sees every event a process logs, whatever the log level: (method name, event dict) -> None.
# The daemon's metrics count the events it already logs through one (oneseekd/metrics/events.py).
Observer = Callable[[str, Mapping[str, Any]], None]


def _observed(observer: Observer, level: str) -> Callable[..., Any]:
    """A processor that shows each event to `observer`, then drops it when it is below the
    level in force: with an observer, filtering moves from the logger into this processor, so
    an operator's `log_level = "warning"` does not stop the info events from being counted."""
    floor = _LEVELS[level]

    def observe(
        _logger: Any, method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        with contextlib.suppress(Exception):  # counting must never cost a log line
            observer(method, event)
        if _LEVELS.get(method, logging.ERROR) < floor:
            raise structlog.DropEvent
        return event

    return observe


def configure_logging(
    level: str,
    stream: TextIO | None = None,
    human: bool | None = None,
    observer: Observer | None = None,
) -> None:
    """Every process's structlog: JSON lines (timestamp, level and event first), or, when
    `human` (by default: human_wanted(stream)), structlog's ConsoleRenderer in the one human
    time format. The trainer always writes JSON: its stderr is the run log. `observer` sees
    every event, those below `level` included (the daemon's metrics)."""
    out = stream or sys.stderr
    if human is None:
        human = human_wanted(out)
    rendering: list[Any] = (
        [
            structlog.processors.TimeStamper(fmt="%Y-%m-%d %H:%M:%S", utc=True),
            structlog.dev.ConsoleRenderer(
                colors="NO_COLOR" not in os.environ,  # https://no-color.org
                exception_formatter=structlog.dev.plain_traceback,
            ),
        ]
        if human
        else [
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _lead_with_time_level_event,
            structlog.processors.JSONRenderer(sort_keys=False),
        ]
    )
    watching = [] if observer is None else [_observed(observer, level)]
    structlog.configure(
        processors=[
            *watching,
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            *rendering,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            _LEVELS[level] if observer is None else logging.DEBUG
        ),
        # one write per line, the newline included: the ranks of a torchrun share the run log's
        # descriptor, and print()'s two writes (the text, then "\n") on Python's write-through
        # stderr let another rank's line land between them
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )


# --- the trainer's log: JSON lines only ---------------------------------------------------------
# Third-party warnings that say nothing an operator can act on, silenced here and only here
# (the trainer process and the test suite both apply this list): (message regex, category).
LIBRARY_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    # peft asks transformers a deprecated question on every LoRA model it builds
    ("`is_gradient_checkpointing` is deprecated", FutureWarning),
    # peft saves the embeddings when they are LoRA targets (lm_head on tied models): intended
    ("Setting `save_embedding_layers` to `True`", UserWarning),
    # peft checks the base model's vocabulary when saving; a base model removed mid-run
    # fails the run with its own message, naming the model
    ("Could not find a config file in", UserWarning),
    # peft's k-bit preparation still calls the transformers 5.24 name for checkpointing
    ("`gradient_checkpointing_enable` is deprecated", FutureWarning),
    # torch 2.13 warns when a library it loads still defines TorchScript methods
    ("`torch.jit.script_method` is deprecated", DeprecationWarning),
)


def ignore_library_warnings() -> None:
    for message, category in LIBRARY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


# Progress bars are the operator's `oneseekctl status`, not the log's: off in the trainer.
QUIET_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1"}


class _ToStructlog(logging.Handler):
    """Library logging (transformers, peft, torch's Python side) as JSON events."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            structlog.get_logger("oneseekd.library").log(
                record.levelno, "library_log", logger=record.name, message=record.getMessage()
            )
        except Exception:  # a log line must never end a run
            self.handleError(record)


def _warning_to_structlog(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    structlog.get_logger("oneseekd.library").warning(
        "python_warning",
        category=category.__name__,
        message=str(message),
        where=f"{filename}:{lineno}",
    )


def _exception_to_structlog(kind: type[BaseException], value: BaseException, tb: Any) -> None:
    error = f"{kind.__name__}: {value}"
    structlog.get_logger("oneseekd.trainer").error(
        "trainer_crashed",
        exc_info=(kind, value, tb),
        error=error,
        reason=f"the trainer crashed: {' '.join(error.split())}",
    )


def capture_library_output(level: str) -> None:
    """Everything the trainer process writes becomes one JSON object per line: Python warnings
    (FutureWarning, UserWarning), library logging, uncaught exceptions; progress bars are
    off. Called before torch and transformers are imported."""
    for name, value in QUIET_ENV.items():
        os.environ.setdefault(name, value)
    warnings.showwarning = _warning_to_structlog
    ignore_library_warnings()
    root = logging.getLogger()
    root.handlers[:] = [_ToStructlog()]
    # libraries' own info lines (every config they load) are noise in a run log
    root.setLevel(max(_LEVELS[level], logging.WARNING))
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "warning")
    sys.excepthook = _exception_to_structlog


def library_loggers_propagate() -> None:
    """transformers' loggers keep their own stderr handler; hand their lines to the root's.
    Called once transformers is imported (oneseekd/trainer/loading.py imports it)."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()


def render_log_line(line: str) -> str:
    """A run log's JSON line as an operator reads it in `oneseekctl show` (the error's log
    tail); any other line as it is."""
    if not line.startswith("{"):
        return line
    try:
        data = json.loads(line)
    except ValueError:
        return line
    if not isinstance(data, dict) or "event" not in data:
        return line
    event = data.pop("event")
    data.pop("timestamp", None)
    level = data.pop("level", "info")
    data.pop("reason", None)  # the run's error already begins with it (daemon/outcome.py)
    text = data.pop("text", None) or data.pop("error", None)
    exception = data.pop("exception", None)
    rest = " ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in data.items())
    shown = f"{level}: {event}" + (f": {text}" if text else "") + (f" ({rest})" if rest else "")
    return shown + (f"\n{exception}" if exception else "")


# --- a run's failure as an operator reads it ----------------------------------------------------
# Events that are a library's, or the daemon's own record of how it started the trainer: never
# the cause of a failure, so they stay out of the excerpt a failed run stores (the run log
# keeps them).
NOISE_EVENTS = frozenset({"python_warning", "library_log", "trainer_started", "progress"})

# `line 3: ...`, `  - record 2: ...`: a problem named by where it is, as the data checks write
_WHERE = re.compile(r"^(?P<lead>\s*(?:- )?)(?P<kind>line|record) (?P<n>\d+): (?P<rest>.*)$")


def grouped_lines(lines: list[str]) -> list[str]:
    """Runs of the same problem at consecutive places as one line (`lines 1-20: ...`), and a
    line repeated as it is as one line with its count: 20 records cut the same way read as one
    cause, not twenty."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        match = _WHERE.match(lines[i])
        j = i + 1
        if match:
            first = last = int(match["n"])
            while j < len(lines):
                nxt = _WHERE.match(lines[j])
                same = nxt and (nxt["lead"], nxt["kind"], nxt["rest"]) == (
                    match["lead"],
                    match["kind"],
                    match["rest"],
                )
                if not (nxt and same and int(nxt["n"]) == last + 1):
                    break
                last = int(nxt["n"])
                j += 1
            if last > first:
                where = f"{match['kind']}s {first}\u2013{last}"
                out.append(f"{match['lead']}{where}: {match['rest']}")
                i = j
                continue
        while j < len(lines) and lines[j] == lines[i]:
            j += 1
        out.append(lines[i] + (f" (\u00d7{j - i})" if j - i > 1 else ""))
        i = j
    return out


def one_line_reason(message: str, problems: list[str]) -> str:
    """An error and its problems as one line, the run's cause: the message, then its first
    problem (grouped, so `lines 1-20: ...` when twenty records fail the same way), then how
    many others there are."""
    if not problems:
        return " ".join(message.split())
    shown = grouped_lines([" ".join(p.split()) for p in problems])
    more = len(shown) - 1
    return f"{' '.join(message.split())}: {shown[0]}" + (
        f" (and {more} other problem{'s' if more > 1 else ''})" if more else ""
    )


def is_noise(line: str) -> bool:
    """A run log line that is a library's warning or log line, or the daemon's record of the
    trainer's argv: left out of a failed run's excerpt."""
    if not line.startswith("{"):
        return False
    try:
        data = json.loads(line)
    except ValueError:
        return False
    return isinstance(data, dict) and data.get("event") in NOISE_EVENTS


def log_reason(lines: list[str]) -> str | None:
    """The trainer's own one-line reason for ending, the last `reason` a run log's JSON events
    carry (trainer_refused, trainer_out_of_memory, trainer_crashed write one), or None."""
    for line in reversed(lines):
        if not line.startswith("{"):
            continue
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if isinstance(data, dict) and isinstance(data.get("reason"), str) and data["reason"]:
            return str(data["reason"])
    return None
