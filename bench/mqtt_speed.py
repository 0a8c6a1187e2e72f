"""Can ``kingest mqtt`` keep up with a fleet of sensors? QoS 1 readings/s end to end, CPU each.

``mosquitto_pub -l`` publishes readings (one JSON line each, QoS 1, MQTT 5) to the machine's
Mosquitto at ``--rate`` messages/s for ``--seconds``, while ``kingest mqtt`` subscribes with
manual acknowledgement and sends them to a stream of the embedded endpoint (kinesalite). A
reader in this process follows the stream; the run ends when every reading is there. Reported:
readings/s end to end, the lag from publish to Kinesis arrival (p50/p99), and the agent's CPU
(user + system, from /proc) per reading.

It keeps up when every reading arrives, the throughput matches the rate and the lag stays small.

With ``--backlog N`` it measures the agent's own pace instead, apart from how fast this machine
can publish: N readings wait in the agent's persistent session while it is away, and the clock
runs from its start until all N are in the stream.

Run: .venv/bin/python bench/mqtt_speed.py [--rate 20000] [--seconds 10] [--broker HOST:PORT]
     .venv/bin/python bench/mqtt_speed.py --backlog 90000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import orjson

from kingest.local.kinesalite import LocalKinesis
from kingest.producer.transport import KinesisTransport
from kingest.reader import iter_batches

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def publish_at_rate(publisher: subprocess.Popen[bytes], rate: int, seconds: float) -> int:
    """Write readings to mosquitto_pub's standard input, 100 slices a second; the count."""
    assert publisher.stdin is not None
    total = int(rate * seconds)
    sent = 0
    started = time.monotonic()
    while sent < total:
        due = min(total, int((time.monotonic() - started) * rate) + 1)
        if due > sent:
            now = time.time()
            lines = b"".join(
                orjson.dumps(
                    {
                        "seq": i,
                        "device_id": f"sensor_{i % 500:03d}",
                        "device_type": "temperature",
                        "value": 20.0 + (i % 100) / 10,
                        "unit": "°C",
                        "location": "building_a",
                        "timestamp": "2024-05-26T10:30:45+00:00",
                        "sent": now,
                    }
                )
                + b"\n"
                for i in range(sent, due)
            )
            publisher.stdin.write(lines)
            publisher.stdin.flush()
            sent = due
        time.sleep(0.01)
    publisher.stdin.close()
    return total


async def follow(endpoint_url: str, stream: str, total: int, lags: list[float]) -> float:
    """Read the stream until ``total`` readings are there; the wall time of the last one."""
    transport = KinesisTransport(endpoint_url=endpoint_url, region="us-east-1")
    seen = 0
    try:
        async for batch in iter_batches(transport, stream, poll_interval_s=0.2):
            for record in batch:
                sent = orjson.loads(record.data)["sent"]
                lags.append((record.arrival or time.time()) - sent)
            seen += len(batch)
            if seen >= total:
                return time.time()
    finally:
        await transport.close()
    return time.time()


