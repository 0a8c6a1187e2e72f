"""Orchestration of ``kingest bench``: endpoints, one worker process per run, report.

Every run is a ``python -m kingest.bench.worker`` child. The runner takes its CPU time from
``os.wait4`` (the whole process) and from the worker's own readings around the measured phase,
and its peak memory from the worker's ``VmHWM``: ``ru_maxrss`` of a child is useless here,
because Linux carries the RSS of the parent that vforked it over the ``exec``.

Endpoints:

* ``embedded``: kinesalite, started here (:class:`~kingest.local.kinesalite.LocalKinesis`),
  a fresh stream per run; afterwards the stream is read back to count what really arrived
  (:func:`kingest.bench.read_back.read_back`), then deleted.
* ``null``: :class:`~kingest.local.null_endpoint.NullEndpoint`, a fresh one per run, which
  stores nothing and so shows the producer's own cost; its counts cross-check the client's.
* ``custom``: an existing endpoint and stream (``--endpoint-url``/``--stream``); read back only
  when asked, from the run's start time, counting the run's own records.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

from kingest.bench import ENDPOINTS, IMPLEMENTATIONS
from kingest.bench.read_back import ReadBack, read_back
from kingest.errors import KinesisError, KingestError
from kingest.local.kinesalite import LocalKinesis
from kingest.local.null_endpoint import NullEndpoint
from kingest.producer.transport import LOCAL_REGION, KinesisTransport, is_loopback_url

CPU_RATIO_TARGET = 0.33
THROUGHPUT_RATIO_TARGET = 5.0
RUN_TIMEOUT_S = 3600.0
SEED_GRACE_S = 120.0  # beyond --seed-timeout: the seed's stop() alone may take 30 s

LABELS = {"kingest": "kingest", "boto3": "boto3 loop", "seed": "seed"}


@dataclass(frozen=True)
class BenchOptions:
    """What ``kingest bench`` runs."""

    records: int = 200_000
    record_bytes: int = 300
    keys: int = 5000
    shards: int = 4
    endpoints: tuple[str, ...] = ENDPOINTS
    implementations: tuple[str, ...] = IMPLEMENTATIONS
    endpoint_url: str | None = None
    stream: str | None = None
    region: str | None = None
    profile: str | None = None
    read_back: bool = False  # on a custom endpoint; the embedded one is always read back
    seed_timeout_s: float = 300.0
    rate_limit: bool = False


@dataclass
class Row:
    """One run: an implementation against an endpoint."""

    endpoint: str
    implementation: str
    records: int
    accepted: int = 0
    failed: int = 0
    dropped: int = 0
    unsent: int = 0
    records_per_s: float | None = None
    cpu_us_per_record: float | None = None
    cpu_s: float = 0.0
    wall_s: float = 0.0
    process_cpu_s: float = 0.0
    process_wall_s: float = 0.0
    requests: int = 0
    kinesis_records: int = 0
    bytes_sent: int = 0
    peak_rss_mib: float | None = None
    startup_rss_mib: float | None = None
    lost: int | None = None
    lost_basis: str = "client"
    timed_out: bool = False
    read_back: ReadBack | None = None
    endpoint_counts: dict[str, Any] | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    worker: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass
class WorkerRun:
    """A worker process's result and what the kernel says it cost."""

    result: dict[str, Any] | None
    returncode: int
    cpu_s: float
    wall_s: float
    ru_maxrss_kib: int
    stderr_tail: str
    killed: bool


# ---------------------------------------------------------------------------------- workers


def _worker_env(profile: str | None) -> dict[str, str]:
    env = dict(os.environ)
    # The worker imports this package from wherever this process did (a source checkout too).
    source_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [source_root, env.get("PYTHONPATH")]))
    if profile:
        env["AWS_PROFILE"] = profile
    return env


