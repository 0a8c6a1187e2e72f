"""Arguments and helpers shared by every command that talks to Kinesis."""

from __future__ import annotations

import argparse


def add_aws_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --endpoint-url, --region and --profile (the standard AWS configuration is the default)."""
    group = parser.add_argument_group("AWS")
    group.add_argument(
        "--endpoint-url",
        help="Kinesis endpoint (default: AWS_ENDPOINT_URL_KINESIS, then the region's endpoint)",
    )
    group.add_argument("--region", help="AWS region (default: AWS_REGION / profile)")
    group.add_argument("--profile", help="named profile of the AWS configuration files")
