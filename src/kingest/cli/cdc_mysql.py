"""``kingest cdc mysql``: a MySQL or MariaDB row binlog into a stream."""

from __future__ import annotations

import argparse
from typing import Any

from kingest.cli.common import add_agent_arguments, positive_float, single_source_agent
from kingest.cli.run import run_agent


def _server_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= value < 1 << 32:
        raise argparse.ArgumentTypeError(f"must be between 1 and 4294967295, not {value}")
    return value


def _critical(text: str) -> tuple[str, list[str]]:
    table, sep, columns = text.partition("=")
    names = [name.strip() for name in columns.split(",") if name.strip()]
    if not sep or not table.strip() or not names:
        raise argparse.ArgumentTypeError(f"{text!r} is not DB.TABLE=COLUMN[,COLUMN...]")
    return table.strip(), names


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``mysql`` subcommand of ``kingest cdc``."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "mysql",
        help="MySQL/MariaDB row-based binlog",
        description=(
            "Capture the row changes of a MySQL or MariaDB server from its binlog, as a "
            "replica does (log_bin on, binlog_format=ROW, binlog_row_image=FULL; the user "
            "needs REPLICATION SLAVE and REPLICATION CLIENT). The first run starts at the "
            "server's current position; the position is committed once the changes before it "
            "are accepted or dead-lettered, and a restart resumes there."
        ),
    )
    parser.add_argument(
        "--dsn",
        required=True,
        metavar="URL",
        help="mysql://USER[:PASSWORD]@HOST:PORT/DB (without a password, MYSQL_PWD is used)",
    )
    parser.add_argument("--stream", required=True, help="stream name or ARN")
    parser.add_argument(
        "--server-id",
        type=_server_id,
        metavar="N",
        help="replica server_id, unique among the server's replicas (default: from --source)",
    )
    parser.add_argument(
        "--table",
        action="append",
        default=[],
        metavar="DB.TABLE",
        help="a table to capture (repeatable; patterns allowed); default: the DSN's database",
    )
    parser.add_argument(
        "--exclude-table",
        action="append",
        default=[],
        metavar="DB.TABLE",
        help="a table never to capture (repeatable; patterns allowed)",
    )
    parser.add_argument(
        "--critical-columns",
        action="append",
        type=_critical,
        default=[],
        metavar="DB.TABLE=COL[,COL]",
        help="columns whose change makes an update critical (repeatable, one table each)",
    )
    parser.add_argument(
        "--heartbeat-interval",
        type=positive_float,
        default=5.0,
        metavar="SECONDS",
        help="server heartbeat period when the binlog is idle (default: 5)",
    )
    add_agent_arguments(parser, "mysql_cdc")
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``kingest cdc mysql``; see the module docstring."""
    source: dict[str, Any] = {
        "type": "mysql",
        "name": args.source,
        "dsn": args.dsn,
        "tables": args.table,
        "exclude_tables": args.exclude_table,
        "critical_columns": dict(args.critical_columns),
        "heartbeat_interval_s": args.heartbeat_interval,
    }
    if args.server_id is not None:
        source["server_id"] = args.server_id
    return run_agent(single_source_agent(args, source), args, "cdc")
