"""``kingest http``: take application events over HTTP into a stream, until SIGTERM or SIGINT.

``POST /v1/events`` (JSON object, array or NDJSON) is answered once every event in it is
accepted by Kinesis or dead-lettered (see :mod:`kingest.sources.http.source`); ``GET /health``
tells it runs. On SIGTERM or SIGINT it answers the requests in progress, delivers what it holds
and exits 0.
"""

from __future__ import annotations

import argparse
from typing import Any

from kingest.cli.common import add_agent_arguments, single_source_agent
from kingest.cli.run import run_agent


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``http`` command."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "http",
        help="take application events over HTTP (POST /v1/events) until SIGTERM or SIGINT",
        description=(
            "Serve POST /v1/events (JSON object, JSON array or NDJSON) and GET /health; each "
            "event becomes one record, and the answer comes once the events are safe."
        ),
    )
    parser.add_argument("--listen", required=True, metavar="HOST:PORT", help="address to serve")
    parser.add_argument("--stream", required=True, help="stream name or ARN")
    parser.add_argument(
        "--token-file",
        metavar="FILE",
        help="file holding the bearer token clients must send (default: no authentication)",
    )
    parser.add_argument(
        "--ack",
        choices=("delivered", "spooled", "buffered"),
        default="delivered",
        help="answer once delivered (200, default), once on disk in --spool-dir (202, sent "
        "again after a crash), or once in memory (202, lost on a crash)",
    )
    parser.add_argument(
        "--spool-dir", metavar="DIR", help="the spool of --ack spooled (default: kingest-spool)"
    )
    parser.add_argument(
        "--max-body-bytes", type=int, default=16 << 20, help="largest body taken (16 MiB)"
    )
    parser.add_argument(
        "--partition-key", metavar="TEMPLATE", help="e.g. '{user_id}' (default: event digest)"
    )
    add_agent_arguments(
        parser, "app_events", "checkpoint file of the agent (this source has no position)"
    )
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``kingest http``; see the module docstring."""
    config = single_source_agent(
        args,
        {
            "type": "http",
            "name": args.source,
            "listen": args.listen,
            "token_file": args.token_file,
            "ack": args.ack,
            "spool_dir": args.spool_dir or ("kingest-spool" if args.ack == "spooled" else None),
            "max_body_bytes": args.max_body_bytes,
            "partition_key": args.partition_key,
        },
    )
    return run_agent(config, args, "http")
