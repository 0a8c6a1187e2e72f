"""Per-shard queues: order, retries first, backoff, strict order, expiry and resharding."""

from __future__ import annotations

import inspect

from kingest.partition import Shard, ShardMap
from kingest.producer.batch import Pending
from kingest.producer.limits import MAX_HASH_KEY, ShardRateLimiter
from kingest.producer.shards import ShardDirectory

HALF = 2**127
QUARTER = 2**126
A = "shardId-000000000000"
B = "shardId-000000000001"


def make_pending(
    hash_key: int, *, deadline: float = 1_000.0, size: int = 10, name: str = "r"
) -> Pending:
    """A pending record, whatever the constructor currently asks (deadline, or now + ttl)."""
    params = inspect.signature(Pending).parameters
    kwargs: dict[str, object] = {
        "data": name.encode(),
        "partition_key": name,
        "explicit_hash_key": None,
        "hash_key": hash_key,
        "source": "test",
        "size": size,
    }
    if "deadline" in params:
        kwargs["deadline"] = deadline
    else:
        kwargs["now"] = 0.0
        kwargs["ttl_s"] = deadline
    pending = Pending(**kwargs)  # type: ignore[arg-type]
    assert pending.deadline == deadline
    return pending


def two_shards() -> ShardMap:
    return ShardMap([Shard(A, 0, HALF - 1), Shard(B, HALF, MAX_HASH_KEY)])


def directory(shard_map: ShardMap | None = None, limiter: bool = False) -> ShardDirectory:
    def new_limiter() -> ShardRateLimiter | None:
        return ShardRateLimiter(1000, 2) if limiter else None

    return ShardDirectory(shard_map or two_shards(), new_limiter)


def sendable(
    d: ShardDirectory, now: float, strict: bool, taken: frozenset[str] = frozenset()
) -> list[str]:
    """Ids of the sendable shards; ``taken``: shards already in the request being built."""
    if "taken" in inspect.signature(d.sendable).parameters:
        return [b.shard_id for b in d.sendable(now, strict, set(taken))]  # type: ignore[call-arg]
    return [b.shard_id for b in d.sendable(now, strict)]  # type: ignore[call-arg]


class FixedBackoff:
    """Backoff stand-in: the n-th consecutive failure waits n seconds."""

    def delay(self, failures: int) -> float:
        return float(failures)


def test_records_go_to_the_shard_owning_their_hash() -> None:
    d = directory()
    assert d.buffer_for(0).shard_id == A
    assert d.buffer_for(HALF - 1).shard_id == A
    assert d.buffer_for(HALF).shard_id == B
    assert d.buffer_for(MAX_HASH_KEY).shard_id == B
    assert d.shard(A) == Shard(A, 0, HALF - 1)
    assert d.shard("shardId-000000000009") is None


def test_push_pop_keeps_order_and_counts() -> None:
    d = directory()
    buffer = d.buffer_for(0)
    records = [make_pending(1, name=f"r{i}", size=i + 1) for i in range(5)]
    for record in records:
        buffer.push(record)
    assert d.has_records()
    assert (d.queued, d.queued_bytes) == (5, 15)
    assert buffer.peek() is records[0]
    assert [buffer.pop() for _ in range(5)] == records
    assert not buffer
    assert buffer.peek() is None
    assert (d.queued, d.queued_bytes) == (0, 0)
    assert not d.has_records()


def test_retries_go_before_new_records_in_their_own_order() -> None:
    d = directory()
    buffer = d.buffer_for(0)
    new = [make_pending(1, name=f"n{i}") for i in range(3)]
    retried = [make_pending(1, name=f"r{i}") for i in range(2)]
    buffer.push(new[0])
    buffer.push(new[1])
    buffer.push_retry(retried[0])
    buffer.push(new[2])
    buffer.push_retry(retried[1])
    assert d.queued == 5
    assert list(buffer.drain()) == [*retried, *new]
    assert d.queued == 0


