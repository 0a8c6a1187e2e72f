"""Does ``kingest cdc postgres`` keep up with a busy database? Changes/s and commit-to-Kinesis lag.

pgbench writers run one-row transactions (an upsert: inserts first, updates once the keys
repeat) at a fixed total rate, ``--rate`` changes/s for ``--seconds``, while ``kingest cdc
postgres`` streams them into a stream of the embedded endpoint (kinesalite). Afterwards every
record is read back: its lag is the stream's ApproximateArrivalTimestamp minus the change's
commit time (``source.ts_ms``), both from this machine's clock. The agent's CPU over the run
(user + system, from /proc) is divided by the changes.

It keeps up when every change arrives, the throughput matches the rate, and the p99 lag stays
under a second.

Run: .venv/bin/python bench/cdc_lag.py [--rate 5000] [--seconds 20] [--clients 4]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import psycopg2

from kingest.local.kinesalite import LocalKinesis

DSN = os.environ.get("KINGEST_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PGBENCH_SCRIPT = (
    "\\set id random(1, 200000)\n"
    "INSERT INTO {table} VALUES (:id, 1, 'pgbench change') "
    "ON CONFLICT (id) DO UPDATE SET v = {table}.v + 1;\n"
)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def sql(statement: str, params: tuple[Any, ...] = ()) -> list[Any]:
    with psycopg2.connect(DSN) as connection, connection.cursor() as cursor:
        connection.autocommit = True
        cursor.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


def read_back(endpoint_url: str, stream: str) -> list[dict[str, Any]]:
    output = subprocess.run(
        [sys.executable, "-m", "kingest", "read", "--stream", stream, "--until-idle", "3",
         "--envelope", "--endpoint-url", endpoint_url],
        check=True, capture_output=True,
    ).stdout  # fmt: skip
    return [orjson.loads(line) for line in output.splitlines()]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def run(endpoint_url: str, stream: str, rate: int, seconds: float, clients: int) -> None:
    name = f"kingest_bench_{uuid.uuid4().hex[:8]}"
    sql(f"create table {name} (id int primary key, v int, note text)")
    with tempfile.TemporaryDirectory(prefix="kingest-cdc-bench-") as work:
        directory = Path(work)
        script = directory / "change.sql"
        script.write_text(PGBENCH_SCRIPT.format(table=name))
        agent = subprocess.Popen(
            [sys.executable, "-m", "kingest", "cdc", "postgres", "--dsn", DSN,
             "--stream", stream, "--slot", name, "--publication", name,
             "--table", f"public.{name}", "--endpoint-url", endpoint_url,
             "--checkpoint", str(directory / "checkpoints.db"),
             "--dlq-dir", str(directory / "dlq"), "--no-rate-limit"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while not sql("select 1 from pg_replication_slots where slot_name = %s", (name,)):
                if time.monotonic() > deadline or agent.poll() is not None:
                    raise SystemExit("kingest cdc postgres did not start")
                time.sleep(0.1)
            time.sleep(1.0)
            cpu_start = cpu_seconds(agent.pid)
            started = time.time()
            # Commits are not flushed one by one, as on a busy server with group commit; the
            # rate is then the writers' choice, not the disk's.
            bench = subprocess.run(
                ["pgbench", "-n", "-h", "127.0.0.1", "-U", "postgres", "-c", str(clients),
                 "-j", str(min(clients, 2)), "-R", str(rate), "-T", str(int(seconds)),
                 "-f", str(script), "postgres"],
                check=True, capture_output=True, text=True,
                env={**os.environ, "PGOPTIONS": "-c synchronous_commit=off"},
            )  # fmt: skip
            (changes,) = sql(f"select coalesce(sum(v), 0) from {name}")[0]
            (end_lsn,) = sql("select pg_current_wal_lsn()::text")[0]
            # Caught up when the slot's confirmed position passes the last commit.
            deadline = time.monotonic() + 120
            while True:
                (caught_up,) = sql(
                    "select confirmed_flush_lsn >= %s::pg_lsn from pg_replication_slots "
                    "where slot_name = %s",
                    (end_lsn, name),
                )[0]
                if caught_up or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            cpu = cpu_seconds(agent.pid) - cpu_start
        finally:
            agent.send_signal(signal.SIGTERM)
            _, stderr = agent.communicate(timeout=120)
        records = read_back(endpoint_url, stream)
        sql(f"select pg_drop_replication_slot('{name}')")
        sql(f"drop publication {name}")
        sql(f"drop table {name}")
    if agent.returncode != 0:
        raise SystemExit(f"kingest cdc postgres failed:\n{stderr.decode(errors='replace')}")
    lags = [
        r["approximate_arrival_timestamp"] - r["data"]["source"]["ts_ms"] / 1000 for r in records
    ]
    last_arrival = max(r["approximate_arrival_timestamp"] for r in records)
    tps = [line for line in bench.stdout.splitlines() if line.startswith("tps")]
    print(
        f"kingest cdc postgres, embedded endpoint: pgbench {clients} clients at {rate:,} "
        f"changes/s for {seconds:g} s ({tps[0] if tps else 'no tps line'})"
    )
    print(
        f"  {changes:,} changes committed, {len(records):,} read back "
        f"({len(records) - changes:+,}); {len(records) / (last_arrival - started):,.0f} changes/s "
        "end to end"
    )
    print(
        f"  commit-to-Kinesis lag: p50 {statistics.median(lags) * 1000:.0f} ms, "
        f"p99 {percentile(lags, 0.99) * 1000:.0f} ms, max {max(lags) * 1000:.0f} ms"
    )
    print(
        f"  agent CPU {cpu / max(changes, 1) * 1e6:.1f} µs/change = "
        f"{cpu / max(changes, 1) * rate:.2f} cores at this rate"
    )
    print(f"  {stderr.decode(errors='replace').strip().splitlines()[-1]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=5000, help="changes per second")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long pgbench runs")
    parser.add_argument("--clients", type=int, default=4, help="pgbench clients")
    parser.add_argument("--shards", type=int, default=4)
    options = parser.parse_args()
    stream = f"cdc-bench-{uuid.uuid4().hex[:8]}"
    with LocalKinesis() as local:
        local.create_stream(stream, options.shards)
        run(local.endpoint_url, stream, options.rate, options.seconds, options.clients)
    return 0


if __name__ == "__main__":
    sys.exit(main())
