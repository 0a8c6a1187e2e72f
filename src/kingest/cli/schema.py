"""``kingest schema``: the JSON Schema tools, for people and for CI.

- ``check OLD NEW --mode backward|forward|full``: is NEW a safe evolution of OLD? Prints each
  incompatibility as ``PATH: reason`` on standard output, then a one-line verdict. Exit status
  0 when compatible, 1 when not, 2 when a file cannot be read or is not a JSON Schema. The rules
  are those of :mod:`kingest.schemas.compat`.
- ``list``: every schema the agent would know (built in, and from ``--schema-path``), with its
  versions.
- ``show NAME [--version N]``: one schema's document, as JSON (``check`` takes it as a file).
- ``validate --schema NAME [--version N] FILE...``: JSON lines checked as a source would check
  them; each invalid line as ``FILE:LINE: violation; violation...``, then a count. Exit status 0
  when every line is valid, 1 when some are not, 2 on an unknown schema or unreadable file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from kingest.cli.common import check_inputs, open_inputs
from kingest.errors import ConfigError
from kingest.schemas.compat import MODES, SchemaError, check

if TYPE_CHECKING:
    from kingest.schemas.registry import SchemaRegistry


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``schema`` command and its subcommands."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "schema", help="JSON Schema tools: evolution checks, the known schemas, validation"
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

    lister = actions.add_parser("list", help="the schemas known, with their versions")
    _add_schema_paths(lister)
    lister.set_defaults(handler=run_list)

    shower = actions.add_parser("show", help="print one schema's document as JSON")
    shower.add_argument("name", metavar="NAME", help="schema name, e.g. web_logs")
    shower.add_argument("--version", type=int, help="version (default: the latest)")
    _add_schema_paths(shower)
    shower.set_defaults(handler=run_show)

    validator = actions.add_parser(
        "validate",
        help="check JSON lines against a schema, as a source would",
        description=(
            "Each invalid line is printed as FILE:LINE: and its violations. Exit status 0 when "
            "every line is valid, 1 when some are not, 2 on an unknown schema or unreadable file."
        ),
    )
    validator.add_argument("--schema", required=True, metavar="NAME", help="schema name")
    validator.add_argument("--version", type=int, help="version (default: the latest)")
    validator.add_argument("files", nargs="*", metavar="FILE", help="JSON lines ('-': stdin)")
    _add_schema_paths(validator)
    validator.set_defaults(handler=run_validate)
    return parser


def _add_schema_paths(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--schema-path",
        action="append",
        default=[],
        metavar="PATH",
        help="a file or directory of your own schemas (<name>.v<N>.json); repeat for more",
    )


def _registry(args: argparse.Namespace) -> SchemaRegistry | None:
    """The registry of the arguments, or None after printing why it cannot be had."""
    from kingest.schemas.validate import load_registry

    try:
        return load_registry(args.schema_path)
    except ConfigError as exc:
        print(f"kingest schema: error: {exc}", file=sys.stderr)
        return None


def run_list(args: argparse.Namespace) -> int:
    """Run ``kingest schema list``: one line per schema, ``NAME v1 v2 ...``."""
    registry = _registry(args)
    if registry is None:
        return 2
    for name in registry.names():
        versions = " ".join(f"v{version}" for version in registry.versions(name))
        print(f"{name} {versions}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    """Run ``kingest schema show``: the document, indented JSON."""
    registry = _registry(args)
    if registry is None:
        return 2
    try:
        schema = registry.get(args.name, args.version)
    except ConfigError as exc:
        print(f"kingest schema: error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(orjson.dumps(schema.document, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


def run_validate(args: argparse.Namespace) -> int:
    """Run ``kingest schema validate``; see the module docstring."""
    registry = _registry(args)
    if registry is None:
        return 2
    try:
        schema = registry.get(args.schema, args.version)
        problem = check_inputs(args.files)
        if problem is not None:
            raise ConfigError(problem)
        valid = invalid = 0
        for name, handle in open_inputs(args.files):
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    print(f"{name}:{number}: not JSON: {exc}")
                    invalid += 1
                    continue
                violations = schema.violations(record)
                if violations:
                    print(f"{name}:{number}: {'; '.join(str(v) for v in violations)}")
                    invalid += 1
                else:
                    valid += 1
    except ConfigError as exc:
        print(f"kingest schema: error: {exc}", file=sys.stderr)
        return 2
    print(f"{valid:,} valid, {invalid:,} invalid against {schema.id}", file=sys.stderr)
    return 1 if invalid else 0


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
