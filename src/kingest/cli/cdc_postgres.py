"""``kingest cdc postgres``: PostgreSQL logical replication (pgoutput) into a stream."""

from __future__ import annotations

import argparse
from typing import Any

from kingest.cli.common import add_agent_arguments, single_source_agent
from kingest.cli.run import run_agent


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``postgres`` subcommand of ``kingest cdc``."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "postgres",
        help="PostgreSQL logical replication (pgoutput)",
        description=(
            "Capture the changes of one PostgreSQL database through a replication slot, "
            "created if missing with its publication. The slot's confirmed position advances "
            "only past changes accepted by Kinesis or dead-lettered."
        ),
    )
    parser.add_argument("--dsn", required=True, help="connection string or URI of the database")
    parser.add_argument("--stream", required=True, help="stream name or ARN")
    parser.add_argument("--slot", default="kingest", help="replication slot (default: kingest)")
    parser.add_argument("--publication", default="kingest", help="publication (default: kingest)")
    parser.add_argument(
        "--table",
        action="append",
        default=[],
        metavar="SCHEMA.TABLE",
        help="a table to capture (repeatable; patterns allowed); default: every table",
    )
    parser.add_argument(
        "--exclude-table",
        action="append",
        default=[],
        metavar="SCHEMA.TABLE",
        help="a table never to capture (repeatable; patterns allowed)",
    )
    parser.add_argument(
        "--snapshot",
        action="store_true",
        help="read the tables first (op 'r'), consistent with the slot's start",
    )
    parser.add_argument(
        "--recreate-slot",
        action="store_true",
        help="when the slot this source used was dropped, create a new one (accepting the gap)",
    )
    add_agent_arguments(parser, "postgres_cdc")
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``kingest cdc postgres``; see the module docstring."""
    config = single_source_agent(
        args,
        {
            "type": "postgres",
            "name": args.source,
            "dsn": args.dsn,
            "slot": args.slot,
            "publication": args.publication,
            "tables": args.table,
            "exclude_tables": args.exclude_table,
            "snapshot": args.snapshot,
            "recreate_dropped_slot": args.recreate_slot,
        },
    )
    return run_agent(config, args, "cdc")
