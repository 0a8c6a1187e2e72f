"""``kingest schema check OLD NEW --mode backward|forward|full``: is NEW a safe evolution of OLD?

Prints each incompatibility as ``PATH: reason`` on standard output, then a one-line verdict.
Exit status 0 when compatible, 1 when not, 2 when a file cannot be read or is not a JSON Schema
(for CI use). The rules are those of :mod:`kingest.schemas.compat`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import orjson

from kingest.schemas.compat import MODES, SchemaError, check


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``schema`` command and its ``check`` subcommand."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "schema", help="JSON Schema tools: evolution checks"
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    checker = actions.add_parser(
        "check",
        help="judge whether NEW is a compatible evolution of OLD",
        description=(
            "backward: NEW reads data written with OLD; forward: OLD reads data written with "
            "NEW; full: both. Exit status 0 compatible, 1 not, 2 unusable input."
        ),
    )
    checker.add_argument("old", metavar="OLD", help="the schema in use (JSON file)")
    checker.add_argument("new", metavar="NEW", help="the proposed schema (JSON file)")
    checker.add_argument("--mode", choices=MODES, default="backward", help="(default: backward)")
    checker.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``kingest schema check``; see the module docstring."""
    try:
        old = _load(args.old)
        new = _load(args.new)
        found = check(old, new, args.mode)
    except SchemaError as exc:
        print(f"kingest schema: error: {exc}", file=sys.stderr)
        return 2
    for problem in found:
        print(problem)
    if found:
        print(f"incompatible ({args.mode}): {len(found)} problem{'s' if len(found) > 1 else ''}")
        return 1
    print(f"compatible ({args.mode})")
    return 0


def _load(name: str) -> Any:
    try:
        document = orjson.loads(Path(name).read_bytes())
    except OSError as exc:
        raise SchemaError(f"cannot read {name}: {exc.strerror or exc}") from exc
    except orjson.JSONDecodeError as exc:
        raise SchemaError(f"{name} is not JSON: {exc}") from exc
    if not isinstance(document, dict | bool):
        raise SchemaError(f"{name} is not a JSON Schema (an object or a boolean)")
    return document