def run_worker(argv: Sequence[str], *, timeout_s: float, profile: str | None = None) -> WorkerRun:
    """Run one worker to its end and measure it with ``os.wait4``.

    Args:
        argv: the worker's arguments after ``python -m kingest.bench.worker``.
        timeout_s: the worker is killed after this long.
        profile: AWS profile for the worker's clients.
    """
    command = [sys.executable, "-m", "kingest.bench.worker", *argv]
    with tempfile.TemporaryFile() as stderr:
        started = time.perf_counter()
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=_worker_env(profile),
        )
        lock = threading.Lock()
        exited = False
        killed = False

        def kill() -> None:
            nonlocal killed
            with lock:
                if not exited:  # the pid is still ours: the child is not reaped yet
                    killed = True
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(process.pid, signal.SIGKILL)

        timer = threading.Timer(timeout_s, kill)
        timer.daemon = True
        timer.start()
        assert process.stdout is not None
        try:
            output = process.stdout.read()
        finally:
            process.stdout.close()
            # Wait without reaping, so that the timer cannot signal a recycled pid.
            os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)
            with lock:
                exited = True
            timer.cancel()
            _, status, usage = os.wait4(process.pid, 0)
            process.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - started
        stderr.seek(0)
        tail = stderr.read()[-4000:].decode("utf-8", "replace")
    result: dict[str, Any] | None = None
    for line in reversed(output.decode("utf-8", "replace").splitlines()):
        if line.startswith("{"):
            with contextlib.suppress(orjson.JSONDecodeError):
                result = orjson.loads(line)
            break
    return WorkerRun(
        result=result,
        returncode=process.returncode,
        cpu_s=usage.ru_utime + usage.ru_stime,
        wall_s=wall,
        ru_maxrss_kib=usage.ru_maxrss,
        stderr_tail=tail,
        killed=killed,
    )


def _worker_argv(
    options: BenchOptions,
    implementation: str,
    endpoint_url: str,
    stream: str,
    run_id: str,
    records: int,
) -> list[str]:
    argv = [
        "--implementation",
        implementation,
        "--endpoint-url",
        endpoint_url,
        "--stream",
        stream,
        "--records",
        str(records),
        "--record-bytes",
        str(options.record_bytes),
        "--keys",
        str(options.keys),
        "--run-id",
        run_id,
        "--seed-timeout",
        str(options.seed_timeout_s),
    ]
    if options.region:
        argv += ["--region", options.region]
    if is_loopback_url(endpoint_url):
        argv.append("--dummy-credentials")
    if options.rate_limit:
        argv.append("--rate-limit")
    return argv


def _row_from_worker(endpoint: str, implementation: str, records: int, run: WorkerRun) -> Row:
    row = Row(endpoint=endpoint, implementation=implementation, records=records)
    row.process_cpu_s = run.cpu_s
    row.process_wall_s = run.wall_s
    result = run.result
    if result is None or run.returncode != 0:
        reason = "killed after its time limit" if run.killed else f"exit status {run.returncode}"
        row.error = f"worker failed ({reason}): {run.stderr_tail.strip()[-1500:]}"
        if result is None:
            return row
    assert result is not None
    row.worker = result
    row.accepted = int(result["accepted"])
    row.failed = int(result["failed"])
    row.dropped = int(result["dropped"])
    row.unsent = int(result["unsent"])
    row.requests = int(result["requests"])
    row.kinesis_records = int(result["kinesis_records"])
    row.bytes_sent = int(result["bytes_sent"])
    row.cpu_s = float(result["cpu_s"])
    row.wall_s = float(result["wall_s"])
    row.timed_out = bool(result.get("timed_out"))
    row.settings = dict(result.get("settings") or {})
    if row.accepted:
        row.records_per_s = row.accepted / row.wall_s if row.wall_s > 0 else None
        row.cpu_us_per_record = row.cpu_s / row.accepted * 1e6
    hwm = result.get("vm_hwm_kib")
    row.peak_rss_mib = hwm / 1024 if isinstance(hwm, int) else run.ru_maxrss_kib / 1024
    start = result.get("vm_rss_start_kib")
    row.startup_rss_mib = start / 1024 if isinstance(start, int) else None
    row.lost = records - row.accepted
    return row


# --------------------------------------------------------------------------------- read-back


def _read_back_sync(
    endpoint_url: str,
    options: BenchOptions,
    stream: str,
    run_id: str,
    records: int,
    since: float | None,
    *,
    delete: bool,
) -> ReadBack:
    async def go() -> ReadBack:
        transport = KinesisTransport(
            endpoint_url=endpoint_url,
            region=options.region or (LOCAL_REGION if is_loopback_url(endpoint_url) else None),
            profile=options.profile,
        )
        try:
            found = await read_back(transport, stream, run_id, records, since=since)
            if delete:
                with contextlib.suppress(KinesisError):
                    await transport.call("DeleteStream", {"StreamName": stream})
            return found
        finally:
            await transport.close()

    return asyncio.run(go())