def start_agent(
    options: argparse.Namespace, endpoint_url: str, stream: str, prefix: str, directory: Path
) -> tuple[subprocess.Popen[bytes], list[bytes], threading.Thread]:
    """``kingest mqtt`` once it says it runs, and a thread collecting the rest of its stderr."""
    agent = subprocess.Popen(
        [sys.executable, "-m", "kingest", "--log-level", "INFO", "mqtt",
         "--broker", options.broker, "--topic", f"{prefix}/#", "--stream", stream,
         "--client-id", f"{prefix}-agent", "--endpoint-url", endpoint_url,
         "--checkpoint", str(directory / "checkpoints.db"),
         "--dlq-dir", str(directory / "dlq"), "--no-rate-limit"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert agent.stderr is not None
    for line in agent.stderr:
        if b"is running" in line:
            break
    else:
        raise SystemExit("kingest mqtt did not start")
    tail: list[bytes] = []
    stderr = agent.stderr
    drain = threading.Thread(target=lambda: tail.append(stderr.read()), daemon=True)
    drain.start()
    return agent, tail, drain


def stop_agent(agent: subprocess.Popen[bytes], tail: list[bytes], drain: threading.Thread) -> str:
    agent.send_signal(signal.SIGTERM)
    agent.wait(60)
    drain.join(10)
    lines = b"".join(tail).decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else ""


def publisher(options: argparse.Namespace, prefix: str) -> subprocess.Popen[bytes]:
    host, _, port = options.broker.rpartition(":")
    return subprocess.Popen(
        ["mosquitto_pub", "-h", host, "-p", port, "-q", "1", "-V", "mqttv5", "-M", "1000",
         "-t", f"{prefix}/temperature/gateway", "-l"],
        stdin=subprocess.PIPE,
    )  # fmt: skip


def follow_in_thread(
    endpoint_url: str, stream: str, total: int
) -> tuple[threading.Thread, list[float], list[float]]:
    lags: list[float] = []
    result: list[float] = []
    reader = threading.Thread(
        target=lambda: result.append(asyncio.run(follow(endpoint_url, stream, total, lags)))
    )
    reader.start()
    return reader, lags, result


def run(options: argparse.Namespace, endpoint_url: str, stream: str) -> None:
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="kingest-mqtt-bench-") as work:
        directory = Path(work)
        agent, tail, drain = start_agent(options, endpoint_url, stream, prefix, directory)
        time.sleep(1.0)
        total = int(options.rate * options.seconds)
        reader, lags, result = follow_in_thread(endpoint_url, stream, total)
        cpu_start = cpu_seconds(agent.pid)
        feeding = publisher(options, prefix)
        started = time.time()
        publish_at_rate(feeding, options.rate, options.seconds)
        feeding.wait(60)
        published_at = time.time()
        reader.join(180)
        cpu = cpu_seconds(agent.pid) - cpu_start
        summary = stop_agent(agent, tail, drain)
    if not result:
        raise SystemExit(f"the stream did not get all {total:,} readings: {summary}")
    elapsed = result[0] - started
    print(
        f"kingest mqtt, embedded endpoint: {total:,} QoS 1 readings published at "
        f"{options.rate:,}/s for {options.seconds:g} s (publishing took "
        f"{published_at - started:.1f} s)"
    )
    print(
        f"  all {len(lags):,} in the stream after {elapsed:.1f} s: {len(lags) / elapsed:,.0f} "
        f"readings/s end to end; lag publish -> Kinesis p50 "
        f"{statistics.median(lags) * 1000:.0f} ms, p99 "
        f"{sorted(lags)[int(len(lags) * 0.99)] * 1000:.0f} ms"
    )
    print(f"  agent CPU {cpu / total * 1e6:.1f} µs/reading = {cpu / total * options.rate:.2f} "
          "cores at this rate")  # fmt: skip
    print(f"  {summary}")


def run_backlog(options: argparse.Namespace, endpoint_url: str, stream: str) -> None:
    """The agent's own pace: readings waiting in its session, taken as fast as it can."""
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    total = options.backlog
    with tempfile.TemporaryDirectory(prefix="kingest-mqtt-bench-") as work:
        directory = Path(work)
        # A first run makes the persistent session and its subscription, then goes away.
        stop_agent(*start_agent(options, endpoint_url, stream, prefix, directory))
        feeding = publisher(options, prefix)
        publish_at_rate(feeding, 10 * total, 0.1)  # as fast as the broker takes them
        feeding.wait(120)
        reader, _lags, result = follow_in_thread(endpoint_url, stream, total)
        launched = time.time()
        agent, tail, drain = start_agent(options, endpoint_url, stream, prefix, directory)
        started = time.time()  # connected and subscribed: the session's readings flow now
        cpu_start = cpu_seconds(agent.pid)
        reader.join(300)
        cpu = cpu_seconds(agent.pid) - cpu_start
        summary = stop_agent(agent, tail, drain)
    if not result:
        raise SystemExit(f"the stream did not get all {total:,} readings: {summary}")
    elapsed = result[0] - started
    print(
        f"kingest mqtt, embedded endpoint: {total:,} QoS 1 readings waiting in the session, "
        f"all in the stream {elapsed:.1f} s after the agent connected "
        f"({started - launched:.1f} s of start-up before): {total / elapsed:,.0f} readings/s"
    )
    print(f"  agent CPU {cpu / total * 1e6:.1f} µs/reading")
    print(f"  {summary}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=20_000, help="readings per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to publish")
    parser.add_argument("--broker", default="127.0.0.1:1883", help="HOST:PORT")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument(
        "--backlog",
        type=int,
        metavar="N",
        help="instead: publish N readings while the agent is away, then time how fast it takes "
        "them (keep N under the broker's max_queued_messages)",
    )
    options = parser.parse_args()
    stream = f"mqtt-bench-{uuid.uuid4().hex[:8]}"
    with LocalKinesis() as local:
        local.create_stream(stream, options.shards)
        if options.backlog:
            run_backlog(options, local.endpoint_url, stream)
        else:
            run(options, local.endpoint_url, stream)
    return 0


if __name__ == "__main__":
    sys.exit(main())
