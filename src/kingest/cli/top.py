"""``kingest top``: a live view of a running agent, read from its Prometheus endpoint.

On a terminal it redraws the whole screen every ``--interval`` seconds (on the alternate
screen, so the shell's scrollback is left as it was) until ``q`` or Ctrl-C, and exits 0. An
endpoint that cannot be reached is shown as such and tried again at the next refresh.

With ``--once``, or when standard output is not a terminal, it scrapes twice ``--interval``
apart, prints one plain frame and exits 0; when the endpoint cannot be reached it prints one
line on standard error and exits 1.

What the frame holds, and how it is computed, is :mod:`kingest.metrics.top`; how it is laid
out as text, :mod:`kingest.metrics.top_render`.
"""

from __future__ import annotations

import argparse
import codecs
import os
import select
import shutil
import signal
import sys
import termios
import time
import tty
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, TextIO

from kingest.metrics.scrape import DEFAULT_METRICS_ADDRESS, metrics_url
from kingest.metrics.top import Monitor, View
from kingest.metrics.top_render import render

# ANSI/VT100 control sequences (ECMA-48; the alternate screen is xterm's, understood by every
# terminal emulator in use).
ALTERNATE_SCREEN_ON = "\x1b[?1049h"
ALTERNATE_SCREEN_OFF = "\x1b[?1049l"
CURSOR_HIDE = "\x1b[?25l"
CURSOR_SHOW = "\x1b[?25h"
CURSOR_HOME = "\x1b[H"
CLEAR_TO_LINE_END = "\x1b[K"
CLEAR_TO_SCREEN_END = "\x1b[J"