# ---------------------------------------------------------------------------------- the runs


def _new_run_id() -> str:
    return uuid.uuid4().hex[:8]


def _timeout_for(implementation: str, options: BenchOptions) -> float:
    if implementation == "seed":
        return options.seed_timeout_s + SEED_GRACE_S
    return RUN_TIMEOUT_S


def _apply_read_back(row: Row, found: ReadBack) -> None:
    row.read_back = found
    row.lost = row.records - found.distinct
    row.lost_basis = "read-back"


def run_embedded(
    options: BenchOptions, implementation: str, local: LocalKinesis, records: int
) -> Row:
    """One run against the embedded endpoint, on a stream of its own, read back afterwards."""
    run_id = _new_run_id()
    stream = f"kingest-bench-{implementation}-{run_id}"
    local.create_stream(stream, options.shards)
    url = local.endpoint_url
    run = run_worker(
        _worker_argv(options, implementation, url, stream, run_id, records),
        timeout_s=_timeout_for(implementation, options),
        profile=options.profile,
    )
    row = _row_from_worker("embedded", implementation, records, run)
    try:
        found = _read_back_sync(url, options, stream, run_id, records, None, delete=True)
    except KingestError as exc:
        row.error = (row.error + "; " if row.error else "") + f"read-back failed: {exc}"
    else:
        _apply_read_back(row, found)
    return row


def run_null(options: BenchOptions, implementation: str, records: int) -> Row:
    """One run against a fresh null endpoint; its counts cross-check the client's."""
    run_id = _new_run_id()
    stream = f"kingest-bench-{implementation}-{run_id}"
    with NullEndpoint(shards=options.shards) as endpoint:
        run = run_worker(
            _worker_argv(options, implementation, endpoint.endpoint_url, stream, run_id, records),
            timeout_s=_timeout_for(implementation, options),
            profile=options.profile,
        )
        row = _row_from_worker("null", implementation, records, run)
        counts = endpoint.stats()
    operations = counts.get("operations", {})
    row.endpoint_counts = {
        "put_records_requests": int(operations.get("PutRecords", 0)),
        "kinesis_records": int(counts.get("records", 0)),
        "body_bytes": int(counts.get("bytes", 0)),
        "requests": int(counts.get("requests", 0)),
    }
    return row


def run_custom(options: BenchOptions, implementation: str, records: int) -> Row:
    """One run against an existing endpoint and stream; read back only when asked."""
    assert options.endpoint_url is not None and options.stream is not None
    run_id = _new_run_id()
    since = time.time() - 5.0  # clocks differ a little; the run id filters the rest out
    run = run_worker(
        _worker_argv(
            options, implementation, options.endpoint_url, options.stream, run_id, records
        ),
        timeout_s=_timeout_for(implementation, options),
        profile=options.profile,
    )
    row = _row_from_worker("custom", implementation, records, run)
    if options.read_back:
        try:
            found = _read_back_sync(
                options.endpoint_url, options, options.stream, run_id, records, since, delete=False
            )
        except KingestError as exc:
            row.error = (row.error + "; " if row.error else "") + f"read-back failed: {exc}"
        else:
            _apply_read_back(row, found)
    return row


@contextlib.contextmanager
def _embedded(options: BenchOptions, needed: bool) -> Iterator[LocalKinesis | None]:
    if not needed:
        yield None
        return
    with LocalKinesis() as local:
        yield local


