"""Arguments and helpers shared by the commands."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, Any

from kingest.errors import ConfigError

if TYPE_CHECKING:
    from kingest.agent.config import AgentConfig


def add_aws_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --endpoint-url, --region and --profile (default: the standard AWS configuration)."""
    group = parser.add_argument_group("AWS")
    group.add_argument(
        "--endpoint-url",
        help="Kinesis endpoint (default: AWS_ENDPOINT_URL_KINESIS, then the region's endpoint)",
    )
    group.add_argument("--region", help="AWS region (default: AWS_REGION / profile)")
    group.add_argument("--profile", help="named profile of the AWS configuration files")


def add_agent_arguments(
    parser: argparse.ArgumentParser, source: str, checkpoint_help: str | None = None
) -> None:
    """Add what every shortcut of an agent source takes: --source, --checkpoint, the AWS
    arguments and the producer settings.

    Args:
        parser: the command's parser.
        source: the default source name.
        checkpoint_help: what the checkpoint file holds for this source, when not positions.
    """
    parser.add_argument("--source", default=source, help=f"source name (default: {source})")
    parser.add_argument(
        "--checkpoint",
        default="kingest-checkpoints.db",
        metavar="PATH",
        help=checkpoint_help
        or "checkpoint file (default: kingest-checkpoints.db in the working directory)",
    )
    add_aws_arguments(parser)
    add_producer_arguments(parser)
    add_observability_arguments(parser)


def add_observability_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --metrics-address and the CloudWatch flags of the long-running commands."""
    group = parser.add_argument_group("metrics")
    group.add_argument(
        "--metrics-address",
        metavar="HOST:PORT",
        help="serve /metrics (Prometheus) and /health here (port 0: any free port)",
    )
    group.add_argument(
        "--cloudwatch-namespace",
        metavar="NS",
        help="publish RecordsProcessed, RecordsFailed, SuccessRate... to CloudWatch under NS",
    )
    group.add_argument(
        "--cloudwatch-interval-s",
        type=positive_float,
        metavar="S",
        help="seconds between CloudWatch publications (60)",
    )
    group.add_argument(
        "--cloudwatch-emf",
        metavar="PATH",
        help="write the CloudWatch metrics as Embedded Metric Format JSON lines to PATH "
        "('-': standard output) instead of calling PutMetricData",
    )


def with_observability(config: AgentConfig, args: argparse.Namespace) -> AgentConfig:
    """The config with the metrics flags of :func:`add_observability_arguments` applied.

    Raises:
        ConfigError: a flag's value is invalid.
    """
    from pydantic import ValidationError

    from kingest.agent.config import MetricsConfig

    metrics = config.metrics.model_dump()
    address = getattr(args, "metrics_address", None)
    if address is not None:
        metrics["address"] = address
    namespace = getattr(args, "cloudwatch_namespace", None)
    interval = getattr(args, "cloudwatch_interval_s", None)
    emf = getattr(args, "cloudwatch_emf", None)
    if namespace is not None or interval is not None or emf is not None:
        cloudwatch = dict(metrics.get("cloudwatch") or {})
        if namespace is not None:
            cloudwatch["namespace"] = namespace
        if interval is not None:
            cloudwatch["interval_s"] = interval
        if emf is not None:
            cloudwatch["mode"] = "emf"
            cloudwatch["emf_path"] = None if emf == "-" else emf
        if "namespace" not in cloudwatch:
            raise ConfigError("--cloudwatch-interval-s and --cloudwatch-emf need a namespace")
        metrics["cloudwatch"] = cloudwatch
    try:
        checked = MetricsConfig.model_validate(metrics)
    except ValidationError as exc:
        problems = [
            f"metrics.{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in exc.errors()
        ]
        raise ConfigError("; ".join(problems)) from exc
    return config.model_copy(update={"metrics": checked})


def add_producer_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the producer settings a command-line user may want to change."""
    group = parser.add_argument_group("producer")
    group.add_argument(
        "--no-aggregate",
        dest="aggregation",
        action="store_false",
        help="send one Kinesis record per input record (no KPL aggregation)",
    )
    group.add_argument(
        "--strict-order", action="store_true", help="keep per-shard order through retries"
    )
    group.add_argument("--linger-ms", type=int, help="longest wait for a fuller batch (100)")
    group.add_argument("--max-in-flight", type=int, help="PutRecords requests in flight (8)")
    group.add_argument(
        "--max-request-bytes",
        type=int,
        help="bytes per PutRecords request (5 MiB; 10 MiB on streams that allow it)",
    )
    group.add_argument(
        "--record-ttl-ms", type=int, help="give up on a record after this long (300000)"
    )
    group.add_argument(
        "--no-rate-limit",
        dest="rate_limit",
        action="store_false",
        help="do not pace each shard to its write limits",
    )
    group.add_argument(
        "--compression", choices=("none", "gzip", "zstd"), help="compress each record's data"
    )
    group.add_argument(
        "--dlq-dir", help="dead-letter directory (default: kingest-dlq in the working directory)"
    )