def test_failed_shard_backs_off_then_success_resets() -> None:
    d = directory()
    buffer = d.buffer_for(0)
    buffer.push(make_pending(1))
    d.buffer_for(HALF).push(make_pending(HALF))
    now = 100.0
    assert set(sendable(d, now, strict=False)) == {A, B}
    d.failed(A, now, FixedBackoff())  # type: ignore[arg-type]
    assert buffer.not_before == now + 1
    assert sendable(d, now, strict=False) == [B]
    assert sendable(d, now + 0.99, strict=False) == [B]
    assert set(sendable(d, now + 1.0, strict=False)) == {A, B}
    assert now + 1 in d.blocked_until(now)
    d.failed(A, now, FixedBackoff())  # type: ignore[arg-type]
    assert buffer.not_before == now + 2, "consecutive failures back off longer"
    d.succeeded(A)
    assert buffer.failures == 0
    d.failed(A, now + 2, FixedBackoff())  # type: ignore[arg-type]
    assert buffer.not_before == now + 3, "after a success the backoff starts over"


def test_failed_never_shortens_a_backoff() -> None:
    d = directory()
    buffer = d.buffer_for(0)
    buffer.failures = 4
    d.failed(A, 10.0, FixedBackoff())  # type: ignore[arg-type]
    assert buffer.not_before == 15.0
    buffer.failures = 0
    d.failed(A, 10.0, FixedBackoff())  # type: ignore[arg-type]
    assert buffer.not_before == 15.0


def test_unknown_shard_ids_are_ignored() -> None:
    d = directory()
    d.failed("shardId-gone", 1.0, FixedBackoff())  # type: ignore[arg-type]
    d.succeeded("shardId-gone")


def test_retry_due_only_after_backoff() -> None:
    d = directory()
    buffer = d.buffer_for(0)
    buffer.push(make_pending(1))
    assert not d.retry_due(0.0), "new records are not retries"
    buffer.push_retry(make_pending(1))
    d.failed(A, 10.0, FixedBackoff())  # type: ignore[arg-type]
    assert not d.retry_due(10.5)
    assert d.retry_due(11.0)


def test_strict_mode_allows_one_record_in_flight_per_shard() -> None:
    d = directory()
    a, b = d.buffer_for(0), d.buffer_for(HALF)
    a.push(make_pending(1))
    a.push(make_pending(1))
    b.push(make_pending(HALF))
    a.started(10, 0.0)
    assert sendable(d, 0.0, strict=True) == [B]
    assert sendable(d, 0.0, strict=True, taken=frozenset({A})) == [B]
    # Without strict order, the request being built may take more of the shard.
    assert set(sendable(d, 0.0, strict=False, taken=frozenset({A}))) == {A, B}
    a.started(10, 0.0)
    d.finished(A)
    assert sendable(d, 0.0, strict=True) == [B]
    d.finished(A)
    assert set(sendable(d, 0.0, strict=True)) == {A, B}


def test_empty_buffers_are_not_sendable() -> None:
    d = directory()
    d.buffer_for(0).push(make_pending(1))
    assert sendable(d, 0.0, strict=False) == [A]


def test_rotation_changes_which_shard_comes_first() -> None:
    d = directory()
    d.buffer_for(0).push(make_pending(1))
    d.buffer_for(HALF).push(make_pending(HALF))
    first = sendable(d, 0.0, strict=False)
    d.rotate()
    second = sendable(d, 0.0, strict=False)
    assert first[0] != second[0]
    assert sorted(first) == sorted(second)


def test_rate_limited_shard_is_not_sendable() -> None:
    d = directory(limiter=True)  # 2 Kinesis records per second per shard
    buffer = d.buffer_for(0)
    for _ in range(5):
        buffer.push(make_pending(1))
    assert buffer.limiter is not None
    now = buffer.limiter._records._stamp  # the limiter's own clock origin
    buffer.started(10, now)
    buffer.started(10, now)
    d.finished(A)  # both answered: only the rate limit holds the shard back now
    d.finished(A)
    assert not sendable(d, now, strict=False)
    assert d.blocked_until(now) and d.blocked_until(now)[0] > now
    assert sendable(d, now + 0.6, strict=False)


