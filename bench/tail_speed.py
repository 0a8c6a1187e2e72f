"""Can ``kingest tail`` keep up with a busy web server? Appends at a fixed rate, measured lag.

A writer appends combined-format lines to a file at ``--rate`` lines/s for ``--seconds`` while
``kingest tail`` follows it into a stream of the embedded endpoint (kinesalite) or the null
endpoint. When the writer stops, the clock runs until the agent's checkpoint reaches the end of
the file, which happens only once every line is accepted by Kinesis (or dead-lettered). The
agent's CPU time over the run (user + system, from /proc) is divided by the lines.

It keeps up when the lag at the end stays small (well under a second) and the CPU per line
times the rate stays under one core.

Run: .venv/bin/python bench/tail_speed.py [--rate 50000] [--seconds 10] [--endpoint embedded|null]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import orjson

from kingest.local.kinesalite import LocalKinesis
from kingest.local.null_endpoint import NullEndpoint

LINE = (
    '203.0.113.{a} - - [26/May/2024:10:30:{s:02d} +0000] "GET /api/items/{i}?q=kinesis HTTP/1.1" '
    '200 {size} "https://example.com/list?page={p}" "Mozilla/5.0 (X11; Linux x86_64) '
    'AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36"\n'
)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def committed_offset(database: Path) -> int:
    if not database.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as connection:
            rows = connection.execute("SELECT value FROM checkpoints").fetchall()
    except sqlite3.Error:
        return 0
    return max((orjson.loads(value)["offset"] for (value,) in rows), default=0)


def write_at_rate(path: Path, rate: int, seconds: float, written: list[int]) -> None:
    """Append lines in 10 ms slices so the rate holds at any moment, not just on average."""
    start = time.monotonic()
    count = 0
    with path.open("a", encoding="ascii") as handle:
        while True:
            elapsed = time.monotonic() - start
            if elapsed >= seconds:
                break
            due = min(int(elapsed * rate), int(seconds * rate))
            if due > count:
                handle.write(
                    "".join(
                        LINE.format(a=i % 250, s=i % 60, i=i, size=i % 9000, p=i % 50)
                        for i in range(count, due)
                    )
                )
                handle.flush()
                count = due
            time.sleep(0.01)
    written.append(count)


def run(endpoint_url: str, stream: str, rate: int, seconds: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="kingest-tail-bench-") as work:
        directory = Path(work)
        log = directory / "access.log"
        log.touch()
        agent = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kingest",
                "tail",
                "--path",
                str(log),
                "--format",
                "combined",
                "--stream",
                stream,
                "--from",
                "beginning",
                "--endpoint-url",
                endpoint_url,
                "--checkpoint",
                str(directory / "checkpoints.db"),
                "--dlq-dir",
                str(directory / "dlq"),
                "--no-rate-limit",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            # Let start-up (imports, DescribeStream) end before the clock starts.
            deadline = time.monotonic() + 30
            while not (directory / "checkpoints.db").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.5)
            cpu_start = cpu_seconds(agent.pid)
            written: list[int] = []
            writer = threading.Thread(target=write_at_rate, args=(log, rate, seconds, written))
            writer.start()
            writer.join()
            writer_done = time.monotonic()
            size = log.stat().st_size
            while committed_offset(directory / "checkpoints.db") < size:
                if time.monotonic() - writer_done > 120:
                    raise SystemExit("the agent did not catch up within 120 s")
                time.sleep(0.02)
            lag = time.monotonic() - writer_done
            cpu = cpu_seconds(agent.pid) - cpu_start
        finally:
            agent.send_signal(signal.SIGTERM)
            _, stderr = agent.communicate(timeout=120)
        if agent.returncode != 0:
            raise SystemExit(f"kingest tail failed:\n{stderr.decode(errors='replace')}")
        lines = written[0]
        return {
            "lines": lines,
            "rate": rate,
            "lag_s": lag,
            "cpu_s": cpu,
            "cpu_us_per_line": cpu / lines * 1e6,
            "cores_at_rate": cpu / lines * rate,
            "summary": stderr.decode(errors="replace").strip().splitlines()[-1],
        }  # type: ignore[dict-item]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=50_000, help="lines appended per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long the writer runs")
    parser.add_argument("--endpoint", choices=("embedded", "null"), default="embedded")
    parser.add_argument("--shards", type=int, default=4)
    options = parser.parse_args()
    stream = f"tail-bench-{uuid.uuid4().hex[:8]}"
    with contextlib.ExitStack() as stack:
        if options.endpoint == "embedded":
            local = stack.enter_context(LocalKinesis())
            local.create_stream(stream, options.shards)
            url = local.endpoint_url
        else:
            null = stack.enter_context(NullEndpoint(shards=options.shards))
            url = null.endpoint_url
        result = run(url, stream, options.rate, options.seconds)
    print(
        f"kingest tail, {options.endpoint} endpoint: {result['lines']:,} lines appended at "
        f"{options.rate:,} lines/s for {options.seconds:g} s"
    )
    print(
        f"  caught up {result['lag_s']:.2f} s after the last append; agent CPU "
        f"{result['cpu_us_per_line']:.1f} µs/line = {result['cores_at_rate']:.2f} cores at "
        f"this rate"
    )
    print(f"  {result['summary']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
