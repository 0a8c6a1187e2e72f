"""Every metric kingest exposes, named and typed in one place, read from the live statistics.

The counting itself happens per batch where the work is done (:class:`~kingest.sources.base.
SourceStats` for what a source read, :class:`~kingest.producer.stats.ProducerStats` for what
became of it); the functions here turn those values into metric families when a scrape, a
CloudWatch flush or ``kingest top`` asks. The names follow Prometheus conventions
(``kingest_<subject>_<noun>_<unit>[_total]``) and some are a contract with operators'
dashboards: ``kingest_source_received_records_total{source}``,
``kingest_producer_accepted_records_total{source}``,
``kingest_producer_retried_records_total{source,error_code}``,
``kingest_dlq_records_total{source,reason}``, ``kingest_producer_buffered_records`` and
``kingest_producer_ack_latency_seconds``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from kingest import __version__
from kingest.metrics.registry import (
    LATENCY_BUCKETS_S,
    MetricFamily,
    MetricType,
    empty_snapshot,
)

if TYPE_CHECKING:
    from kingest.metrics.cloudwatch import CloudWatchExporter
    from kingest.producer.core import ProducerCore
    from kingest.sources.base import SourceStats

# Retry codes that mean the stream (or its KMS key) refused the rate: the shard-heat signal.
THROTTLING_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "Throttling",
        "KMSThrottlingException",
        "LimitExceededException",
        "SlowDown",
    }
)

_COUNTER = MetricType.COUNTER
_GAUGE = MetricType.GAUGE
_HISTOGRAM = MetricType.HISTOGRAM


def source_families(sources: Sequence[tuple[str, SourceStats]]) -> list[MetricFamily]:
    """What each source read: received, parsed, refused as invalid (by reason)."""
    received = MetricFamily(
        "kingest_source_received_records_total",
        _COUNTER,
        "Inputs read by the source (lines, messages, row changes, events).",
    )
    parsed = MetricFamily(
        "kingest_source_parsed_records_total",
        _COUNTER,
        "Inputs turned into records and handed to the producer.",
    )
    invalid = MetricFamily(
        "kingest_source_invalid_records_total",
        _COUNTER,
        "Inputs refused by the source (unparsable, or breaking a schema or rule), by reason.",
    )
    lag = MetricFamily(
        "kingest_source_lag_seconds",
        _GAUGE,
        "Seconds from the newest change's commit in the database to the source reading it "
        "(change-capture sources; with the delivery latency, the end-to-end delay).",
    )
    spooled = MetricFamily(
        "kingest_source_spooled_events",
        _GAUGE,
        "Events on disk in the source's spool and not yet committed (sources with a spool).",
    )
    spool_bytes = MetricFamily(
        "kingest_source_spool_bytes", _GAUGE, "Size of the source's spool on disk."
    )
    for name, stats in sources:
        labels = (("source", name),)
        received.add(stats.received, labels)
        parsed.add(stats.parsed, labels)
        for reason, count in sorted(stats.invalid_by_reason.items()):
            invalid.add(count, (("source", name), ("reason", reason)))
        if stats.lag_s is not None:
            lag.add(stats.lag_s, labels)
        if stats.spooled_events is not None:
            spooled.add(stats.spooled_events, labels)
        if stats.spool_bytes is not None:
            spool_bytes.add(stats.spool_bytes, labels)
    return [received, parsed, invalid, lag, spooled, spool_bytes]


def producer_families(
    cores: Sequence[ProducerCore], source_names: Iterable[str] = ()
) -> list[MetricFamily]:
    """What the producers did with the records, per source, per stream and per shard.

    Args:
        cores: the producers (one per stream).
        source_names: sources to show even before they put anything (counters at 0).
    """
    put = MetricFamily(
        "kingest_producer_put_records_total",
        _COUNTER,
        "Records admitted into the producer's buffer.",
    )
    accepted = MetricFamily(
        "kingest_producer_accepted_records_total",
        _COUNTER,
        "Records Kinesis accepted (a dead-lettered record is never counted here).",
    )
    accepted_bytes = MetricFamily(
        "kingest_producer_accepted_bytes_total",
        _COUNTER,
        "Bytes of records Kinesis accepted (data plus partition key, before aggregation).",
    )
    retried = MetricFamily(
        "kingest_producer_retried_records_total",
        _COUNTER,
        "Records sent again after a failed attempt, by the error code of the failure.",
    )
    throttled = MetricFamily(
        "kingest_producer_throttled_records_total",
        _COUNTER,
        "Records sent again because the stream refused the rate (throttling error codes).",
    )
    dead_lettered = MetricFamily(
        "kingest_dlq_records_total",
        _COUNTER,
        "Records written to the dead-letter queue, by reason.",
    )
    blocked = MetricFamily(
        "kingest_producer_blocked_seconds_total",
        _COUNTER,
        "Seconds the source's puts waited for buffer room (backpressure slowing it down).",
    )
    latency = MetricFamily(
        "kingest_source_delivery_latency_seconds",
        _HISTOGRAM,
        "Seconds from a source handing a record to the producer to Kinesis accepting it.",
    )
    ack_latency = MetricFamily(
        "kingest_producer_ack_latency_seconds",
        _HISTOGRAM,
        "Seconds from put to Kinesis accepting the record, over every source.",
    )
    total_latency = empty_snapshot(LATENCY_BUCKETS_S)
    seen: set[str] = set()
    for core in cores:
        for name, stats in sorted(core.stats.by_source.items()):
            seen.add(name)
            labels = (("source", name),)
            put.add(stats.received, labels)
            accepted.add(stats.sent, labels)
            accepted_bytes.add(stats.bytes_sent, labels)
            throttled_count = 0
            for code, count in sorted(stats.retried_by_code.items()):
                retried.add(count, (("source", name), ("error_code", code)))
                if code in THROTTLING_CODES:
                    throttled_count += count
            throttled.add(throttled_count, labels)
            for reason, count in sorted(stats.dead_lettered_by_reason.items()):
                dead_lettered.add(count, (("source", name), ("reason", reason)))
            blocked.add(stats.blocked_s, labels)
            snapshot = stats.latency.snapshot()
            latency.add_histogram(snapshot, labels)
            total_latency = total_latency.merged(snapshot)
    for name in sorted(set(source_names) - seen):
        labels = (("source", name),)
        put.add(0, labels)
        accepted.add(0, labels)
        accepted_bytes.add(0, labels)
        throttled.add(0, labels)
        blocked.add(0, labels)
        latency.add_histogram(empty_snapshot(LATENCY_BUCKETS_S), labels)
    ack_latency.add_histogram(total_latency)
    families = [put, accepted, accepted_bytes, retried, throttled, dead_lettered, blocked]
    families.append(latency)
    families.append(ack_latency)
    families.extend(_stream_families(cores))
    return families


def _stream_families(cores: Sequence[ProducerCore]) -> list[MetricFamily]:
    """The buffer, requests and shards of each stream's producer."""
    buffered = MetricFamily(
        "kingest_producer_buffered_records",
        _GAUGE,
        "Records held by the producers, not yet accepted or dead-lettered.",
    )
    buffered_bytes = MetricFamily(
        "kingest_producer_buffered_bytes", _GAUGE, "Bytes of the records held by the producers."
    )
    fill = MetricFamily(
        "kingest_producer_buffer_fill_ratio",
        _GAUGE,
        "How full the fullest producer buffer is, 0 to 1 (records or bytes, the larger).",
    )
    in_flight = MetricFamily(
        "kingest_producer_in_flight_requests", _GAUGE, "PutRecords requests awaiting an answer."
    )
    requests = MetricFamily(
        "kingest_producer_requests_total",
        _COUNTER,
        "PutRecords requests, by stream and outcome (ok: answered, even if partly failed).",
    )
    kinesis_records = MetricFamily(
        "kingest_producer_kinesis_records_total",
        _COUNTER,
        "Kinesis records accepted (an aggregated one carries many user records).",
    )
    per_record = MetricFamily(
        "kingest_producer_user_records_per_kinesis_record",
        _HISTOGRAM,
        "User records carried by each accepted Kinesis record.",
    )
    shard_records = MetricFamily(
        "kingest_producer_shard_records_total",
        _COUNTER,
        "User records accepted, by the shard that stored them.",
    )
    shard_bytes = MetricFamily(
        "kingest_producer_shard_bytes_total",
        _COUNTER,
        "Bytes of Kinesis records accepted (what the shard's write limit counts), by shard.",
    )
    total_records = total_bytes = 0
    fullest = 0.0
    flights = 0
    for core in cores:
        gate = core.gate
        stats = core.stats
        stream = (("stream", core.stream),)
        total_records += gate.records
        total_bytes += gate.bytes
        fullest = max(fullest, gate.fill)
        flights += core.sender.in_flight
        requests.add(stats.requests - stats.failed_requests, (*stream, ("outcome", "ok")))
        requests.add(stats.failed_requests, (*stream, ("outcome", "failed")))
        kinesis_records.add(stats.kinesis_records, stream)
        per_record.add_histogram(stats.records_per_kinesis_record.snapshot(), stream)
        for shard_id, count in sorted(stats.shard_records.items()):
            shard_records.add(count, (*stream, ("shard", shard_id)))
            shard_bytes.add(stats.shard_bytes[shard_id], (*stream, ("shard", shard_id)))
    buffered.add(total_records)
    buffered_bytes.add(total_bytes)
    fill.add(fullest)
    in_flight.add(flights)
    return [
        buffered,
        buffered_bytes,
        fill,
        in_flight,
        requests,
        kinesis_records,
        per_record,
        shard_records,
        shard_bytes,
    ]


