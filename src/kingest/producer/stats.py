"""Per-source delivery statistics, counted per batch and never guessed.

A record counts as ``sent`` only once Kinesis accepted it and as ``failed`` only once it is in
the dead-letter queue; a retried record is counted in ``retried`` and is neither until it ends.
These are the live values behind the producer's metrics (:mod:`kingest.metrics.events` turns
them into metric families when somebody asks).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from kingest.metrics.registry import PER_RECORD_BUCKETS, Histogram

if TYPE_CHECKING:
    from kingest.producer.batch import Pending

_deadline_of = attrgetter("deadline")


@dataclass(slots=True)
class SourceStats:
    """Counters of one source."""

    received: int = 0
    sent: int = 0
    failed: int = 0
    retried: int = 0
    bytes_sent: int = 0
    dead_lettered_by_reason: Counter[str] = field(default_factory=Counter)
    retried_by_code: Counter[str] = field(default_factory=Counter)
    # Seconds puts waited for buffer room: the backpressure the source felt.
    blocked_s: float = 0.0
    # Seconds from put() to Kinesis accepting the record.
    latency: Histogram = field(default_factory=Histogram)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready view."""
        return {
            "received": self.received,
            "sent": self.sent,
            "failed": self.failed,
            "retried": self.retried,
            "bytes_sent": self.bytes_sent,
            "dead_lettered_by_reason": dict(self.dead_lettered_by_reason),
            "retried_by_error_code": dict(self.retried_by_code),
        }


class ProducerStats:
    """Thread-safe counters of a producer, per source and in total.

    Args:
        ttl_s: the records' time-to-live, from which a record's put time is known again
            (its deadline minus the time-to-live) without storing it.
    """

    def __init__(self, ttl_s: float = 0.0) -> None:
        self._lock = threading.Lock()
        self.started_at = time.monotonic()
        self.ttl_s = ttl_s
        self.by_source: dict[str, SourceStats] = {}
        self.requests = 0
        self.failed_requests = 0
        self.kinesis_records = 0
        self.retried_by_code: Counter[str] = Counter()
        # User records and bytes accepted per shard: where the stream's load lands.
        self.shard_records: Counter[str] = Counter()
        self.shard_bytes: Counter[str] = Counter()
        self.records_per_kinesis_record = Histogram(PER_RECORD_BUCKETS)

    def _source(self, name: str) -> SourceStats:
        stats = self.by_source.get(name)
        if stats is None:
            stats = self.by_source[name] = SourceStats()
        return stats

    def received(self, counts: Mapping[str, int]) -> None:
        """Count records admitted, per source."""
        with self._lock:
            for name, n in counts.items():
                self._source(name).received += n

    def delivered(
        self,
        counts: Mapping[str, int],
        sizes: Mapping[str, int],
        kinesis_records: int,
        shards: Mapping[str, tuple[int, int]] | None = None,
    ) -> None:
        """Count records Kinesis accepted, per source, and the Kinesis records carrying them.

        Args:
            counts: user records accepted, per source.
            sizes: their bytes, per source.
            kinesis_records: the Kinesis records that carried them.
            shards: user records and bytes accepted per shard id.
        """
        with self._lock:
            self.kinesis_records += kinesis_records
            for name, n in counts.items():
                source = self._source(name)
                source.sent += n
                source.bytes_sent += sizes.get(name, 0)
            if shards:
                for shard_id, (records, size) in shards.items():
                    self.shard_records[shard_id] += records
                    self.shard_bytes[shard_id] += size

    def accepted(self, source: str, records: Sequence[Pending], now: float) -> None:
        """Observe the put-to-acceptance latency of records of one source.

        A record's put time is its time-to-live deadline minus the time-to-live, so nothing is
        stored per record for this.

        Args:
            source: their source.
            records: the records, sorted by deadline (the order they were put in).
            now: when Kinesis accepted them (``time.monotonic()``, the deadlines' clock).
        """
        stats = self.by_source.get(source)
        if stats is None:
            with self._lock:
                stats = self._source(source)
        stats.latency.observe_before(records, _deadline_of, now + self.ttl_s)

    def dead_lettered(self, counts: Mapping[str, int], reason: str) -> None:
        """Count records written to the dead-letter queue, per source."""
        with self._lock:
            for name, n in counts.items():
                source = self._source(name)
                source.failed += n
                source.dead_lettered_by_reason[reason] += n

    def retried(self, counts: Mapping[str, int], code: str) -> None:
        """Count records sent again after a failed attempt, per source and error code."""
        with self._lock:
            self.retried_by_code[code] += sum(counts.values())
            for name, n in counts.items():
                source = self._source(name)
                source.retried += n
                source.retried_by_code[code] += n

    def blocked(self, source: str, seconds: float) -> None:
        """Count time a put of ``source`` waited for buffer room."""
        with self._lock:
            self._source(source).blocked_s += seconds

    def request(self, ok: bool) -> None:
        """Count one PutRecords request (ok: the service answered it, even partly failed)."""
        with self._lock:
            self.requests += 1
            if not ok:
                self.failed_requests += 1

    def snapshot(self, queue_size: int, buffered_bytes: int) -> dict[str, Any]:
        """The seed's ``get_stats()`` fields, correct, plus the rest of the counters."""
        with self._lock:
            elapsed = time.monotonic() - self.started_at
            sent = sum(s.sent for s in self.by_source.values())
            failed = sum(s.failed for s in self.by_source.values())
            received = sum(s.received for s in self.by_source.values())
            retried = sum(s.retried for s in self.by_source.values())
            done = sent + failed
            return {
                "total_received": received,
                "total_sent": sent,
                "total_failed": failed,
                "total_retried": retried,
                "success_rate": 100.0 * sent / done if done else 100.0,
                "throughput_per_sec": done / elapsed if elapsed > 0 else 0.0,
                "elapsed_time": elapsed,
                "queue_size": queue_size,
                "buffered_bytes": buffered_bytes,
                "requests": self.requests,
                "failed_requests": self.failed_requests,
                "kinesis_records": self.kinesis_records,
                "bytes_sent": sum(s.bytes_sent for s in self.by_source.values()),
                "retried_by_error_code": dict(self.retried_by_code),
                "by_source": {name: s.as_dict() for name, s in self.by_source.items()},
            }
