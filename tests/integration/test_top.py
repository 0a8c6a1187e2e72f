"""``kingest top`` against a running agent: drawn in a pseudo-terminal, quit by a key or Ctrl-C,
and printed once when its output is a pipe.

The agent is a real ``kingest tail`` process serving ``/metrics``; the view must show the
exact number of lines it delivered, read from that endpoint.
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kingest.metrics.scrape import ScrapeError, fetch
from tests.agents import AgentProcess, tail_args
from tests.helpers import free_port, wait_until

pytestmark = pytest.mark.integration

LINE = (
    '10.0.{a}.{b} - - [26/May/2024:10:30:{s:02d} +0000] "GET /item/{i} HTTP/1.1" 200 {i} '
    '"https://example.com/" "top-test/1.0"\n'
)
_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
FRAME_START = "\x1b[H"  # cursor home: every frame is drawn from the top left
FRAME_END = "\x1b[J"  # clear to the screen's end: the frame is complete

# The child makes the pseudo-terminal its controlling terminal before it becomes kingest, so
# Ctrl-C typed into the terminal reaches it as SIGINT, as in a real one. (start_new_session
# makes it a session leader without one; preexec_fn would do the same but is unsafe in a
# process with threads.)
_WITH_CONTROLLING_TERMINAL = (
    "import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
    "os.execv(sys.executable, [sys.executable, '-m', 'kingest', *sys.argv[1:]])"
)


def write_lines(path: Path, start: int, stop: int) -> None:
    with path.open("a", encoding="ascii") as handle:
        handle.write(
            "".join(LINE.format(a=i % 250, b=i % 7, s=i % 60, i=i) for i in range(start, stop))
        )


def accepted(url: str, source: str) -> float | None:
    """The agent's accepted count for ``source``; None while it serves no metrics."""
    try:
        families = {family.name: family for family in fetch(url, timeout_s=2)}
    except ScrapeError:
        return None
    family = families.get("kingest_producer_accepted_records_total")
    return None if family is None else family.value(source=source)


def cells(frame: list[str], first: str) -> list[str] | None:
    """The cells of the frame's line whose first cell is ``first``."""
    for line in frame:
        words = line.split()
        if words and words[0] == first:
            return words
    return None


