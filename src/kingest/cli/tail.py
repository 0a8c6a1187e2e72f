"""``kingest tail``: follow log files into a stream, the file source without a config file.

Each accepted line becomes one record (the parsed fields, ``source``, ``ingestion_timestamp``,
``file`` and ``offset``); a rejected line goes to the dead-letter queue. It runs until SIGTERM
or SIGINT, then delivers what it holds, commits its checkpoints and exits 0.
"""

from __future__ import annotations

import argparse
from typing import Any

from kingest.cli.common import add_agent_arguments, single_source_agent
from kingest.cli.run import run_agent


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``tail`` command."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "tail",
        help="follow log files (like tail -F) into a stream until SIGTERM or SIGINT",
        description=(
            "Follow files matching the globs, parse each line and send it as one record. "
            "Offsets are committed to the checkpoint file once their lines are accepted or "
            "dead-lettered, so a restart resumes where it stopped."
        ),
    )
    parser.add_argument(
        "--path", action="append", required=True, metavar="GLOB", help="files to follow"
    )
    parser.add_argument(
        "--format",
        required=True,
        help="common, combined, vhost_combined, nginx, json, or apache/nginx with --log-format",
    )
    parser.add_argument("--log-format", metavar="STRING", help="Apache/Nginx format string")
    parser.add_argument("--stream", required=True, help="stream name or ARN")
    parser.add_argument(
        "--from",
        dest="start",
        choices=("beginning", "end"),
        default="end",
        help="where to start a file that has no checkpoint (default: end)",
    )
    parser.add_argument(
        "--partition-key",
        metavar="TEMPLATE",
        help="partition key template, e.g. '{session_id}' (default: the client address)",
    )
    add_agent_arguments(parser, "web_logs")
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``kingest tail``; see the module docstring."""
    config = single_source_agent(
        args,
        {
            "type": "file",
            "name": args.source,
            "paths": args.path,
            "format": args.format,
            "log_format": args.log_format,
            "from": args.start,
            "partition_key": args.partition_key,
        },
    )
    return run_agent(config, args, "tail")
