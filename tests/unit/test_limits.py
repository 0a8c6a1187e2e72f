"""Stream limits read from DescribeStreamSummary, and the per-shard rate limiter."""

from __future__ import annotations

import time

import pytest

from kingest.producer.limits import (
    MAX_RECORD_BYTES,
    ShardRateLimiter,
    StreamInfo,
    TokenBucket,
)


def test_from_summary_defaults_when_fields_are_missing() -> None:
    info = StreamInfo.from_summary("events", {})
    assert info.name == "events"
    assert info.arn is None
    assert info.max_record_bytes == MAX_RECORD_BYTES == 1024 * 1024
    assert info.auto_distribution is False
    assert info.status == "ACTIVE"


def test_from_summary_reads_a_full_answer() -> None:
    answer = {
        "StreamDescriptionSummary": {
            "StreamName": "events",
            "StreamARN": "arn:aws:kinesis:us-east-1:123456789012:stream/events",
            "StreamStatus": "UPDATING",
            "StreamModeDetails": {"StreamMode": "PROVISIONED"},
            "MaxRecordSizeInKiB": 10240,
            "OpenShardCount": 4,
        }
    }
    info = StreamInfo.from_summary("events", answer)
    assert info.arn == "arn:aws:kinesis:us-east-1:123456789012:stream/events"
    assert info.max_record_bytes == 10 * 1024 * 1024
    assert info.status == "UPDATING"
    assert info.auto_distribution is False


@pytest.mark.parametrize("kib", [0, -5, "1024", None, 1.5])
def test_from_summary_ignores_unusable_record_sizes(kib: object) -> None:
    answer = {"StreamDescriptionSummary": {"MaxRecordSizeInKiB": kib}}
    assert StreamInfo.from_summary("s", answer).max_record_bytes == MAX_RECORD_BYTES


@pytest.mark.parametrize(
    "summary",
    [
        {"RecordDistributionStrategy": "AUTO"},
        {"StreamModeDetails": {"StreamMode": "ON_DEMAND", "RecordDistributionStrategy": "AUTO"}},
    ],
    ids=["top-level", "in-stream-mode-details"],
)
def test_auto_distribution_is_read_from_both_places(summary: dict[str, object]) -> None:
    info = StreamInfo.from_summary("s", {"StreamDescriptionSummary": summary})
    assert info.auto_distribution is True


@pytest.mark.parametrize(
    "summary",
    [
        {"RecordDistributionStrategy": "PARTITION_KEY"},
        {"StreamModeDetails": {"RecordDistributionStrategy": "PARTITION_KEY"}},
        {"StreamModeDetails": None},
    ],
)
def test_partition_key_distribution(summary: dict[str, object]) -> None:
    assert not StreamInfo.from_summary("s", {"StreamDescriptionSummary": summary}).auto_distribution


# ------------------------------------------------------------------------ token bucket


def _bucket(rate: float) -> tuple[TokenBucket, float]:
    """A fresh bucket and a `now` at (or just after) its creation: it starts full."""
    bucket = TokenBucket(rate)
    return bucket, time.monotonic()


def test_bucket_starts_full_and_empties() -> None:
    bucket, t0 = _bucket(100)
    assert bucket.ready(t0)
    assert bucket.wait_s(t0) == 0.0
    bucket.take(100, t0)
    assert not bucket.ready(t0)
    assert bucket.wait_s(t0) == pytest.approx(0.0, abs=1e-6)
    assert bucket.ready(t0 + 0.001)


def test_bucket_refills_at_its_rate() -> None:
    bucket, t0 = _bucket(1000)
    bucket.take(1000, t0)
    bucket.take(500, t0)  # debt: level -500
    assert not bucket.ready(t0 + 0.4)
    assert bucket.wait_s(t0 + 0.4) == pytest.approx(0.1, rel=1e-3)
    assert not bucket.ready(t0 + 0.499)
    assert bucket.ready(t0 + 0.501)


def test_bucket_holds_at_most_one_second() -> None:
    bucket, t0 = _bucket(10)
    bucket.take(10, t0)
    # Long idle: refilled to 10, not 100.
    bucket.take(10, t0 + 10)
    assert not bucket.ready(t0 + 10)
    assert bucket.ready(t0 + 10.05)


def test_bucket_lets_a_record_larger_than_the_rate_through_once() -> None:
    bucket, t0 = _bucket(100)
    assert bucket.ready(t0)
    bucket.take(350, t0)  # bigger than a second's worth: allowed, the level goes to -250
    assert bucket.wait_s(t0) == pytest.approx(2.5, rel=1e-3)
    assert not bucket.ready(t0 + 2.4)
    assert bucket.ready(t0 + 2.6)


def test_shard_limiter_waits_for_the_slower_of_bytes_and_records() -> None:
    limiter = ShardRateLimiter(bytes_per_s=1000, records_per_s=10)
    t0 = time.monotonic()
    for _ in range(10):
        assert limiter.ready(t0)
        limiter.take(10, t0)  # 10 records of 10 bytes: the record budget runs out first
    assert not limiter.ready(t0)
    assert limiter.wait_s(t0) == pytest.approx(0.0, abs=1e-6)
    assert limiter.ready(t0 + 0.11)
    limiter.take(2000, t0 + 0.11)  # the byte budget (full again) goes 1000 into debt
    assert not limiter.ready(t0 + 0.2)
    assert limiter.wait_s(t0 + 0.2) == pytest.approx(0.91, abs=1e-3)
    assert limiter.ready(t0 + 1.25)


def test_shard_limiter_keeps_a_shard_under_its_record_limit() -> None:
    limiter = ShardRateLimiter(bytes_per_s=1024 * 1024, records_per_s=1000)
    t0 = time.monotonic()
    now, sent = t0, 0
    while now < t0 + 2.0:
        if limiter.ready(now):
            limiter.take(100, now)
            sent += 1
        now += 0.0001
    # One second's burst plus the refill of two seconds, give or take one record.
    assert 2900 <= sent <= 3001, sent
