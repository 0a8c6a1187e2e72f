"""One benchmark run in a process of its own: ``python -m kingest.bench.worker ...``.

The worker sends ``--records`` generated records with one implementation (kingest's
:class:`~kingest.producer.producer.Producer`, a plain boto3 ``put_records`` loop, or the seed's
:class:`~kingest.bench.seed_producer.MultiSourceKinesisProducer`) and prints one JSON line on
standard output with what it sent and what that cost. The runner starts it, so the process's
CPU time and memory are the run's own.

Records are generated lazily, so the worker's memory does not grow with their number: record
``i`` is the compact JSON object ``{"id": i, "run": RUN, "key": "k<i % keys>", "pad": "xx..."}``
padded to ``--record-bytes`` bytes, and its partition key is its ``key``. ``run`` tells one
run's records from another's when a stream is read back.

Measured phase: from the creation of the client/producer until it is closed. ``wall_s`` ends
when every record has been accepted or given up (``flush()`` returned, the last call returned,
the seed's queue drained and its last batch answered); ``cpu_s`` (user + system, every thread)
ends after close/stop. Interpreter start-up and imports fall outside both.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

SEED_SOURCE = "bench"
BOTO3_BATCH = 500
DUMMY_CREDENTIALS: dict[str, Any] = {
    "aws_access_key_id": "bench",
    "aws_secret_access_key": "bench",
}
# The plain loop serialises as a careful user would: compact JSON, the bytes kingest sends too.
_JSON = json.JSONEncoder(separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """What one run does."""

    implementation: str
    endpoint_url: str
    stream: str
    records: int
    record_bytes: int
    keys: int
    run_id: str
    region: str | None
    dummy_credentials: bool
    rate_limit: bool
    seed_timeout_s: float


def skeleton_bytes(run_id: str) -> int:
    """JSON size of a record before its id digits, key and padding."""
    return len(orjson.dumps({"id": 0, "run": run_id, "key": "", "pad": ""})) - 1


def min_record_bytes(records: int, keys: int, run_id: str) -> int:
    """Smallest ``--record-bytes`` that leaves no record over size."""
    return skeleton_bytes(run_id) + len(str(max(records - 1, 0))) + len(f"k{max(keys - 1, 0)}")


def generate(
    records: int, record_bytes: int, keys: int, run_id: str
) -> Iterator[tuple[dict[str, Any], str]]:
    """Yield ``(payload, partition_key)`` for each record, lazily.

    Raises:
        ValueError: record_bytes is too small for the largest id and key.
    """
    smallest = min_record_bytes(records, keys, run_id)
    if record_bytes < smallest:
        raise ValueError(f"--record-bytes must be at least {smallest} for these records")
    skeleton = skeleton_bytes(run_id)
    key_names = [f"k{j}" for j in range(keys)]
    pad = "x" * record_bytes
    for i in range(records):
        key = key_names[i % keys]
        yield (
            {
                "id": i,
                "run": run_id,
                "key": key,
                "pad": pad[: record_bytes - skeleton - len(key) - len(str(i))],
            },
            key,
        )


def _cpu() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def _proc_status_kib(field: str) -> int | None:
    """A ``VmHWM``/``VmRSS`` line of /proc/self/status in KiB (None where there is none).

    ``VmHWM`` is this process's own peak: unlike ``ru_maxrss`` it does not inherit the RSS of
    the parent that spawned it (Linux carries that over exec when the child was vforked).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


class _Measure:
    """Clock and CPU readings around the measured phase."""

    def __init__(self) -> None:
        self.rss_start_kib = _proc_status_kib("VmRSS")
        self.cpu_start = _cpu()
        self.start = time.perf_counter()
        self.delivered: float | None = None

    def mark_delivered(self) -> None:
        self.delivered = time.perf_counter()

    def finish(self) -> dict[str, Any]:
        end = time.perf_counter()
        user, system = _cpu()
        delivered = self.delivered if self.delivered is not None else end
        return {
            "wall_s": delivered - self.start,
            "close_s": end - delivered,
            "cpu_user_s": user - self.cpu_start[0],
            "cpu_sys_s": system - self.cpu_start[1],
            "cpu_s": (user - self.cpu_start[0]) + (system - self.cpu_start[1]),
            "vm_rss_start_kib": self.rss_start_kib,
        }


