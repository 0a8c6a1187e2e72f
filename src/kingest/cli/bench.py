"""The ``kingest bench`` command: kingest against a plain boto3 loop and the seed's producer."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

import orjson

from kingest.bench import ENDPOINTS, IMPLEMENTATIONS
from kingest.bench.report import format_report
from kingest.bench.runner import BenchOptions, run_bench, run_memory_check
from kingest.bench.worker import min_record_bytes
from kingest.cli.common import positive_int
from kingest.errors import ConfigError

RUN_ID_LENGTH = 8


def _choices(allowed: tuple[str, ...], what: str) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
        unknown = [name for name in names if name not in allowed]
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"{what} must be a comma-separated list of {', '.join(allowed)}"
                + (f", not {', '.join(unknown)}" if unknown else "")
            )
        return names

    return parse


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``bench`` subcommand."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "bench",
        help="benchmark kingest against a plain boto3 loop and the seed's producer",
        description=(
            "Send the same records with kingest's Producer, a plain boto3 put_records loop and "
            "the seed specification's MultiSourceKinesisProducer, each in a process of its own, "
            "against the embedded endpoint (kinesalite) and a null endpoint that stores "
            "nothing; print throughput, CPU per record, requests, bytes, peak memory and "
            "records lost."
        ),
    )
    parser.add_argument(
        "--records", type=positive_int, default=200_000, help="records per run (default: 200000)"
    )
    parser.add_argument(
        "--record-bytes",
        type=positive_int,
        default=300,
        help="JSON size of each record in bytes (default: 300)",
    )
    parser.add_argument(
        "--keys", type=positive_int, default=5000, help="distinct partition keys (default: 5000)"
    )
    parser.add_argument(
        "--shards", type=positive_int, default=4, help="shards of the stream (default: 4)"
    )
    parser.add_argument(
        "--endpoints",
        type=_choices(ENDPOINTS, "--endpoints"),
        help=f"endpoints to run against (default: {','.join(ENDPOINTS)})",
    )
    parser.add_argument(
        "--implementations",
        type=_choices(IMPLEMENTATIONS, "--implementations"),
        default=IMPLEMENTATIONS,
        help=f"implementations to run (default: {','.join(IMPLEMENTATIONS)})",
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object (rows and ratios) instead"
    )
    parser.add_argument(
        "--memory-check",
        action="store_true",
        help=(
            "run kingest alone on the null endpoint with --records and 10 times as many, and "
            "compare both peak RSS figures with the buffer limit"
        ),
    )
    parser.add_argument(
        "--seed-timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="longest a seed run may take; what it has not sent by then is lost (default: 300)",
    )
    parser.add_argument(
        "--rate-limit",
        action="store_true",
        help="keep kingest's per-shard rate limiter on (default: off, see the output)",
    )
    custom = parser.add_argument_group(
        "existing endpoint", "bench against an existing endpoint and stream (a real one too)"
    )
    custom.add_argument(
        "--endpoint-url",
        help="Kinesis endpoint to use instead of the embedded and null endpoints",
    )
    custom.add_argument(
        "--stream", help="with --endpoint-url: the existing stream to send to (not created)"
    )
    custom.add_argument(
        "--read-back",
        action="store_true",
        help="with --endpoint-url: read the stream back afterwards to count lost records",
    )
    custom.add_argument("--region", help="AWS region (default: AWS_REGION / profile)")
    custom.add_argument("--profile", help="named profile of the AWS configuration files")
    parser.set_defaults(handler=run)
    return parser


def _options(args: argparse.Namespace) -> BenchOptions:
    if args.endpoint_url:
        if args.endpoints is not None:
            raise ConfigError("--endpoints and --endpoint-url exclude each other")
        if not args.stream:
            raise ConfigError("--endpoint-url needs --stream")
        if args.memory_check:
            raise ConfigError("--memory-check runs on the null endpoint only")
    elif args.stream or args.read_back:
        raise ConfigError("--stream and --read-back need --endpoint-url")
    if args.seed_timeout <= 0:
        raise ConfigError("--seed-timeout must be positive")
    records = args.records * (10 if args.memory_check else 1)
    smallest = min_record_bytes(records, args.keys, "x" * RUN_ID_LENGTH)
    if args.record_bytes < smallest:
        raise ConfigError(
            f"--record-bytes must be at least {smallest} "
            f"for {records:,} records and {args.keys:,} keys"
        )
    return BenchOptions(
        records=args.records,
        record_bytes=args.record_bytes,
        keys=args.keys,
        shards=args.shards,
        endpoints=args.endpoints or ENDPOINTS,
        implementations=args.implementations,
        endpoint_url=args.endpoint_url,
        stream=args.stream,
        region=args.region,
        profile=args.profile,
        read_back=args.read_back,
        seed_timeout_s=args.seed_timeout,
        rate_limit=args.rate_limit,
    )


def _progress(message: str) -> None:
    print(f"kingest bench: {message}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print the report.

    Returns:
        0; 1 when a run failed or kingest lost a record.

    Raises:
        ConfigError: conflicting options, or the embedded endpoint cannot start (main prints
            it and exits 1).
    """
    options = _options(args)
    if args.memory_check:
        report = run_memory_check(options, progress=_progress)
    else:
        report = run_bench(options, progress=_progress)
    if args.json:
        sys.stdout.write(orjson.dumps(report).decode() + "\n")
    else:
        print(format_report(report))
    failed = any(
        row["error"] or (row["implementation"] == "kingest" and row["lost"] != 0)
        for row in report["rows"]
    )
    return 1 if failed else 0
