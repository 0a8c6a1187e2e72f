"""The command line's own parsing: which command a run names, and that one alone is loaded."""

from __future__ import annotations

import pytest

from kingest.cli.main import COMMANDS, _command_in, build_parser


@pytest.mark.parametrize(
    ("arguments", "command"),
    [
        (["parse", "--format", "combined"], "parse"),
        (["--log-level", "INFO", "tail", "--path", "x"], "tail"),
        (["--log-level=DEBUG", "run", "-c", "k.yaml"], "run"),
        (["--version"], None),
        ([], None),
    ],
)
def test_the_command_is_the_first_word_that_is_not_an_option(
    arguments: list[str], command: str | None
) -> None:
    assert _command_in(arguments) == command


def test_a_parser_for_one_command_parses_it_and_the_full_one_lists_all() -> None:
    args = build_parser(only="parse").parse_args(["parse", "--format", "combined", "a.log"])
    assert args.command == "parse"
    help_text = build_parser().format_help()
    assert all(name in help_text for name in COMMANDS)