def process_families(started_at: float) -> list[MetricFamily]:
    """The process: its version and when it started (Unix time)."""
    info = MetricFamily("kingest_build_info", _GAUGE, "The kingest version running (always 1).")
    info.add(1, (("version", __version__),))
    start = MetricFamily(
        "kingest_agent_start_time_seconds", _GAUGE, "When the agent started, in Unix time."
    )
    start.add(started_at)
    uptime = MetricFamily("kingest_agent_uptime_seconds", _GAUGE, "Seconds since the start.")
    uptime.add(max(time.time() - started_at, 0.0))
    return [info, start, uptime]


def cloudwatch_families(exporter: CloudWatchExporter) -> list[MetricFamily]:
    """How the CloudWatch publication goes: calls by outcome, datums sent and held back."""
    calls = MetricFamily(
        "kingest_cloudwatch_requests_total", _COUNTER, "PutMetricData calls, by outcome."
    )
    calls.add(exporter.calls - exporter.failed_calls, (("outcome", "ok"),))
    calls.add(exporter.failed_calls, (("outcome", "failed"),))
    sent = MetricFamily(
        "kingest_cloudwatch_datums_total",
        _COUNTER,
        "CloudWatch datums published (or written as EMF), and refused for good.",
    )
    sent.add(exporter.datums_sent, (("outcome", "sent"),))
    sent.add(exporter.datums_dropped, (("outcome", "dropped"),))
    pending = MetricFamily(
        "kingest_cloudwatch_pending_datums",
        _GAUGE,
        "Datums held for the next publication because a call failed.",
    )
    pending.add(exporter.pending_datums)
    return [calls, sent, pending]