class Terminal:
    """``kingest ARGS`` in a pseudo-terminal of ``rows`` x ``columns``: the frames it drew, and
    keys typed into it."""

    def __init__(self, args: list[str], cwd: Path, rows: int = 50, columns: int = 160) -> None:
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR")}
        env["TERM"] = "xterm-256color"
        self.process = subprocess.Popen(
            [sys.executable, "-c", _WITH_CONTROLLING_TERMINAL, *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
        os.close(slave)
        self.output = bytearray()

    def frames(self) -> list[list[str]]:
        """Every complete frame so far, as lines of plain text."""
        text = self.output.decode("utf-8", errors="replace")
        return [
            _ESCAPE.sub("", part.split(FRAME_END)[0]).split("\r\n")
            for part in text.split(FRAME_START)[1:]
            if FRAME_END in part
        ]

    def wait_for_frame(
        self, check: Callable[[list[str]], bool], timeout_s: float, what: str
    ) -> list[str]:
        """The first frame for which ``check`` holds, reading until ``timeout_s`` passes."""
        deadline = time.monotonic() + timeout_s
        while True:
            for frame in self.frames():
                if check(frame):
                    return frame
            if not self._read(deadline):
                last = self.frames()[-1:] or [[self.output.decode(errors="replace")]]
                raise AssertionError(
                    f"no frame with {what} in {timeout_s:g}s "
                    f"(exit status {self.process.poll()}); the last:\n" + "\n".join(last[0])
                )

    def press(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def wait(self, timeout_s: float) -> int:
        """The exit status, reading what it draws meanwhile so it never blocks on output."""
        deadline = time.monotonic() + timeout_s
        while self.process.poll() is None:
            if not self._read(deadline) and self.process.poll() is None:
                raise AssertionError(f"kingest top still running after {timeout_s:g}s")
        self._drain()
        return self.process.wait()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        os.close(self.master)

    def _drain(self) -> None:
        """Read what an exited process wrote last and is still in the terminal."""
        while select.select([self.master], [], [], 0.1)[0]:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # EIO: all read
                return
            if not chunk:
                return
            self.output += chunk

    def _read(self, deadline: float) -> bool:
        """Read what is there within 0.2 s; False once the deadline passed or the terminal
        closed."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        ready, _, _ = select.select([self.master], [], [], min(remaining, 0.2))
        if ready:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # EIO: every process holding the terminal has exited
                chunk = b""
            if not chunk:
                if self.process.poll() is None:
                    self.process.wait(max(deadline - time.monotonic(), 0.1))
                return False
            self.output += chunk
        return True


@pytest.fixture
def terminals() -> Iterator[Callable[[list[str], Path], Terminal]]:
    started: list[Terminal] = []

    def start(args: list[str], cwd: Path) -> Terminal:
        terminal = Terminal(args, cwd)
        started.append(terminal)
        return terminal

    yield start
    for terminal in started:
        terminal.close()


def tail_agent(
    agents: Callable[[list[str], Path], AgentProcess],
    tmp_path: Path,
    endpoint_url: str,
    stream: str,
    source: str,
    port: int,
) -> tuple[AgentProcess, Path]:
    log = tmp_path / "access.log"
    log.touch()
    args = tail_args(stream, endpoint_url, log, "--from", "beginning", "--source", source)
    agent = agents([*args, "--metrics-address", f"127.0.0.1:{port}"], tmp_path)
    return agent, log


def test_the_live_view_waits_for_the_agent_and_shows_what_it_delivered(
    tmp_path: Path,
    endpoint_url: str,
    stream_factory: Callable[..., str],
    agents: Callable[[list[str], Path], AgentProcess],
    terminals: Callable[[list[str], Path], Terminal],
) -> None:
    stream = stream_factory(shards=2)
    source = f"top_{uuid.uuid4().hex[:8]}"
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"

    # Started before the agent: it says so, and keeps trying.
    top = terminals(
        ["top", "--metrics-address", f"127.0.0.1:{port}", "--interval", "0.2"], tmp_path
    )
    top.wait_for_frame(
        lambda frame: len(top.frames()) >= 3 and f"cannot reach {url}" in "\n".join(frame),
        30,
        "three frames saying the agent cannot be reached",
    )
    assert top.process.poll() is None

    agent, log = tail_agent(agents, tmp_path, endpoint_url, stream, source, port)
    lines = 437
    write_lines(log, 0, lines)
    wait_until(
        lambda: accepted(url, source) == lines or agent.process.poll() is not None,
        60,
        f"{lines} lines accepted",
    )
    assert agent.process.poll() is None, agent.stderr

    def shows_all_accepted(frame: list[str]) -> bool:
        row = cells(frame, source)
        return row is not None and row[4] == str(lines)

    frame = top.wait_for_frame(shows_all_accepted, 30, f"{source} with {lines} accepted")
    row = cells(frame, source)
    assert row is not None and row[2] == str(lines)  # received
    assert row[5:9] == ["0", "0", "0", "0"]  # retried, throttled, dead-lettered, invalid
    total = cells(frame, "TOTAL")
    assert total is not None and total[4] == str(lines)
    assert frame[0].startswith(f"kingest top  {url}  up ")
    assert any(line.startswith("SHARD HEAT (2 of 2 shards)") for line in frame), frame
    assert "cannot reach" not in "\n".join(frame)

    top.press(b"q")
    assert top.wait(10) == 0
    # It left the alternate screen and showed the cursor again.
    assert top.output.endswith(b"\x1b[?25h\x1b[?1049l")
    assert agent.stop() == 0, agent.stderr


def test_ctrl_c_quits_with_status_zero(
    tmp_path: Path, terminals: Callable[[list[str], Path], Terminal]
) -> None:
    port = free_port()
    top = terminals(
        ["top", "--metrics-address", f"127.0.0.1:{port}", "--interval", "0.2"], tmp_path
    )
    top.wait_for_frame(lambda frame: "cannot reach" in "\n".join(frame), 30, "a first frame")
    top.press(b"\x03")
    assert top.wait(10) == 0
    assert b"Traceback" not in top.output and b"interrupted" not in top.output


def test_piped_output_is_one_plain_frame(
    tmp_path: Path,
    endpoint_url: str,
    stream_factory: Callable[..., str],
    agents: Callable[[list[str], Path], AgentProcess],
) -> None:
    stream = stream_factory()
    source = f"top_{uuid.uuid4().hex[:8]}"
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    agent, log = tail_agent(agents, tmp_path, endpoint_url, stream, source, port)
    write_lines(log, 0, 250)
    wait_until(
        lambda: accepted(url, source) == 250 or agent.process.poll() is not None,
        60,
        "250 lines accepted",
    )
    assert agent.process.poll() is None, agent.stderr

    for extra in ([], ["--once"]):
        started = time.monotonic()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "kingest",
                "top",
                "--metrics-address",
                url,
                "--interval",
                "0.3",
                *extra,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert time.monotonic() - started >= 0.3  # two scrapes, the interval apart
        assert "\x1b" not in done.stdout
        frame = done.stdout.splitlines()
        assert frame[0].startswith(f"kingest top  {url}  up ")
        assert re.search(r"rates over \d\.\ds", frame[0]), frame[0]
        row = cells(frame, source)
        assert row is not None and row[2] == "250" and row[4] == "250", done.stdout
        assert row[1] == row[3] == "0"  # nothing new between the two scrapes
    assert agent.stop() == 0, agent.stderr


def test_once_fails_with_one_line_when_nothing_listens(tmp_path: Path) -> None:
    port = free_port()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "kingest",
            "top",
            "--once",
            "--metrics-address",
            f"127.0.0.1:{port}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == (
        f"kingest top: error: cannot reach http://127.0.0.1:{port}/metrics: Connection refused\n"
    )


def test_sigterm_restores_the_terminal(
    tmp_path: Path, terminals: Callable[[list[str], Path], Terminal]
) -> None:
    top = terminals(["top", "--metrics-address", f"127.0.0.1:{free_port()}"], tmp_path)
    top.wait_for_frame(lambda frame: "cannot reach" in "\n".join(frame), 30, "a first frame")
    top.process.send_signal(signal.SIGTERM)
    assert top.wait(10) == 0
    assert top.output.endswith(b"\x1b[?25h\x1b[?1049l")