def run_kingest(options: WorkerOptions) -> dict[str, Any]:
    """Send with kingest's Producer: default settings except rate_limit (and the DLQ place)."""
    from kingest.producer.producer import Producer
    from kingest.runtime import tune_for_throughput

    # Every kingest command runs tuned this way; the bench measures kingest as it runs.
    tune_for_throughput()
    records = generate(options.records, options.record_bytes, options.keys, options.run_id)
    dlq_dir = tempfile.mkdtemp(prefix="kingest-bench-dlq-")
    measure = _Measure()
    producer = Producer(
        options.stream,
        endpoint_url=options.endpoint_url,
        region=options.region,
        dlq_dir=dlq_dir,
        rate_limit=options.rate_limit,
    )
    put = producer.put
    for payload, key in records:
        put(payload, key, source=SEED_SOURCE)
    producer.flush()
    measure.mark_delivered()
    producer.close()
    result = measure.finish()
    stats = producer.stats()
    config = producer.config
    failed = int(stats["total_failed"])
    if failed == 0:
        shutil.rmtree(dlq_dir, ignore_errors=True)
    accepted = int(stats["total_sent"])
    result.update(
        accepted=accepted,
        failed=failed,
        dropped=0,
        unsent=options.records - accepted - failed,
        requests=int(stats["requests"]),
        kinesis_records=int(stats["kinesis_records"]),
        bytes_sent=int(stats["bytes_sent"]),
        extra={
            "retried": stats["total_retried"],
            "retried_by_error_code": stats["retried_by_error_code"],
            "failed_requests": stats["failed_requests"],
            "aggregation": producer.aggregation,
            "dlq_dir": dlq_dir if failed else None,
        },
        settings={
            "rate_limit": config.rate_limit,
            "aggregation": config.aggregation,
            "linger_ms": config.linger_ms,
            "max_in_flight_requests": config.max_in_flight_requests,
            "max_buffer_bytes": config.max_buffer_bytes,
            "max_buffer_records": config.max_buffer_records,
            "on_buffer_full": config.on_buffer_full,
            "gc_tuned": True,
        },
    )
    return result


def run_boto3(options: WorkerOptions) -> dict[str, Any]:
    """Send with a plain boto3 ``put_records`` loop of 500 records per call, no retry of its own."""
    import boto3

    records = generate(options.records, options.record_bytes, options.keys, options.run_id)
    credentials = DUMMY_CREDENTIALS if options.dummy_credentials else {}
    encode = _JSON.encode
    measure = _Measure()
    client = boto3.client(
        "kinesis",
        endpoint_url=options.endpoint_url,
        region_name=options.region or "us-east-1",
        **credentials,
    )
    stream = options.stream
    requests = kinesis_records = accepted = failed = bytes_sent = 0
    errors: Counter[str] = Counter()
    batch: list[dict[str, Any]] = []
    batch_bytes = 0

    def send() -> None:
        nonlocal requests, kinesis_records, accepted, failed, bytes_sent
        requests += 1
        kinesis_records_sent = len(batch)
        try:
            answer = client.put_records(StreamName=stream, Records=batch)
        except Exception as exc:  # a plain loop would die here; count the batch as failed
            errors[type(exc).__name__] += 1
            failed += kinesis_records_sent
            return
        refused = int(answer["FailedRecordCount"])
        if refused:
            for entry, outcome in zip(batch, answer["Records"], strict=True):
                if outcome.get("ErrorCode"):
                    errors[str(outcome["ErrorCode"])] += 1
                else:
                    bytes_sent += len(entry["Data"]) + len(entry["PartitionKey"].encode())
        else:
            bytes_sent += batch_bytes
        accepted += kinesis_records_sent - refused
        kinesis_records += kinesis_records_sent - refused
        failed += refused

    for payload, key in records:
        data = encode(payload).encode()
        batch.append({"Data": data, "PartitionKey": key})
        batch_bytes += len(data) + len(key)
        if len(batch) >= BOTO3_BATCH:
            send()
            batch = []
            batch_bytes = 0
    if batch:
        send()
    measure.mark_delivered()
    client.close()
    result = measure.finish()
    result.update(
        accepted=accepted,
        failed=failed,
        dropped=0,
        unsent=options.records - accepted - failed,
        requests=requests,
        kinesis_records=kinesis_records,
        bytes_sent=bytes_sent,
        extra={"errors": dict(errors), "serializer": "json (stdlib), compact separators"},
    )
    return result