def test_pop_expired_takes_expired_retries_and_queue_heads() -> None:
    d = directory()
    buffer = d.buffer_for(0)
    queued = [make_pending(1, deadline=t, name=f"q{t}") for t in (5.0, 6.0, 20.0)]
    retries = [make_pending(1, deadline=t, name=f"r{t}") for t in (30.0, 4.0, 40.0)]
    for record in queued:
        buffer.push(record)
    for record in retries:
        buffer.push_retry(record)
    assert d.earliest_deadline() == 4.0
    expired = d.pop_expired(10.0)
    assert sorted(r.partition_key for r in expired) == ["q5.0", "q6.0", "r4.0"]
    assert (d.queued, d.queued_bytes) == (3, 30)
    assert list(buffer.drain()) == [retries[0], retries[2], queued[2]]
    assert d.pop_expired(1_000.0) == []


def test_pop_expired_at_the_deadline_itself() -> None:
    d = directory()
    d.buffer_for(0).push(make_pending(1, deadline=5.0))
    assert d.pop_expired(4.999) == []
    assert len(d.pop_expired(5.0)) == 1
    assert d.earliest_deadline() is None


def test_pop_all_empties_every_shard() -> None:
    d = directory()
    d.buffer_for(0).push(make_pending(1))
    d.buffer_for(0).push_retry(make_pending(1))
    d.buffer_for(HALF).push(make_pending(HALF))
    assert len(d.pop_all()) == 3
    assert not d.has_records()
    assert (d.queued, d.queued_bytes) == (0, 0)


def test_replace_map_moves_records_of_closed_shards_to_their_children() -> None:
    d = directory()
    parent = d.buffer_for(0)
    low = [make_pending(QUARTER - 1, name=f"low{i}") for i in range(3)]
    high = [make_pending(QUARTER, name=f"high{i}") for i in range(3)]
    retried = make_pending(0, name="retried")
    parent.push_retry(retried)
    for lo, hi in zip(low, high, strict=True):
        parent.push(lo)
        parent.push(hi)
    other = make_pending(HALF, name="other")
    d.buffer_for(HALF).push(other)
    # Shard A splits into C (0 .. QUARTER-1) and D (QUARTER .. HALF-1).
    d.replace_map(
        ShardMap(
            [
                Shard("shardId-000000000002", 0, QUARTER - 1),
                Shard("shardId-000000000003", QUARTER, HALF - 1),
                Shard(B, HALF, MAX_HASH_KEY),
            ]
        )
    )
    assert d.queued == 8
    c, dd = d.buffer_for(0), d.buffer_for(QUARTER)
    assert (c.shard_id, dd.shard_id) == ("shardId-000000000002", "shardId-000000000003")
    # Moved records keep their order and go ahead of anything queued later.
    newer = make_pending(0, name="newer")
    c.push(newer)
    assert list(c.drain()) == [retried, *low, newer]
    assert list(dd.drain()) == high
    assert list(d.buffer_for(HALF).drain()) == [other]


def test_replace_map_keeps_the_state_of_shards_that_stay_open() -> None:
    """A map refresh must not forget a shard's backoff, failure count or rate budget."""
    d = directory(limiter=True)
    busy, idle = d.buffer_for(0), d.buffer_for(HALF)
    busy.push(make_pending(1))
    d.failed(A, 50.0, FixedBackoff())  # type: ignore[arg-type]
    d.failed(B, 50.0, FixedBackoff())  # type: ignore[arg-type]
    limiter = idle.limiter
    d.replace_map(two_shards())
    assert d.buffer_for(0) is busy
    assert d.buffer_for(HALF) is idle, "the empty buffer of an open shard was replaced"
    assert d.buffer_for(HALF).not_before == 51.0
    assert d.buffer_for(HALF).failures == 1
    assert d.buffer_for(HALF).limiter is limiter
