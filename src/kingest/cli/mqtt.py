"""``kingest mqtt``: readings from MQTT topics into a stream, until SIGTERM or SIGINT.

Each message becomes one record (see :mod:`kingest.sources.mqtt.source`); a QoS 1 message is
acknowledged to the broker only once its record is accepted by Kinesis or dead-lettered, so a
crash loses nothing (the persistent session keeps what was not acknowledged). On SIGTERM or
SIGINT it delivers what it holds, acknowledges it and exits 0.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from kingest.cli.common import add_agent_arguments, single_source_agent
from kingest.cli.run import run_agent
from kingest.errors import ConfigError


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``mqtt`` command."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "mqtt",
        help="subscribe to MQTT topics and send each reading, until SIGTERM or SIGINT",
        description=(
            "Subscribe to an MQTT broker with a persistent session and send each message as "
            "one reading; QoS 1 messages are acknowledged only once delivered."
        ),
    )
    parser.add_argument("--broker", required=True, metavar="HOST:PORT", help="the broker")
    parser.add_argument(
        "--topic", action="append", required=True, metavar="FILTER", help="topic filter"
    )
    parser.add_argument("--stream", required=True, help="stream name or ARN")
    parser.add_argument("--client-id", help="client id (default: kingest-SOURCE-HOSTNAME)")
    parser.add_argument("--qos", type=int, choices=(0, 1), default=1, help="QoS (default: 1)")
    parser.add_argument(
        "--protocol", choices=("5", "3.1.1"), default="5", help="MQTT version (default: 5)"
    )
    parser.add_argument("--username", help="user name")
    parser.add_argument(
        "--password-file",
        metavar="FILE",
        help="file holding the password (not on the command line)",
    )
    parser.add_argument("--tls", action="store_true", help="connect with TLS")
    parser.add_argument("--ca-file", metavar="FILE", help="CA certificates to trust (PEM)")
    parser.add_argument(
        "--topic-template",
        default="sensors/{device_type}/{device_id}",
        help="fields taken from the topic (default: sensors/{device_type}/{device_id})",
    )
    parser.add_argument(
        "--partition-key", default="{device_id}", metavar="TEMPLATE", help="default: {device_id}"
    )
    add_agent_arguments(
        parser,
        "iot_sensors",
        "checkpoint file of the agent (the broker's session holds this source's position)",
    )
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``kingest mqtt``; see the module docstring."""
    password = None
    if args.password_file:
        try:
            password = Path(args.password_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"cannot read --password-file: {exc}") from exc
    config = single_source_agent(
        args,
        {
            "type": "mqtt",
            "name": args.source,
            "broker": args.broker,
            "topics": args.topic,
            "qos": args.qos,
            "client_id": args.client_id,
            "protocol": args.protocol,
            "username": args.username,
            "password": password,
            "tls": args.tls,
            "ca_file": args.ca_file,
            "topic_template": args.topic_template,
            "partition_key": args.partition_key,
        },
    )
    return run_agent(config, args, "mqtt")
