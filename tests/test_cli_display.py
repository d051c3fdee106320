"""Human output escapes what a terminal would act on; everything printable passes as it is."""

from __future__ import annotations

import pytest

from oneseekd.cli.display import shown, shown_lines, shown_table


@pytest.mark.parametrize(
    ("text", "escaped"),
    [
        ("Qwen-2.5-7B åäö 模型", "Qwen-2.5-7B åäö 模型"),
        ("\x1b[2J\x1b]0;pwned\x07", "\\x1b[2J\\x1b]0;pwned\\x07"),
        ("a\r\nb\tc", "a\\r\\nb\\tc"),
        ("\x9b31m", "\\x9b31m"),  # the one-byte C1 control sequence introducer
        ("abc\u202edcba", "abc\\u202edcba"),  # a right-to-left override
        ("zero\u200bwidth", "zero\\u200bwidth"),
        ("bad-\udcff-name", "bad-\\udcff-name"),  # an undecodable file-name byte
    ],
)
def test_shown_escapes_every_character_that_is_not_printable(text: str, escaped: str) -> None:
    assert shown(text) == escaped


def test_tables_and_lines_escape_each_cell_and_keep_their_own_layout() -> None:
    assert shown_table(["KEY", "NAME"], [["k", "a\x1bb"], ["kk", None]]) == (
        "KEY  NAME\nk    a\\x1bb\nkk   None"
    )
    assert shown_lines("one\x1b\ntwo\r", "  ") == "  one\\x1b\n  two\\r"


def test_an_error_naming_rows_others_wrote_reaches_the_terminal_escaped() -> None:
    """Errors can quote database text (a resolve's candidates are keys others may write):
    the one place that prints errors escapes them, line breaks kept."""
    import click
    from click.testing import CliRunner

    from oneseekd.cli import OneseekGroup
    from oneseekd.errors import OneseekError

    @click.group(cls=OneseekGroup)
    def group() -> None:
        pass

    @group.command()
    def fail() -> None:
        raise OneseekError("no model \x1b]0;pwned\x07", ["try \x1b[2J another"])

    result = CliRunner().invoke(group, ["fail"])
    assert result.exit_code == 1
    assert result.output == "Error: no model \\x1b]0;pwned\\x07\n  - try \\x1b[2J another\n"
