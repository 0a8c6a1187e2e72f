"""``kingest cdc postgres|mysql``: capture a database's changes into a stream until stopped.

Each subcommand is one CDC source without a config file. It runs until SIGTERM or SIGINT, then
delivers what it holds, commits its position and exits 0. A server that cannot be captured
(settings, privileges, a dropped slot) ends it with a one-line error and exit status 1.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

# One module per database, each with register(subparsers).
DATABASES = ("postgres", "mysql")


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``cdc`` command and its subcommands."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "cdc",
        help="capture database changes (PostgreSQL, MySQL/MariaDB) into a stream",
        description=(
            "Stream every committed change of a database into Kinesis, one record per row "
            "changed, keyed by table and primary key. Positions are committed once the "
            "changes before them are accepted or dead-lettered."
        ),
    )
    databases = parser.add_subparsers(dest="database", metavar="DATABASE", required=True)
    for name in DATABASES:
        try:
            module = importlib.import_module(f"kingest.cli.cdc_{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"kingest.cli.cdc_{name}":
                raise
            continue
        module.register(databases)
    return parser