def run_bench(
    options: BenchOptions, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Run every implementation against every endpoint, one worker process each.

    Returns:
        The report: ``settings``, ``rows``, ``ratios`` and ``notes`` (see :func:`format_report`).

    Raises:
        ConfigError: the embedded endpoint cannot start (no Node.js), bad options.
    """
    say = progress or (lambda message: None)
    endpoints = ("custom",) if options.endpoint_url else options.endpoints
    rows: list[Row] = []
    with _embedded(options, "embedded" in endpoints) as local:
        for endpoint in endpoints:
            for implementation in options.implementations:
                say(f"running {LABELS[implementation]} on the {endpoint} endpoint")
                if endpoint == "embedded":
                    assert local is not None
                    row = run_embedded(options, implementation, local, options.records)
                elif endpoint == "null":
                    row = run_null(options, implementation, options.records)
                else:
                    row = run_custom(options, implementation, options.records)
                rows.append(row)
                say(_progress_line(row))
    return _report(options, rows, mode="bench")


def run_memory_check(
    options: BenchOptions, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """kingest alone on the null endpoint with N and 10×N records: is peak RSS bounded?"""
    say = progress or (lambda message: None)
    rows = []
    for records in (options.records, options.records * 10):
        say(f"running kingest with {records:,} records on the null endpoint")
        row = run_null(options, "kingest", records)
        rows.append(row)
        say(_progress_line(row))
    report = _report(replace(options, implementations=("kingest",)), rows, mode="memory-check")
    report["memory_check"] = _memory_check(rows)
    return report


def _progress_line(row: Row) -> str:
    if row.error and not row.worker:
        return f"  failed: {row.error.splitlines()[0][:200]}"
    rate = f"{row.records_per_s:,.0f}" if row.records_per_s else "n/a"
    return f"  {row.accepted:,} records accepted in {row.wall_s:.1f} s ({rate}/s), lost {row.lost}"


# ------------------------------------------------------------------------------------ report


def _find(rows: list[Row], endpoint: str, implementation: str) -> Row | None:
    for row in rows:
        if row.endpoint == endpoint and row.implementation == implementation:
            return row
    return None


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def _ratios(rows: list[Row]) -> list[dict[str, Any]]:
    out = []
    for endpoint in dict.fromkeys(row.endpoint for row in rows):
        mine = _find(rows, endpoint, "kingest")
        plain = _find(rows, endpoint, "boto3")
        seed = _find(rows, endpoint, "seed")
        entry: dict[str, Any] = {"endpoint": endpoint}
        if mine is not None and plain is not None:
            entry["cpu_per_record_vs_boto3"] = _ratio(
                mine.cpu_us_per_record, plain.cpu_us_per_record
            )
            entry["cpu_target_max"] = CPU_RATIO_TARGET
            entry["throughput_vs_boto3"] = _ratio(mine.records_per_s, plain.records_per_s)
            entry["throughput_target_min"] = (
                THROUGHPUT_RATIO_TARGET if endpoint == "embedded" else None
            )
        if mine is not None and seed is not None:
            entry["cpu_per_record_vs_seed"] = _ratio(mine.cpu_us_per_record, seed.cpu_us_per_record)
            entry["throughput_vs_seed"] = _ratio(mine.records_per_s, seed.records_per_s)
        entry["peak_rss_mib"] = {
            row.implementation: row.peak_rss_mib for row in (mine, plain, seed) if row
        }
        if mine is not None:
            entry["kingest_max_buffer_bytes"] = mine.settings.get("max_buffer_bytes")
            entry["kingest_max_buffer_records"] = mine.settings.get("max_buffer_records")
        out.append(entry)
    return out


def _memory_check(rows: list[Row]) -> dict[str, Any]:
    small, large = rows
    settings = small.settings or large.settings
    return {
        "records": [small.records, large.records],
        "peak_rss_mib": [small.peak_rss_mib, large.peak_rss_mib],
        "startup_rss_mib": [small.startup_rss_mib, large.startup_rss_mib],
        "max_buffer_bytes": settings.get("max_buffer_bytes"),
        "max_buffer_records": settings.get("max_buffer_records"),
    }


def _report(options: BenchOptions, rows: list[Row], *, mode: str) -> dict[str, Any]:
    kingest_settings = next((row.settings for row in rows if row.settings), {})
    return {
        "mode": mode,
        "settings": {
            "records": options.records,
            "record_bytes": options.record_bytes,
            "keys": options.keys,
            "shards": options.shards,
            "endpoints": ["custom"] if options.endpoint_url else list(options.endpoints),
            "implementations": list(options.implementations),
            "endpoint_url": options.endpoint_url,
            "stream": options.stream,
            "seed_timeout_s": options.seed_timeout_s,
            "kingest": kingest_settings or {"rate_limit": options.rate_limit},
        },
        "rows": [asdict(row) for row in rows],
        "ratios": _ratios(rows),
    }