def producer_settings(args: argparse.Namespace) -> dict[str, Any]:
    """ProducerConfig fields from the arguments added by :func:`add_producer_arguments`."""
    mapping = {
        "aggregation": "aggregation",
        "strict_order": "strict_order",
        "linger_ms": "linger_ms",
        "max_in_flight": "max_in_flight_requests",
        "max_request_bytes": "max_request_bytes",
        "record_ttl_ms": "record_ttl_ms",
        "rate_limit": "rate_limit",
        "compression": "compression",
        "dlq_dir": "dlq_dir",
    }
    settings: dict[str, Any] = {}
    for arg, field in mapping.items():
        value = getattr(args, arg, None)
        if value is not None:
            settings[field] = value
    return settings


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1 (underscores allowed: 200_000)."""
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number greater than 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return value


def check_inputs(names: list[str]) -> str | None:
    """Why one of the named input files cannot be read (``-`` is stdin), or None."""
    for name in names:
        if name != "-":
            try:
                with open(name, "rb"):
                    pass
            except OSError as exc:
                return f"cannot read {name}: {exc.strerror or exc}"
    return None


def open_inputs(names: list[str]) -> Iterator[tuple[str, IO[bytes]]]:
    """Each input as ``(name, binary handle)``, one open at a time; none means stdin.

    Raises:
        ConfigError: a file cannot be opened.
    """
    for name in names or ["-"]:
        if name == "-":
            yield "<stdin>", sys.stdin.buffer
            continue
        try:
            handle = open(name, "rb")  # noqa: SIM115 - closed below, one file at a time
        except OSError as exc:
            raise ConfigError(f"cannot read {name}: {exc.strerror or exc}") from exc
        with handle:
            yield name, handle


def single_source_agent(args: argparse.Namespace, source: dict[str, Any]) -> AgentConfig:
    """The agent config of a shortcut command: one source, the stream and producer flags.

    Args:
        args: parsed arguments with ``stream``, ``region``, ``profile``, ``checkpoint`` and
            the producer flags of :func:`add_producer_arguments`.
        source: the source's config entry (``type`` and its fields).

    Raises:
        ConfigError: an argument is invalid; the message names each one.
    """
    from pydantic import ValidationError

    from kingest.agent.config import AgentConfig
    from kingest.config import ProducerConfig

    try:
        return AgentConfig.model_validate(
            {
                "stream": args.stream,
                "region": args.region,
                "profile": args.profile,
                "checkpoint_path": args.checkpoint,
                "producer": ProducerConfig.model_validate(producer_settings(args)),
                "sources": [source],
            }
        )
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc = list(error["loc"])
            if loc[:3] == ["sources", 0, source["type"]]:
                loc = loc[3:]  # the source's own field: named as its flag is
            problems.append(f"{'.'.join(str(part) for part in loc)}: {error['msg']}")
        raise ConfigError("; ".join(problems)) from exc
