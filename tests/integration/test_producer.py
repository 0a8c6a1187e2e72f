"""The producer's promises against the embedded Kinesis endpoint, without injected faults.

Every test writes to a stream of its own and reads it back straight from the endpoint. Payloads
carry a unique id, so "every record arrived" is a set comparison.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from kingest.errors import (
    ConfigError,
    KinesisError,
    ProducerClosedError,
    StreamNotFoundError,
    TransportError,
)
from kingest.partition import Shard, ShardMap, default_partition_key, hash_key_of
from kingest.producer.limits import MAX_RECORD_BYTES
from kingest.producer.producer import AsyncProducer, Producer
from kingest.record import DlqReason, Outcome, Record, RecordFuture, RecordResult
from tests.faultproxy import FaultPlan, FaultProxy
from tests.helpers import (
    ReadRecord,
    call,
    dlq_entries,
    ids_read,
    kcl_visible,
    list_shards,
    make_payload,
    misplaced,
    payload_id,
    read_stream,
    wait_until,
)

pytestmark = pytest.mark.integration

FAST = {"linger_ms": 10, "retry_base_ms": 20, "retry_max_ms": 200}


def _producer(endpoint_url: str, stream: str, dlq: Path, **settings: Any) -> Producer:
    return Producer(stream, endpoint_url=endpoint_url, dlq_dir=str(dlq), **{**FAST, **settings})


@contextlib.contextmanager
def producing(
    endpoint_url: str, stream: str, dlq: Path, close_timeout: float = 15, **settings: Any
) -> Iterator[Producer]:
    """A producer closed with a bounded timeout, so a producer bug fails a test, never hangs it."""
    producer = _producer(endpoint_url, stream, dlq, **settings)
    try:
        yield producer
    finally:
        producer.close(timeout=close_timeout)


def _open_map(endpoint_url: str, stream: str) -> ShardMap:
    return ShardMap(
        Shard(s.shard_id, s.start, s.end) for s in list_shards(endpoint_url, stream) if not s.closed
    )


def _check_results_point_at_records(
    futures: list[RecordFuture], ids: list[str], records: list[ReadRecord]
) -> None:
    """Each delivered future names the shard, sequence and sub-sequence that really hold it."""
    stored = {(r.shard_id, r.sequence_number, r.sub_sequence_number): r for r in records}
    for future, record_id in zip(futures, ids, strict=True):
        result = future.result(0)
        key = (result.shard_id, result.sequence_number, result.sub_sequence_number)
        assert key in stored, f"{record_id}: its result {key} names no stored record"
        assert payload_id(stored[key].data) == record_id


# ------------------------------------------------------------------------ happy path


@pytest.mark.parametrize("shards", [1, 4])
@pytest.mark.parametrize("aggregation", [True, False], ids=["aggregated", "plain"])
@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_every_record_delivered_and_read_back(
    endpoint_url: str,
    stream_factory: Any,
    tmp_path: Path,
    flavour: str,
    aggregation: bool,
    shards: int,
) -> None:
    stream = stream_factory(shards=shards)
    run_id = uuid.uuid4().hex
    n = 600
    keys = [f"device-{i % 53}" for i in range(n)]
    ids = [f"{run_id}-{i}" for i in range(n)]
    settings = {**FAST, "aggregation": aggregation, "dlq_dir": str(tmp_path / "dlq")}

    if flavour == "sync":
        with producing(endpoint_url, stream, tmp_path / "dlq", aggregation=aggregation) as producer:
            assert producer.aggregation is aggregation
            futures = [
                producer.put(make_payload(run_id, i, pad="x" * 40), keys[i], source="happy")
                for i in range(n)
            ]
            producer.flush(timeout=20)
            assert all(f.done() for f in futures), "flush() returned before every record was done"
        stats = producer.stats()
    else:

        async def go() -> tuple[list[RecordFuture], list[RecordResult], dict[str, Any]]:
            producer = AsyncProducer(stream, endpoint_url=endpoint_url, **settings)
            await producer.start()
            try:
                assert producer.aggregation is aggregation
                futures = [
                    await producer.put(
                        make_payload(run_id, i, pad="x" * 40), keys[i], source="happy"
                    )
                    for i in range(n)
                ]
                await asyncio.wait_for(producer.flush(), 20)
                assert all(f.done() for f in futures)
                results = [await f for f in futures]
            finally:
                await producer.close(timeout=15)
            return futures, results, producer.stats()

        futures, _, stats = asyncio.run(go())

    shard_map = _open_map(endpoint_url, stream)
    for future, key in zip(futures, keys, strict=True):
        result = future.result(0)
        assert result.outcome is Outcome.DELIVERED, result
        assert result.delivered
        assert result.shard_id and result.sequence_number
        assert result.attempts == 1
        # Placement: the shard the result names owns the key's hash (what the KCL checks).
        assert result.shard_id == shard_map.shard_for(hash_key_of(key)).shard_id

    records = read_stream(endpoint_url, stream)
    read_ids = ids_read(records)
    assert set(read_ids) == set(ids)
    assert len(read_ids) == n, "no fault was injected, yet some records were stored twice"
    assert not misplaced(records, list_shards(endpoint_url, stream))
    _check_results_point_at_records(futures, ids, records)
    # Per-shard order of one key is put order when nothing fails.
    for key in set(keys):
        seen = [
            int(r.data.split(b'"i":')[1].split(b",")[0]) for r in records if r.partition_key == key
        ]
        assert seen == sorted(seen)

    assert stats["total_received"] == n
    assert stats["total_sent"] == n
    assert stats["total_failed"] == 0
    assert stats["queue_size"] == 0
    assert stats["by_source"]["happy"]["sent"] == n
    if aggregation:
        assert stats["kinesis_records"] <= n // 10, stats["kinesis_records"]
    else:
        assert stats["kinesis_records"] == n


def test_put_record_and_default_partition_key(
    endpoint_url: str, stream_factory: Any, tmp_path: Path
) -> None:
    """Records without a key get a stable content-derived key; bytes and str payloads pass as is."""
    stream = stream_factory(shards=2)
    with producing(endpoint_url, stream, tmp_path) as producer:
        f1 = producer.put(b"raw-bytes-\x00\xff")
        f2 = producer.put("text-\u00e9")
        f3 = producer.put_record(Record(source="rec", payload={"a": 1}, partition_key="pk-1"))
        producer.flush(timeout=10)
    assert all(f.result(0).delivered for f in (f1, f2, f3))
    stored = {r.data: r.partition_key for r in read_stream(endpoint_url, stream)}
    assert stored[b"raw-bytes-\x00\xff"] == default_partition_key(b"raw-bytes-\x00\xff")
    assert stored["text-\u00e9".encode()] == default_partition_key("text-\u00e9".encode())
    assert stored[b'{"a":1}'] == "pk-1"
    assert producer.stats()["by_source"]["rec"]["sent"] == 1


def test_explicit_hash_key_places_aggregated_records(
    endpoint_url: str, stream_factory: Any, tmp_path: Path
) -> None:
    """Explicit hash keys decide the shard, also for sub-records of an aggregate."""
    stream = stream_factory(shards=4)
    run_id = uuid.uuid4().hex
    shards = [s for s in list_shards(endpoint_url, stream) if not s.closed]
    hash_keys = [str(s.start) for s in shards] + [str(s.end) for s in shards]
    with producing(endpoint_url, stream, tmp_path) as producer:
        futures = [
            producer.put(make_payload(run_id, i), "same-key", explicit_hash_key=hash_keys[i % 8])
            for i in range(200)
        ]
        producer.flush(timeout=10)
    by_start = {str(s.start): s.shard_id for s in shards} | {str(s.end): s.shard_id for s in shards}
    for i, future in enumerate(futures):
        assert future.result(0).shard_id == by_start[hash_keys[i % 8]]
    records = read_stream(endpoint_url, stream)
    assert set(ids_read(records)) == {f"{run_id}-{i}" for i in range(200)}
    for record in records:
        if record.explicit_hash_key is not None:  # inside an aggregate: the KCL checks it
            assert by_start[record.explicit_hash_key] == record.shard_id


@pytest.mark.parametrize("aggregation", [True, False], ids=["aggregated", "plain"])
def test_gzip_compression_round_trips(
    endpoint_url: str, stream_factory: Any, tmp_path: Path, aggregation: bool
) -> None:
    stream = stream_factory(shards=2)
    run_id = uuid.uuid4().hex
    with producing(
        endpoint_url, stream, tmp_path, aggregation=aggregation, compression="gzip"
    ) as producer:
        futures = [producer.put(make_payload(run_id, i), f"k{i % 5}") for i in range(100)]
        producer.flush(timeout=10)
    assert all(f.result(0).delivered for f in futures)
    stored = [gzip.decompress(r.data) for r in read_stream(endpoint_url, stream)]
    assert {payload_id(d) for d in stored} == {f"{run_id}-{i}" for i in range(100)}


def test_statistics_per_source(endpoint_url: str, stream_factory: Any, tmp_path: Path) -> None:
    stream = stream_factory(shards=2)
    sizes = {"web": 0, "iot": 0}
    counts = {"web": 0, "iot": 0}
    with producing(endpoint_url, stream, tmp_path) as producer:
        for i in range(300):
            source = "web" if i % 3 else "iot"
            payload = {"i": i, "source": source}
            key = f"k{i % 11}"
            producer.put(payload, key, source=source)
            sizes[source] += len(orjson.dumps(payload)) + len(key)
            counts[source] += 1
        producer.put({"bad": 1}, "", source="web")
        producer.flush(timeout=10)
        stats = producer.stats()
    by_source = stats["by_source"]
    for source in ("web", "iot"):
        assert by_source[source]["sent"] == counts[source]
        assert by_source[source]["bytes_sent"] == sizes[source]
        assert by_source[source]["retried"] == 0
    assert by_source["web"]["failed"] == 1
    assert by_source["web"]["dead_lettered_by_reason"] == {"invalid_partition_key": 1}
    assert stats["total_sent"] == 300
    assert stats["total_failed"] == 1
    assert stats["bytes_sent"] == sum(sizes.values())
    assert stats["success_rate"] == pytest.approx(100 * 300 / 301)
    assert stats["requests"] >= 1
    assert stats["failed_requests"] == 0


# ------------------------------------------------------------------------ bad input


def test_bad_records_are_dead_lettered_at_once(
    endpoint_url: str, stream_factory: Any, tmp_path: Path
) -> None:
    stream = stream_factory(shards=1)
    dlq_dir = tmp_path / "dlq"
    big = b"x" * (MAX_RECORD_BYTES + 1)
    bad: list[tuple[str, dict[str, Any], DlqReason]] = [
        ("empty-key", {"partition_key": ""}, DlqReason.INVALID_PARTITION_KEY),
        ("long-key", {"partition_key": "k" * 257}, DlqReason.INVALID_PARTITION_KEY),
        (
            "letters-ehk",
            {"partition_key": "k", "explicit_hash_key": "12a"},
            DlqReason.INVALID_PARTITION_KEY,
        ),
        (
            "negative-ehk",
            {"partition_key": "k", "explicit_hash_key": "-1"},
            DlqReason.INVALID_PARTITION_KEY,
        ),
        (
            "huge-ehk",
            {"partition_key": "k", "explicit_hash_key": str(2**128)},
            DlqReason.INVALID_PARTITION_KEY,
        ),
        ("too-large", {"partition_key": "big"}, DlqReason.RECORD_TOO_LARGE),
    ]
    with producing(endpoint_url, stream, dlq_dir) as producer:
        futures = {}
        for name, kwargs, _ in bad:
            payload = big if name == "too-large" else {"bad": name}
            future = producer.put(payload, source="bad-input", **kwargs)
            assert future.done(), f"{name}: a record that can never be sent must end at once"
            futures[name] = future
        # Boundary values are fine and get delivered.
        good = {
            "key-256": producer.put({"good": 1}, "k" * 256),
            "ehk-0": producer.put({"good": 2}, "k", explicit_hash_key="0"),
            "ehk-max": producer.put({"good": 3}, "k", explicit_hash_key=str(2**128 - 1)),
        }
        producer.flush(timeout=20)
    for name, _, reason in bad:
        result = futures[name].result(0)
        assert result.outcome is Outcome.DEAD_LETTERED, name
        assert result.reason is reason, name
        assert result.attempts == 0
        assert result.error_message
    for name, future in good.items():
        assert future.result(0).delivered, (name, future.result(0))

    entries = dlq_entries(dlq_dir)
    assert sorted(e.reason for e in entries) == sorted(reason for _, _, reason in bad)
    by_key = {(e.partition_key, e.explicit_hash_key): e for e in entries}
    assert by_key[("", None)].payload == b'{"bad":"empty-key"}'
    assert by_key[("k" * 257, None)].source == "bad-input"
    assert by_key[("k", "12a")].stream == stream
    assert by_key[("big", None)].payload == big
    assert all(e.attempts == 0 for e in entries)
    stats = producer.stats()
    assert stats["total_failed"] == len(bad)
    assert stats["by_source"]["bad-input"]["dead_lettered_by_reason"] == {
        "invalid_partition_key": 5,
        "record_too_large": 1,
    }
    assert len(read_stream(endpoint_url, stream)) == len(good)


@pytest.mark.parametrize("aggregation", [True, False], ids=["aggregated", "plain"])
def test_record_of_exactly_the_maximum_size_is_delivered(
    endpoint_url: str, stream_factory: Any, tmp_path: Path, aggregation: bool
) -> None:
    """Data + partition key of exactly 1 MiB is a legal Kinesis record."""
    stream = stream_factory(shards=1)
    with producing(endpoint_url, stream, tmp_path, aggregation=aggregation) as producer:
        small = producer.put(b"before", "max")
        future = producer.put(b"y" * (MAX_RECORD_BYTES - 3), "max")
        producer.flush(timeout=10)
    assert small.result(0).delivered
    assert future.result(0).delivered, future.result(0)
    stored = read_stream(endpoint_url, stream)
    assert sorted(len(r.data) for r in stored) == [6, MAX_RECORD_BYTES - 3]


@pytest.mark.parametrize("aggregation", [True, False], ids=["aggregated", "plain"])
def test_multi_mebibyte_requests_are_delivered(
    endpoint_url: str, stream_factory: Any, tmp_path: Path, aggregation: bool
) -> None:
    """Full PutRecords requests (up to 5 MiB of records) go out like small ones."""
    stream = stream_factory(shards=4)
    run_id = uuid.uuid4().hex
    n = 2000
    with producing(
        endpoint_url, stream, tmp_path, aggregation=aggregation, rate_limit=False, linger_ms=500
    ) as producer:
        futures = [producer.put(make_payload(run_id, i, pad="z" * 2000), f"k{i}") for i in range(n)]
        producer.flush(timeout=15)
        stats = producer.stats()
    assert all(f.result(0).delivered for f in futures)
    assert stats["requests"] < 20
    assert set(ids_read(read_stream(endpoint_url, stream))) == {f"{run_id}-{i}" for i in range(n)}


def test_unencodable_partition_key_is_dead_lettered(
    endpoint_url: str, stream_factory: Any, tmp_path: Path
) -> None:
    """A key Kinesis cannot take (a lone surrogate has no UTF-8 form) ends in the DLQ, like
    every other bad key, instead of blowing up put()."""
    stream = stream_factory(shards=1)
    with producing(endpoint_url, stream, tmp_path / "dlq") as producer:
        future = producer.put({"a": 1}, partition_key="bad-\ud800")
        assert future.done()
        assert future.result(0).reason is DlqReason.INVALID_PARTITION_KEY


@pytest.mark.parametrize("aggregation", [True, False], ids=["aggregated", "plain"])
def test_non_canonical_explicit_hash_key_does_not_sink_other_records(
    endpoint_url: str, stream_factory: Any, tmp_path: Path, aggregation: bool
) -> None:
    """Kinesis takes explicit hash keys matching ``0|([1-9]\\d{0,38})`` only: "007" makes it
    refuse the whole PutRecords request. One such record must not take its neighbours down."""
    stream = stream_factory(shards=1)
    run_id = uuid.uuid4().hex
    with producing(
        endpoint_url, stream, tmp_path / "dlq", aggregation=aggregation, linger_ms=200
    ) as producer:
        odd = producer.put(make_payload(run_id, -1), "k", explicit_hash_key="007")
        others = [producer.put(make_payload(run_id, i), f"k{i}") for i in range(50)]
        producer.flush(timeout=20)
    lost = [f.result(0) for f in others if not f.result(0).delivered]
    assert not lost, f"{len(lost)} good records were dead-lettered with it: {lost[0]}"
    odd_result = odd.result(0)
    assert odd_result.delivered or odd_result.reason is DlqReason.INVALID_PARTITION_KEY


def test_missing_stream_raises(endpoint_url: str, tmp_path: Path) -> None:
    name = f"missing-{uuid.uuid4().hex[:8]}"
    before = set(threading.enumerate())
    with pytest.raises(StreamNotFoundError):
        _producer(endpoint_url, name, tmp_path)
    wait_until(
        lambda: (
            not [t for t in set(threading.enumerate()) - before if t.name == "kingest-producer"]
        ),
        5,
        "the failed producer's thread to end",
    )

    async def go() -> None:
        producer = AsyncProducer(name, endpoint_url=endpoint_url, dlq_dir=str(tmp_path))
        with pytest.raises(StreamNotFoundError):
            await producer.start()

    asyncio.run(go())
    assert not (tmp_path / "kingest-dlq").exists()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_endpoint_raises_promptly(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(KinesisError) as info:
        Producer(
            "events",
            endpoint_url=f"http://127.0.0.1:{_closed_port()}",
            dlq_dir=str(tmp_path),
            connect_timeout_ms=200,
            request_timeout_ms=1000,
        )
    assert isinstance(info.value, TransportError)
    assert info.value.retriable
    assert time.monotonic() - started < 5


def test_silent_endpoint_raises_after_request_timeout(
    endpoint_url: str, stream_factory: Any, tmp_path: Path
) -> None:
    """An endpoint that accepts connections but never answers: Producer() gives up in time."""
    stream = stream_factory(shards=1)
    plan = FaultPlan(delay_s=30, delay_probability=1.0, operations=("DescribeStreamSummary",))
    with FaultProxy(endpoint_url, plan) as proxy:
        started = time.monotonic()
        with pytest.raises(TransportError):
            Producer(stream, endpoint_url=proxy.url, dlq_dir=str(tmp_path), request_timeout_ms=500)
        assert time.monotonic() - started < 5


def test_invalid_settings_raise_config_error(endpoint_url: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        Producer("s", endpoint_url=endpoint_url, dlq_dir=str(tmp_path), no_such_setting=1)
    with pytest.raises(ConfigError):
        Producer("", endpoint_url=endpoint_url, dlq_dir=str(tmp_path))


def test_put_after_close_raises(endpoint_url: str, stream_factory: Any, tmp_path: Path) -> None:
    stream = stream_factory(shards=1)
    producer = _producer(endpoint_url, stream, tmp_path)
    future = producer.put({"a": 1}, "k")
    producer.close()
    producer.close()  # idempotent
    assert future.result(0).delivered
    with pytest.raises(ProducerClosedError):
        producer.put({"a": 2}, "k")


def test_flush_with_nothing_put_returns_at_once(
    endpoint_url: str, stream_factory: Any, tmp_path: Path
) -> None:
    stream = stream_factory(shards=1)
    with producing(endpoint_url, stream, tmp_path) as producer:
        started = time.monotonic()
        producer.flush(timeout=5)
        producer.flush(timeout=5)
        assert time.monotonic() - started < 0.5
        future = producer.put({"a": 1}, "k")
        producer.flush(timeout=5)
        assert future.done()
        producer.flush(timeout=5)
    assert producer.stats()["total_sent"] == 1


def test_callbacks_run_once_per_record(
    endpoint_url: str, stream_factory: Any, tmp_path: Path
) -> None:
    stream = stream_factory(shards=2)
    seen: list[RecordResult] = []
    lock = threading.Lock()

    def on_done(future: RecordFuture) -> None:
        with lock:
            seen.append(future.result(0))

    with producing(endpoint_url, stream, tmp_path) as producer:
        for i in range(300):
            producer.put({"i": i}, f"k{i % 5}").add_done_callback(on_done)
    assert len(seen) == 300
    assert all(r.delivered for r in seen)


@pytest.mark.parametrize("shards", [1, 4])
def test_put_many_nowait_delivers_in_order_and_marks_follow(
    endpoint_url: str, stream_factory: Any, tmp_path: Path, shards: int
) -> None:
    """The batch path: records taken in order, the odd ones among them too, a mark for all."""
    stream = stream_factory(shards=shards)
    run_id = uuid.uuid4().hex
    n = 700
    payloads: list[Any] = [make_payload(run_id, i, pad="y" * 30) for i in range(n)]
    keys: list[str | None] = [f"k{i % 37}" for i in range(n)]
    keys[5] = None  # keyed by a digest of the data
    keys[9] = ""  # not a usable key: dead-lettered, yet taken
    payloads[11] = orjson.dumps(payloads[11])  # bytes, as they are

    async def go() -> tuple[int, bool, dict[str, Any]]:
        producer = AsyncProducer(
            stream, endpoint_url=endpoint_url, dlq_dir=str(tmp_path / "dlq"), **FAST
        )
        await producer.start()
        try:
            taken = producer.put_many_nowait(list(zip(payloads, keys, strict=True)), "batch")
            mark = producer.mark()
            await asyncio.wait_for(producer.flush(), 20)
            return taken, mark.done(), producer.stats()
        finally:
            await producer.close(timeout=15)

    taken, marked, stats = asyncio.run(go())
    assert taken == n
    assert marked
    assert stats["by_source"]["batch"]["sent"] == n - 1
    assert stats["by_source"]["batch"]["failed"] == 1
    records = read_stream(endpoint_url, stream)
    read_ids = ids_read(records)
    assert sorted(read_ids) == sorted(f"{run_id}-{i}" for i in range(n) if i != 9)
    assert not misplaced(records, list_shards(endpoint_url, stream))
    for key in {k for k in keys if k}:
        seen = [
            int(r.data.split(b'"i":')[1].split(b",")[0]) for r in records if r.partition_key == key
        ]
        assert seen == sorted(seen)


def test_put_many_nowait_takes_what_fits_then_waits(
    endpoint_url: str, stream_factory: Any, tmp_path: Path
) -> None:
    """With a full buffer it takes a prefix; put() waits for room; nothing is lost."""
    stream = stream_factory(shards=1)
    run_id = uuid.uuid4().hex
    n = 200
    payloads = [make_payload(run_id, i) for i in range(n)]
    keys = [f"k{i % 7}" for i in range(n)]

    async def go() -> tuple[int, dict[str, Any]]:
        producer = AsyncProducer(
            stream,
            endpoint_url=endpoint_url,
            dlq_dir=str(tmp_path / "dlq"),
            max_buffer_records=50,
            **FAST,
        )
        await producer.start()
        try:
            records = list(zip(payloads, keys, strict=True))
            first = producer.put_many_nowait(records, "batch")
            taken = first
            while taken < n:
                await producer.put(payloads[taken], keys[taken], None, "batch")
                taken += 1
                taken += producer.put_many_nowait(records[taken:], "batch")
            await asyncio.wait_for(producer.flush(), 20)
            return first, producer.stats()
        finally:
            await producer.close(timeout=15)

    first, stats = asyncio.run(go())
    assert first == 50
    assert stats["total_sent"] == n
    assert stats["total_failed"] == 0
    assert sorted(ids_read(read_stream(endpoint_url, stream))) == sorted(
        f"{run_id}-{i}" for i in range(n)
    )


# ------------------------------------------------------------------------ resharding


def _wait_active(endpoint_url: str, stream: str) -> None:
    def active() -> bool:
        summary = call(endpoint_url, "DescribeStreamSummary", {"StreamName": stream})
        return bool(summary["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE")

    wait_until(active, 10, "the stream to be ACTIVE again")


def _split(endpoint_url: str, stream: str, shard_id: str) -> None:
    shard = next(s for s in list_shards(endpoint_url, stream) if s.shard_id == shard_id)
    call(
        endpoint_url,
        "SplitShard",
        {
            "StreamName": stream,
            "ShardToSplit": shard_id,
            "NewStartingHashKey": str((shard.start + shard.end) // 2 + 1),
        },
    )
    _wait_active(endpoint_url, stream)


@pytest.mark.parametrize("pause_s", [0.0, 1.2], ids=["split-at-once", "split-later"])
@pytest.mark.parametrize("aggregation", [True, False], ids=["aggregated", "plain"])
def test_resharding_under_a_running_producer(
    endpoint_url: str, stream_factory: Any, tmp_path: Path, aggregation: bool, pause_s: float
) -> None:
    """Both shards split under a running producer: nothing is lost to a KCL consumer, results
    name where each record really is, and once the map is re-read nothing lands misplaced."""
    stream = stream_factory(shards=2)
    run_id = uuid.uuid4().hex
    first = sorted(s.shard_id for s in list_shards(endpoint_url, stream))
    keys = [f"user-{i}" for i in range(400)]
    ids = [f"{run_id}-{i}" for i in range(1200)]
    with producing(endpoint_url, stream, tmp_path / "dlq", aggregation=aggregation) as producer:
        before = [producer.put(make_payload(run_id, i), keys[i]) for i in range(400)]
        producer.flush(timeout=10)
        if pause_s:
            time.sleep(pause_s)  # past the producer's shard-map refresh interval
            _split(endpoint_url, stream, first[0])
            _split(endpoint_url, stream, first[1])
        else:
            # Within a second of the producer's start (its last map read): one split only,
            # which the emulator does in about half a second.
            _split(endpoint_url, stream, first[0])
        after = [producer.put(make_payload(run_id, 400 + i), keys[i]) for i in range(400)]
        producer.flush(timeout=20)
        time.sleep(1.1)  # let a rate-limited map refresh become possible again
        more = [producer.put(make_payload(run_id, 800 + i), keys[i]) for i in range(400)]
        producer.flush(timeout=20)
    futures = before + after + more
    results = [f.result(0) for f in futures]
    assert all(r.delivered for r in results), [r for r in results if not r.delivered][:3]

    shards = list_shards(endpoint_url, stream)
    assert len([s for s in shards if not s.closed]) == (4 if pause_s else 3)
    records = read_stream(endpoint_url, stream)
    assert set(ids_read(records)) == set(ids)
    visible = kcl_visible(records, shards)
    lost = set(ids) - set(ids_read(visible))
    assert not lost, (
        f"{len(lost)} records exist only as sub-records on a shard not owning their hash, "
        f"which the KCL discards, e.g. {sorted(lost)[:3]}"
    )
    late = [r for r in misplaced(records, shards) if payload_id(r.data) in set(ids[800:])]
    assert not late, f"{len(late)} records sent after the map refresh landed misplaced"
    # Each result names the shard, sequence and sub-sequence of a copy a KCL consumer gets.
    by_id = {s.shard_id: s for s in shards}
    for i, result in enumerate(results):
        assert result.shard_id is not None
        assert by_id[result.shard_id].owns(hash_key_of(keys[i % 400])), (i, result)
    _check_results_point_at_records(futures, ids, visible)


def test_put_many_waits_for_room_and_takes_everything(
    endpoint_url: str, stream_factory: Any, tmp_path: Path
) -> None:
    """put_many through a buffer a tenth of the batch: every record taken, in order, none lost."""
    stream = stream_factory(shards=1)
    run_id = uuid.uuid4().hex
    n = 500
    records = [(make_payload(run_id, i), f"k{i % 3}") for i in range(n)]

    async def go() -> dict[str, Any]:
        producer = AsyncProducer(
            stream, endpoint_url=endpoint_url, dlq_dir=str(tmp_path / "dlq"),
            max_buffer_records=50, **FAST,
        )  # fmt: skip
        try:
            await producer.put_many(records, "many")
            await asyncio.wait_for(producer.flush(), 30)
            return producer.stats()
        finally:
            await producer.close(timeout=15)

    stats = asyncio.run(go())
    assert stats["by_source"]["many"]["sent"] == n
    read = read_stream(endpoint_url, stream)
    assert sorted(ids_read(read)) == sorted(f"{run_id}-{i}" for i in range(n))
    for key in ("k0", "k1", "k2"):
        seen = [orjson.loads(r.data)["i"] for r in read if r.partition_key == key]
        assert seen == sorted(seen)
