"""The ``kingest local`` command: runs the embedded Kinesis endpoint in the foreground."""

from __future__ import annotations

import argparse
import re
import signal
import sys
import threading
from types import FrameType
from typing import Any

from kingest.local.kinesalite import (
    KINESALITE_VERSION,
    LocalKinesis,
    ensure_installed,
    install_dir,
)

# Kinesis's own rules: stream names of 1-128 of these characters, at least one shard.
_STREAM_NAME = re.compile(r"[a-zA-Z0-9_.-]{1,128}")
MAX_SHARDS = 10_000


def parse_stream(text: str) -> tuple[str, int]:
    """Parse a ``NAME:SHARDS`` argument.

    Args:
        text: the argument as given.

    Returns:
        The stream name and its shard count.

    Raises:
        argparse.ArgumentTypeError: not NAME:SHARDS, an invalid name or a bad shard count.
    """
    name, sep, shards_text = text.rpartition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME:SHARDS (for example events:4)")
    if not _STREAM_NAME.fullmatch(name):
        raise argparse.ArgumentTypeError(
            f"{name!r} is not a stream name (1-128 characters of a-z A-Z 0-9 _ . -)"
        )
    try:
        shards = int(shards_text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"shard count {shards_text!r} of stream {name} is not a whole number"
        ) from None
    if not 1 <= shards <= MAX_SHARDS:
        raise argparse.ArgumentTypeError(
            f"shard count of stream {name} must be between 1 and {MAX_SHARDS}, not {shards}"
        )
    return name, shards


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``local`` subcommand."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "local",
        help="run the embedded Kinesis endpoint (kinesalite) in the foreground",
        description=(
            "Run a local, in-memory Kinesis endpoint until interrupted. kinesalite is installed "
            "with npm on first use; Node.js 18+ and npm are needed."
        ),
    )
    parser.add_argument(
        "--port", type=int, default=4567, help="TCP port; 0 picks a free one (default: 4567)"
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)"
    )
    parser.add_argument(
        "--stream",
        dest="streams",
        metavar="NAME:SHARDS",
        type=parse_stream,
        action="append",
        default=[],
        help="create this stream at start; repeat for more",
    )
    parser.add_argument(
        "--install-only",
        action="store_true",
        help=f"install kinesalite {KINESALITE_VERSION} if needed, print where, and exit",
    )
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Install, or serve until SIGINT/SIGTERM.

    Returns:
        0 after a signal; 1 when the emulator died on its own.

    Raises:
        ConfigError: no Node.js/npm, failed install, port in use (main prints it, exits 1).
    """
    if args.install_only:
        ensure_installed()
        print(f"kingest local: kinesalite {KINESALITE_VERSION} is installed in {install_dir()}")
        return 0
    streams: dict[str, int] = dict(args.streams)
    # Before the signal handlers: Ctrl-C during a first-time npm install is a plain interrupt.
    ensure_installed()
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    # Installed before the emulator starts so that a signal during start-up still stops it.
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    local = LocalKinesis(port=args.port, host=args.host, streams=streams)
    try:
        url = local.start()
        listed = ", ".join(f"{name}:{shards}" for name, shards in streams.items()) or "none"
        print(f"kingest local: listening on {url} (streams: {listed})", flush=True)
        process = local.process
        while not stop.wait(0.5):
            status = process.returncode() if process is not None else 0
            if status is not None:
                tail = process.log_tail(5) if process is not None else ""
                print(
                    f"kingest local: error: kinesalite exited with status {status}: {tail}",
                    file=sys.stderr,
                )
                return 1
        return 0
    finally:
        local.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