QUIT_KEYS = b"qQ\x03"  # Ctrl-C arrives as a byte when the terminal does not turn it into SIGINT
MAX_INTERVAL_S = 3600.0
_SCRAPE_TIMEOUT_S = (1.0, 5.0)  # a scrape waits the interval, within these bounds
_PIPE_WIDTH = 120  # columns of a frame printed to a pipe or a file


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``top`` command."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "top",
        help="live view of a running agent: rates, totals, latency, buffer, shard heat",
        description=(
            "Show a running agent's metrics, read from its Prometheus endpoint: per-source "
            "rates and totals, delivery latency, retries, dead letters, the buffer and the "
            "hottest shards. q or Ctrl-C quits. Without a terminal (or with --once) it prints "
            "one frame and exits."
        ),
    )
    parser.add_argument(
        "--metrics-address",
        dest="url",
        type=_metrics_url,
        default=DEFAULT_METRICS_ADDRESS,
        metavar="HOST:PORT|URL",
        help=f"the agent's metrics endpoint (default: {DEFAULT_METRICS_ADDRESS})",
    )
    parser.add_argument(
        "--interval",
        type=_interval,
        default=1.0,
        metavar="S",
        help="seconds between refreshes, and between the two scrapes of --once (default: 1)",
    )
    parser.add_argument(
        "--once", action="store_true", help="print one frame without escapes and exit"
    )
    parser.add_argument(
        "--no-color", dest="color", action="store_false", help="no colors in the live view"
    )
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``kingest top``; see the module docstring."""
    timeout_s = min(max(args.interval, _SCRAPE_TIMEOUT_S[0]), _SCRAPE_TIMEOUT_S[1])
    monitor = Monitor(args.url, timeout_s)
    if args.once or not sys.stdout.isatty():
        return once(monitor, args.interval, sys.stdout)
    color = args.color and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"
    return live(monitor, args.interval, sys.stdout, sys.stdin, color=color)


def once(monitor: Monitor, interval_s: float, out: TextIO) -> int:
    """Scrape twice ``interval_s`` apart and print the second frame as plain text.

    Args:
        monitor: the endpoint's monitor.
        interval_s: seconds between the two scrapes (the rates are over them).
        out: where the frame goes.

    Returns:
        0, or 1 (with the reason on standard error) when a scrape failed.
    """
    view = monitor.refresh()
    if view.error is None:
        time.sleep(interval_s)
        view = monitor.refresh()
    if view.error is not None:
        print(f"kingest top: error: {view.error}", file=sys.stderr)
        return 1
    width = shutil.get_terminal_size((_PIPE_WIDTH, 0)).columns if out.isatty() else _PIPE_WIDTH
    out.write("\n".join(render(view, width, unicode=_speaks_utf8(out))) + "\n")
    out.flush()
    return 0


def live(monitor: Monitor, interval_s: float, out: TextIO, keys: TextIO, color: bool) -> int:
    """Redraw the view every ``interval_s`` until ``q``, Ctrl-C or SIGTERM.

    Args:
        monitor: the endpoint's monitor.
        interval_s: seconds from one scrape to the next.
        out: the terminal to draw on.
        keys: where keys are read from (read only when it is a terminal).
        color: style headings and errors.

    Returns:
        0.
    """
    unicode = _speaks_utf8(out)
    hint = f"q quits, every {interval_s:g}s"
    try:
        with _terminal(out, keys) as key_fd, _sigterm_interrupts():
            while True:
                next_at = time.monotonic() + interval_s
                _draw(out, monitor.refresh(), color, unicode, hint)
                if _quit_pressed(key_fd, next_at):
                    return 0
    except KeyboardInterrupt:
        return 0


def _draw(out: TextIO, view: View, color: bool, unicode: bool, hint: str) -> None:
    size = shutil.get_terminal_size()
    # One column short of the edge: a line that fills the last column leaves the cursor in
    # the pending-wrap state, where clearing to the line's end erases its last character.
    lines = render(view, size.columns - 1, size.lines, color=color, unicode=unicode, hint=hint)
    end_of_line = CLEAR_TO_LINE_END + "\r\n"
    out.write(CURSOR_HOME + end_of_line.join(lines) + CLEAR_TO_LINE_END + CLEAR_TO_SCREEN_END)
    out.flush()


def _quit_pressed(key_fd: int | None, deadline: float) -> bool:
    """Wait until ``deadline`` for a quit key; True when one came."""
    while (remaining := deadline - time.monotonic()) > 0:
        if key_fd is None:
            time.sleep(remaining)
            return False
        ready, _, _ = select.select([key_fd], [], [], remaining)
        if not ready:
            return False
        try:
            pressed = os.read(key_fd, 64)
        except OSError:
            pressed = b""
        if not pressed:  # the terminal hung up: nothing more to read, wait out the interval
            key_fd = None
        elif any(key in QUIT_KEYS for key in pressed):
            return True
    return False


@contextmanager
def _terminal(out: TextIO, keys: TextIO) -> Iterator[int | None]:
    """The alternate screen without a cursor, and keys one at a time (no Enter, no echo);
    everything as it was on the way out. Yields the key descriptor, or None when standard
    input is not a terminal."""
    key_fd = keys.fileno() if keys.isatty() else None
    saved = termios.tcgetattr(key_fd) if key_fd is not None else None
    try:
        if key_fd is not None:
            # cbreak, not raw: Ctrl-C still raises SIGINT, and output keeps its line ends.
            tty.setcbreak(key_fd)
        out.write(ALTERNATE_SCREEN_ON + CURSOR_HIDE)
        out.flush()
        yield key_fd
    finally:
        out.write(CURSOR_SHOW + ALTERNATE_SCREEN_OFF)
        out.flush()
        if key_fd is not None and saved is not None:
            termios.tcsetattr(key_fd, termios.TCSADRAIN, saved)


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Make SIGTERM stop the view like Ctrl-C, so the terminal is restored either way."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _speaks_utf8(out: TextIO) -> bool:
    try:
        return codecs.lookup(out.encoding or "ascii").name == "utf-8"
    except LookupError:
        return False


def _metrics_url(text: str) -> str:
    try:
        return metrics_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _interval(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, not {text!r}") from None
    if not 0 < seconds <= MAX_INTERVAL_S:
        raise argparse.ArgumentTypeError(f"expected 0 < S <= {MAX_INTERVAL_S:g}, not {text}")
    return seconds
