"""Kinesis service limits, the limits of one stream, and a per-shard rate limiter."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

PUT_RECORDS_MAX_ENTRIES = 500  # Kinesis limit: entries per PutRecords request
PUT_RECORDS_MAX_BYTES = 5 * 1024 * 1024  # classic Kinesis limit per request (newer streams: 10 MiB)
MAX_RECORD_BYTES = 1024 * 1024  # Kinesis default per record: data + partition key
PARTITION_KEY_MAX_CHARS = 256  # Kinesis limit: partition key length in Unicode characters
SHARD_BYTES_PER_S = 1024 * 1024  # Kinesis write limit per shard
SHARD_RECORDS_PER_S = 1000  # Kinesis write limit per shard (an aggregated record counts once)
MAX_HASH_KEY = 2**128 - 1  # hash keys are 128-bit unsigned integers


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """What the producer needs to know about its stream, read from DescribeStreamSummary.

    Attributes:
        name: stream name.
        arn: stream ARN, when the service gave one.
        max_record_bytes: largest record the stream takes (data + partition key).
        auto_distribution: True when the stream ignores partition keys
            (RecordDistributionStrategy AUTO), which makes aggregation pointless and harmful.
        status: stream status (ACTIVE, UPDATING, ...).
    """

    name: str
    arn: str | None
    max_record_bytes: int
    auto_distribution: bool
    status: str

    @classmethod
    def from_summary(cls, name: str, answer: dict[str, Any]) -> StreamInfo:
        """Build from a DescribeStreamSummary answer; fields a service lacks take defaults."""
        summary: dict[str, Any] = answer.get("StreamDescriptionSummary", {})
        kib = summary.get("MaxRecordSizeInKiB")
        max_record = int(kib) * 1024 if isinstance(kib, int) and kib > 0 else MAX_RECORD_BYTES
        mode = summary.get("StreamModeDetails") or {}
        strategy = summary.get("RecordDistributionStrategy") or mode.get(
            "RecordDistributionStrategy"
        )
        return cls(
            name=name,
            arn=summary.get("StreamARN"),
            max_record_bytes=max_record,
            auto_distribution=strategy == "AUTO",
            status=str(summary.get("StreamStatus", "ACTIVE")),
        )


class TokenBucket:
    """A bucket refilled at ``rate`` per second holding at most one second's worth.

    It may go into debt by one take (a record larger than what is left is still let through
    once the bucket is positive), so a record bigger than the rate itself never stalls forever.
    """

    __slots__ = ("_level", "_stamp", "rate")

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._level = rate
        self._stamp = time.monotonic()

    def _refill(self, now: float) -> None:
        self._level = min(self.rate, self._level + (now - self._stamp) * self.rate)
        self._stamp = now

    def ready(self, now: float) -> bool:
        """True when something may be taken now."""
        self._refill(now)
        return self._level > 0

    def take(self, amount: float, now: float) -> None:
        """Take ``amount``; the level may go below zero (debt repaid by later refills)."""
        self._refill(now)
        self._level -= amount

    def wait_s(self, now: float) -> float:
        """Seconds until the bucket is positive again (0 when it already is)."""
        self._refill(now)
        return 0.0 if self._level > 0 else (-self._level + 1e-9) / self.rate


class ShardRateLimiter:
    """Keeps one shard under its write limits (bytes and records per second)."""

    __slots__ = ("_bytes", "_records")

    def __init__(self, bytes_per_s: float, records_per_s: float) -> None:
        self._bytes = TokenBucket(bytes_per_s)
        self._records = TokenBucket(records_per_s)

    def ready(self, now: float) -> bool:
        """True when the shard may take another Kinesis record now."""
        return self._bytes.ready(now) and self._records.ready(now)

    def take(self, n_bytes: int, now: float) -> None:
        """Account one Kinesis record of ``n_bytes``."""
        self._bytes.take(n_bytes, now)
        self._records.take(1, now)

    def wait_s(self, now: float) -> float:
        """Seconds until the shard may take another record."""
        return max(self._bytes.wait_s(now), self._records.wait_s(now))
