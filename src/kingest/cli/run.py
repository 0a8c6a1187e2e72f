"""``kingest run -c FILE``: the agent, running the sources of a YAML config until stopped.

SIGTERM or SIGINT stops it cleanly: the sources stop reading, everything held is delivered (or
dead-lettered), the last positions are committed, and it exits 0. A source that fails stops
the agent the same way, with exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any

import orjson

from kingest.agent.config import AgentConfig, load_config
from kingest.agent.runner import Agent, SourceFailedError
from kingest.cli.common import add_observability_arguments, with_observability


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``run`` command."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "run",
        help="run the agent: the sources of a YAML config, until SIGTERM or SIGINT",
        description=(
            "Run every source of the config into Kinesis. Positions are committed once "
            "their records are accepted or dead-lettered; SIGTERM/SIGINT stops cleanly."
        ),
    )
    parser.add_argument("-c", "--config", required=True, metavar="FILE", help="YAML config")
    parser.add_argument(
        "--endpoint-url", help="Kinesis endpoint, overriding the config's endpoint_url"
    )
    parser.add_argument(
        "--check", action="store_true", help="validate the config, print it, and exit"
    )
    add_observability_arguments(parser)
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``kingest run``; see the module docstring."""
    config = load_config(args.config)
    if args.check:
        # JSON mode: secrets print as "**********", never in clear.
        dumped = with_observability(config, args).model_dump(mode="json", by_alias=True)
        print(orjson.dumps(dumped, option=orjson.OPT_INDENT_2).decode())
        return 0
    return run_agent(config, args, "run")


def run_agent(config: AgentConfig, args: argparse.Namespace, command: str) -> int:
    """Run an agent until SIGTERM/SIGINT; print its figures on stderr; return the exit status.

    Args:
        config: the agent's config.
        args: the command's arguments: ``--endpoint-url`` and the metrics flags apply.
        command: the command's name, for messages.
    """
    agent = Agent(with_observability(config, args), endpoint_url=args.endpoint_url)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        try:
            await agent.run(stop)
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)

    status = 0
    try:
        asyncio.run(main())
    except SourceFailedError as exc:
        print(f"kingest {command}: error: a source failed: {exc}", file=sys.stderr)
        status = 1
    print(f"kingest {command}: {_summary(agent)}", file=sys.stderr)
    return status


def _summary(agent: Agent) -> str:
    stats = agent.stats()
    parts = []
    for name, source in stats["sources"].items():
        parts.append(f"{name}: {source['received']:,} read, {source['invalid']:,} rejected")
    for stream, producer in stats["streams"].items():
        parts.append(
            f"{stream}: {producer['total_sent']:,} accepted, "
            f"{producer['total_failed']:,} dead-lettered"
        )
    return "; ".join(parts) or "nothing ran"
