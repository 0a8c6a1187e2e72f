"""How many events/s does ``kingest http`` take from many clients? Events/s and CPU per event.

``--clients`` concurrent clients (aiohttp, in this process) POST NDJSON batches of ``--batch``
events to ``kingest http`` for ``--seconds``, each waiting for its answer (which comes once
every event of the batch is accepted by Kinesis; with ``--ack spooled`` once it is fsync'd to
the agent's spool, with ``--ack buffered`` once it is in memory) before sending the next. The
agent sends to a stream of the embedded endpoint (kinesalite). Reported: events/s answered,
answer latency (p50/p99), and the agent's CPU (user + system, from /proc) per event.

Run: .venv/bin/python bench/http_speed.py [--clients 64] [--batch 100] [--seconds 10]
     [--ack delivered|spooled|buffered]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import orjson

from kingest.local.kinesalite import LocalKinesis

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def load(url: str, clients: int, batch: int, seconds: float) -> tuple[int, list[float]]:
    """Clients posting batches until the time is up; events answered 200 and latencies."""
    deadline = time.monotonic() + seconds
    latencies: list[float] = []
    answered = 0

    async def client(number: int, session: aiohttp.ClientSession) -> None:
        nonlocal answered
        sequence = 0
        while time.monotonic() < deadline:
            body = b"\n".join(
                orjson.dumps(
                    {
                        "event_id": f"{number}-{sequence}-{i}",
                        "event_type": "page_view",
                        "user_id": f"user_{number}",
                        "page": "/products/42",
                        "ms": 123,
                    }
                )
                for i in range(batch)
            )
            sequence += 1
            started = time.monotonic()
            async with session.post(
                url, data=body, headers={"Content-Type": "application/x-ndjson"}
            ) as response:
                answer = await response.json()
                if response.status not in (200, 202):
                    raise SystemExit(f"answer {response.status}: {answer}")
            latencies.append(time.monotonic() - started)
            answered += answer["accepted"]

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(client(n, session) for n in range(clients)))
    return answered, latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--batch", type=int, default=100, help="events per request")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--ack", choices=("delivered", "spooled", "buffered"), default="delivered")
    options = parser.parse_args()
    stream = f"http-bench-{uuid.uuid4().hex[:8]}"
    port = free_port()
    with LocalKinesis() as local, tempfile.TemporaryDirectory(prefix="kingest-http-") as work:
        local.create_stream(stream, options.shards)
        agent = subprocess.Popen(
            [sys.executable, "-m", "kingest", "http", "--listen", f"127.0.0.1:{port}",
             "--stream", stream, "--endpoint-url", local.endpoint_url,
             "--checkpoint", str(Path(work) / "checkpoints.db"),
             "--dlq-dir", str(Path(work) / "dlq"), "--no-rate-limit",
             "--ack", options.ack, *(["--spool-dir", str(Path(work) / "spool")]
                                     if options.ack == "spooled" else [])],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or agent.poll() is not None:
                        raise SystemExit("kingest http did not start") from None
                    time.sleep(0.1)
            time.sleep(0.5)
            cpu_start = cpu_seconds(agent.pid)
            started = time.monotonic()
            events, latencies = asyncio.run(
                load(
                    f"http://127.0.0.1:{port}/v1/events",
                    options.clients,
                    options.batch,
                    options.seconds,
                )
            )
            elapsed = time.monotonic() - started
            cpu = cpu_seconds(agent.pid) - cpu_start
        finally:
            agent.send_signal(signal.SIGTERM)
            _, stderr = agent.communicate(timeout=120)
    latencies.sort()
    print(
        f"kingest http --ack {options.ack}, embedded endpoint: {options.clients} clients, "
        f"{options.batch} events per request (NDJSON), {options.seconds:g} s"
    )
    print(
        f"  {events:,} events answered in {elapsed:.1f} s: {events / elapsed:,.0f} events/s; "
        f"answer latency p50 {statistics.median(latencies) * 1000:.0f} ms, "
        f"p99 {latencies[int(len(latencies) * 0.99)] * 1000:.0f} ms"
    )
    print(f"  agent CPU {cpu / events * 1e6:.1f} µs/event = {cpu / elapsed:.2f} cores busy")
    print(f"  {stderr.decode(errors='replace').strip().splitlines()[-1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