class _DropCounter(logging.Handler):
    """Counts the records the seed's ``send_data()`` dropped (it only logs them)."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.dropped = 0
        self.messages: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Failed to queue data"):
            self.dropped += 1
        self.messages[message[:120]] += 1


def run_seed(options: WorkerOptions) -> dict[str, Any]:
    """Send with the seed's MultiSourceKinesisProducer, feeding it and waiting for it to drain."""
    from kingest.bench.seed_producer import MultiSourceKinesisProducer

    records = generate(options.records, options.record_bytes, options.keys, options.run_id)
    credentials = DUMMY_CREDENTIALS if options.dummy_credentials else {}
    drops = _DropCounter()
    seed_log = logging.getLogger("kingest.bench.seed_producer")
    seed_log.addHandler(drops)
    seed_log.propagate = False  # a dropped record is one log line each; count them instead
    counts = {"requests": 0, "kinesis_records": 0, "accepted_entries": 0, "bytes_sent": 0}

    def before_call(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        entries = params.get("Records", [])
        counts["requests"] += 1
        context["bench_sizes"] = [
            len(e["Data"].encode() if isinstance(e["Data"], str) else e["Data"])
            + len(e["PartitionKey"].encode())
            for e in entries
        ]

    def after_call(parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        sizes = context.get("bench_sizes", [])
        outcomes = parsed.get("Records")
        if not isinstance(outcomes, list):
            return
        for size, outcome in zip(sizes, outcomes, strict=False):
            if not outcome.get("ErrorCode"):
                counts["accepted_entries"] += 1
                counts["bytes_sent"] += size

    measure = _Measure()
    deadline = time.monotonic() + options.seed_timeout_s
    producer = MultiSourceKinesisProducer(
        options.stream,
        region=options.region or "us-east-1",
        endpoint_url=options.endpoint_url,
        **credentials,
    )
    events = producer.kinesis.meta.events
    events.register("before-parameter-build.kinesis.PutRecords", before_call)
    events.register("after-call.kinesis.PutRecords", after_call)
    producer.start()
    timed_out = False
    fed = 0
    send_data = producer.send_data
    for payload, key in records:
        send_data(payload, SEED_SOURCE, partition_key=key)
        fed += 1
        if not fed & 1023 and time.monotonic() > deadline:
            timed_out = True
            break
    # The seed has no flush(): wait until the queue is empty and its last batch is answered.
    while not timed_out:
        stats = producer.stats
        if stats["total_sent"] + stats["total_failed"] >= fed - drops.dropped:
            break
        if time.monotonic() > deadline:
            timed_out = True
            break
        time.sleep(0.02)
    measure.mark_delivered()
    queued_at_stop = producer.data_queue.qsize()
    producer.stop()
    result = measure.finish()
    stats = producer.get_stats()
    accepted = int(stats["total_sent"])
    failed = int(stats["total_failed"])
    result.update(
        accepted=accepted,
        failed=failed,
        dropped=drops.dropped,
        unsent=options.records - accepted - failed - drops.dropped,
        requests=counts["requests"],
        kinesis_records=counts["accepted_entries"],
        bytes_sent=counts["bytes_sent"],
        timed_out=timed_out,
        extra={
            "fed": fed,
            "queued_at_stop": queued_at_stop,
            "sender_alive_after_stop": bool(
                producer.sender_thread is not None and producer.sender_thread.is_alive()
            ),
            "seed_timeout_s": options.seed_timeout_s,
            "seed_stats": {k: v for k, v in stats.items() if k != "by_source"},
            "seed_by_source": stats["by_source"],
            "log_errors": dict(drops.messages.most_common(5)),
        },
    )
    return result


RUNNERS = {"kingest": run_kingest, "boto3": run_boto3, "seed": run_seed}


def run(options: WorkerOptions) -> dict[str, Any]:
    """Run one implementation; the result is what the worker prints as JSON."""
    result = RUNNERS[options.implementation](options)
    result.setdefault("timed_out", False)
    result.setdefault("settings", {})
    result.update(
        implementation=options.implementation,
        records=options.records,
        vm_hwm_kib=_proc_status_kib("VmHWM"),
    )
    return result


def parse_args(argv: Sequence[str] | None = None) -> WorkerOptions:
    """Parse the worker's command line."""
    parser = argparse.ArgumentParser(
        prog="python -m kingest.bench.worker",
        description="One kingest bench run; prints its result as one JSON line.",
    )
    parser.add_argument("--implementation", required=True, choices=sorted(RUNNERS))
    parser.add_argument("--endpoint-url", required=True)
    parser.add_argument("--stream", required=True)
    parser.add_argument("--records", type=int, required=True)
    parser.add_argument("--record-bytes", type=int, default=300)
    parser.add_argument("--keys", type=int, default=5000)
    parser.add_argument("--run-id", default="bench")
    parser.add_argument("--region")
    parser.add_argument("--dummy-credentials", action="store_true")
    parser.add_argument("--rate-limit", action="store_true", help="kingest: keep rate_limit on")
    parser.add_argument("--seed-timeout", type=float, default=300.0)
    args = parser.parse_args(argv)
    return WorkerOptions(
        implementation=args.implementation,
        endpoint_url=args.endpoint_url,
        stream=args.stream,
        records=args.records,
        record_bytes=args.record_bytes,
        keys=args.keys,
        run_id=args.run_id,
        region=args.region,
        dummy_credentials=args.dummy_credentials,
        rate_limit=args.rate_limit,
        seed_timeout_s=args.seed_timeout,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m kingest.bench.worker``."""
    options = parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    result = run(options)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    status = main()
    sys.stdout.flush()
    # The seed's sender is a daemon thread that may still be blocked after a timeout.
    os._exit(status)
