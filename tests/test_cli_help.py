"""Issue 30, item 10: help that helps. Every flag of `submit` says what it sets, its default
and its choices, the defaults and choices are the run spec's own, the aliases and the refused
DeepSpeed flags are not listed one by one, and `--help` stays light."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any, get_args

import click
from click.testing import CliRunner

from oneseekd.cli import COMMANDS, SUMMARIES, main
from oneseekd.cli.flaghelp import ALIASES, FLAG_HELP, REFUSED
from oneseekd.cli.submit import submit_cmd
from oneseekd.intake.schema import TrainingRequestModel
from oneseekd.spec.request import AutoStopOptions, LoraOptions, RunOptions


def _field(path: str) -> Any:
    head, _, tail = path.partition(".")
    if head == "lora":
        return LoraOptions.model_fields[tail]
    if head == "auto_stop":
        return AutoStopOptions.model_fields[tail]
    if head in RunOptions.model_fields:
        return RunOptions.model_fields[head]
    return TrainingRequestModel.model_fields[head]


def _literals(annotation: Any) -> tuple[str, ...]:
    """The strings of a Literal, through Optional and Annotated."""
    found: list[str] = []
    for arg in get_args(annotation) or ():
        if isinstance(arg, str):
            found.append(arg)
        else:
            found.extend(_literals(arg))
    return tuple(found)


def test_the_help_defaults_and_choices_are_the_run_specs() -> None:
    checked = 0
    for flag, info in FLAG_HELP.items():
        if info.field is None:
            continue
        field = _field(info.field)
        assert info.default == str(field.default), flag
        if info.choices is not None:
            assert info.choices == _literals(field.annotation), flag
        checked += 1
    assert checked >= 15
    ddp = RunOptions.model_fields["ddp_backend"].annotation
    assert FLAG_HELP["--ddp-backend"].choices == _literals(ddp)


def test_submit_help_lists_every_flag_with_its_text_and_hides_aliases() -> None:
    result = CliRunner().invoke(main, ["submit", "--help"])
    assert result.exit_code == 0
    shown = [p for p in submit_cmd.params if isinstance(p, click.Option) and not p.hidden]
    for option in shown:
        assert option.help, option.opts
        assert "sets " not in option.help, option.opts  # no bare "sets FIELD (docs/...)"
    listed = {o for p in shown for o in p.opts}
    assert not listed & set(ALIASES)
    assert not listed & set(REFUSED)
    assert "deepspeed" not in result.stdout.lower()
    assert "[default: 3]" in result.stdout  # --epochs
    assert "[auto|fp32|bf16|fp16]" in result.stdout  # --precision's choices
    assert "Examples:" in result.stdout
    # the aliases are taken, and named once, together
    assert ", ".join(ALIASES) in " ".join(result.stdout.split())
    hidden = {o for p in submit_cmd.params if getattr(p, "hidden", False) for o in p.opts}
    assert set(ALIASES) | set(REFUSED) <= hidden


def test_top_level_help_says_each_command_in_full() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    commands = result.stdout.split("Commands:")[1]
    assert "..." not in commands and "…" not in commands  # click cuts at 45 characters
    text = " ".join(result.stdout.split())
    for name in COMMANDS:
        if name in SUMMARIES:
            assert SUMMARIES[name] in text, name
    assert "Examples:" in result.stdout


def _imported_by(*args: str) -> list[str]:
    script = (
        "import sys\n"
        "from oneseekd.cli import main\n"
        "try:\n"
        f"    main({list(args)!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "import json\n"
        "print(json.dumps(sorted(m for m in ('sqlalchemy', 'pydantic_core._pydantic_core',"
        " 'structlog', 'torch', 'oneseekd.intake.accept') if m in sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    return list(json.loads(done.stdout.splitlines()[-1]))


def test_help_imports_none_of_the_machinery() -> None:
    """`--help` is as light as `--version`: the commands' modules are not imported for the
    list, and a command's own help loads none of what running it needs."""
    assert _imported_by("--help") == []
    for command in ("submit", "cancel", "promote", "show", "logs"):
        heavy = _imported_by(command, "--help")
        assert "sqlalchemy" not in heavy and "structlog" not in heavy, (command, heavy)
        assert "oneseekd.intake.accept" not in heavy and "torch" not in heavy, (command, heavy)
