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


@pytest.mark.parametrize(
    "words",
    [
        ["run", "-c", "k.yaml"],
        ["tail", "--path", "x", "--format", "common", "--stream", "s"],
        ["cdc", "postgres", "--dsn", "postgresql://localhost/db", "--stream", "s"],
        ["cdc", "mysql", "--dsn", "mysql://root@localhost/db", "--stream", "s"],
        ["mqtt", "--broker", "localhost:1883", "--topic", "t/#", "--stream", "s"],
        ["http", "--listen", "127.0.0.1:0", "--stream", "s"],
    ],
    ids=lambda words: " ".join(words[:2]),
)
def test_every_long_running_command_takes_the_metrics_flags(words: list[str]) -> None:
    from kingest.agent.config import AgentConfig
    from kingest.cli.common import with_observability

    flags = ["--metrics-address", "127.0.0.1:9108", "--cloudwatch-namespace", "Kingest/Test"]
    flags += ["--cloudwatch-interval-s", "30"]
    args = build_parser(only=words[0]).parse_args([*words, *flags])
    config = AgentConfig.model_validate(
        {"stream": "s", "sources": [{"type": "file", "paths": ["x"], "format": "common"}]}
    )
    metrics = with_observability(config, args).metrics
    assert metrics.address == "127.0.0.1:9108"
    assert metrics.cloudwatch is not None
    assert metrics.cloudwatch.namespace == "Kingest/Test"
    assert metrics.cloudwatch.interval_s == 30


def test_bad_metrics_flags_are_config_errors() -> None:
    from kingest.agent.config import AgentConfig
    from kingest.cli.common import with_observability
    from kingest.errors import ConfigError

    config = AgentConfig.model_validate(
        {"stream": "s", "sources": [{"type": "file", "paths": ["x"], "format": "common"}]}
    )
    parser = build_parser(only="run")
    for flags, message in [
        (["--metrics-address", "nowhere"], "metrics.address"),
        (["--cloudwatch-interval-s", "5"], "need a namespace"),
        (["--cloudwatch-namespace", "AWS/Kinesis"], "metrics.cloudwatch"),
    ]:
        args = parser.parse_args(["run", "-c", "k.yaml", *flags])
        with pytest.raises(ConfigError, match=message):
            with_observability(config, args)
