"""The producer's promises through a fault-injecting proxy in front of the embedded endpoint.

The proxy (tests/faultproxy.py) fails entries for real (they are not stored), answers 500/503,
fails after storing, drops connections, answers late and refuses for good. Whatever it does,
every record must end delivered (and be readable) or in the dead-letter queue. Payloads carry a
unique id; read-back goes straight to the endpoint and is compared as a set, duplicates being
allowed wherever the fault left Kinesis' answer unknown.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kingest.errors import BufferFullError, ProducerClosedError
from kingest.producer.producer import AsyncProducer, Producer
from kingest.record import DlqReason, Outcome, RecordFuture
from tests.faultproxy import FaultPlan, FaultProxy
from tests.helpers import (
    dlq_entries,
    ids_read,
    make_payload,
    payload_id,
    read_stream,
    wait_until,
)

pytestmark = pytest.mark.integration

FAST = {"linger_ms": 10, "retry_base_ms": 20, "retry_max_ms": 200, "request_timeout_ms": 2000}


@pytest.fixture
def proxy(endpoint_url: str) -> Iterator[FaultProxy]:
    with FaultProxy(endpoint_url) as running:
        yield running


@contextlib.contextmanager
def producing(
    url: str, stream: str, dlq: Path, close_timeout: float = 20, **settings: Any
) -> Iterator[Producer]:
    """A producer closed with a bounded timeout, so a producer bug fails a test, never hangs it."""
    producer = Producer(stream, endpoint_url=url, dlq_dir=str(dlq), **{**FAST, **settings})
    try:
        yield producer
    finally:
        producer.close(timeout=close_timeout)


def _put_waves(
    producer: Producer, run_id: str, n: int, waves: int, source: str = "faults", keys: int = 97
) -> list[RecordFuture]:
    """Put n records in waves, letting each wave go out, so the proxy sees many requests."""
    futures: list[RecordFuture] = []
    per_wave = n // waves
    for i in range(n):
        futures.append(producer.put(make_payload(run_id, i), f"key-{i % keys}", source=source))
        if (i + 1) % per_wave == 0:
            producer.flush(timeout=30)
    return futures


def _assert_all_delivered(
    futures: list[RecordFuture], endpoint_url: str, stream: str, run_id: str, *, exact: bool
) -> list[str]:
    results = [f.result(0) for f in futures]
    failed = [r for r in results if not r.delivered]
    assert not failed, f"{len(failed)} records not delivered, e.g. {failed[0]}"
    assert all(r.shard_id and r.sequence_number for r in results)
    read = ids_read(read_stream(endpoint_url, stream))
    expected = {f"{run_id}-{i}" for i in range(len(futures))}
    missing = expected - set(read)
    assert not missing, (
        f"{len(missing)} delivered records are not in the stream: {sorted(missing)[:3]}"
    )
    if exact:
        duplicates = [i for i, n in Counter(read).items() if n > 1]
        assert not duplicates, (
            f"{len(duplicates)} records stored twice although every fault left them unstored"
        )
    return read


# ------------------------------------------------------------------------ retried faults


@pytest.mark.parametrize("aggregation", [True, False], ids=["aggregated", "plain"])
def test_partial_failures_are_retried_until_delivered(
    endpoint_url: str, stream_factory: Any, proxy: FaultProxy, tmp_path: Path, aggregation: bool
) -> None:
    stream = stream_factory(shards=4)
    run_id = uuid.uuid4().hex
    proxy.set_plan(FaultPlan(partial_failure=0.4, max_faults=40, seed=3))
    with producing(proxy.url, stream, tmp_path, aggregation=aggregation) as producer:
        futures = _put_waves(producer, run_id, 500, waves=10)
        producer.flush(timeout=20)
        stats = producer.stats()
    assert proxy.stats["entries_failed_injected"] > 0
    # Failed entries are not stored and exactly those are sent again: no duplicates.
    _assert_all_delivered(futures, endpoint_url, stream, run_id, exact=True)
    assert stats["total_retried"] > 0
    assert stats["retried_by_error_code"]["ProvisionedThroughputExceededException"] > 0
    assert stats["total_sent"] == 500
    assert stats["total_failed"] == 0
    assert stats["by_source"]["faults"]["retried"] == stats["total_retried"]
    assert max(f.result(0).attempts for f in futures) >= 2


def test_partial_failures_with_async_producer(
    endpoint_url: str, stream_factory: Any, proxy: FaultProxy, tmp_path: Path
) -> None:
    stream = stream_factory(shards=2)
    run_id = uuid.uuid4().hex
    proxy.set_plan(FaultPlan(partial_failure=0.4, http_503=0.1, max_faults=30, seed=5))

    async def go() -> tuple[list[RecordFuture], dict[str, Any]]:
        producer = AsyncProducer(
            stream, endpoint_url=proxy.url, dlq_dir=str(tmp_path), **FAST, aggregation=False
        )
        await producer.start()
        futures: list[RecordFuture] = []
        try:
            for i in range(400):
                futures.append(await producer.put(make_payload(run_id, i), f"k{i % 31}"))
                if i % 40 == 39:
                    await asyncio.sleep(0.03)
            results = await asyncio.wait_for(asyncio.gather(*futures), 20)
            assert all(r.delivered for r in results)
        finally:
            await producer.close(timeout=20)
        return futures, producer.stats()

    futures, stats = asyncio.run(go())
    assert proxy.stats["faults_injected"] > 0
    _assert_all_delivered(futures, endpoint_url, stream, run_id, exact=True)
    assert stats["total_retried"] > 0


@pytest.mark.parametrize("fault", ["http_500", "http_503"])
def test_server_errors_are_retried(
    endpoint_url: str, stream_factory: Any, proxy: FaultProxy, tmp_path: Path, fault: str
) -> None:
    stream = stream_factory(shards=2)
    run_id = uuid.uuid4().hex
    proxy.set_plan(FaultPlan(**{fault: 0.5}, max_faults=8, seed=11))
    with producing(proxy.url, stream, tmp_path) as producer:
        futures = _put_waves(producer, run_id, 300, waves=10)
        producer.flush(timeout=20)
        stats = producer.stats()
    assert proxy.stats[fault] > 0
    _assert_all_delivered(futures, endpoint_url, stream, run_id, exact=True)
    assert stats["total_retried"] > 0
    assert stats["failed_requests"] == proxy.stats[fault]
    code = "InternalFailure" if fault == "http_500" else "ServiceUnavailable"
    assert stats["retried_by_error_code"][code] > 0


@pytest.mark.parametrize(
    "fault", ["error_after_forward", "drop_before_answer", "drop_before_forward"]
)
@pytest.mark.parametrize("aggregation", [True, False], ids=["aggregated", "plain"])
def test_unknown_outcomes_are_retried_duplicates_allowed(
    endpoint_url: str,
    stream_factory: Any,
    proxy: FaultProxy,
    tmp_path: Path,
    fault: str,
    aggregation: bool,
) -> None:
    stream = stream_factory(shards=2)
    run_id = uuid.uuid4().hex
    proxy.set_plan(FaultPlan(**{fault: 0.4}, max_faults=6, seed=17))
    with producing(proxy.url, stream, tmp_path, aggregation=aggregation) as producer:
        futures = _put_waves(producer, run_id, 300, waves=10)
        producer.flush(timeout=20)
        stats = producer.stats()
    counter = {"drop_before_answer": "dropped_before_answer"}.get(fault, fault)
    counter = {"drop_before_forward": "dropped_before_forward"}.get(counter, counter)
    assert proxy.stats[counter] > 0
    _assert_all_delivered(futures, endpoint_url, stream, run_id, exact=False)
    assert stats["total_retried"] > 0
    assert stats["total_sent"] == 300
    assert max(f.result(0).attempts for f in futures) >= 2


def test_answers_slower_than_request_timeout_are_retried(
    endpoint_url: str, stream_factory: Any, proxy: FaultProxy, tmp_path: Path
) -> None:
    stream = stream_factory(shards=2)
    run_id = uuid.uuid4().hex
    proxy.set_plan(FaultPlan(delay_s=1.5, delay_probability=0.5, max_faults=4, seed=2))
    started = time.monotonic()
    with producing(proxy.url, stream, tmp_path, request_timeout_ms=500) as producer:
        futures = _put_waves(producer, run_id, 200, waves=8)
        producer.flush(timeout=20)
        stats = producer.stats()
    assert proxy.stats["delayed"] > 0
    assert time.monotonic() - started < 15
    _assert_all_delivered(futures, endpoint_url, stream, run_id, exact=False)
    assert stats["retried_by_error_code"].get("RequestTimeout", 0) > 0


@pytest.mark.parametrize("aggregation", [True, False], ids=["aggregated", "plain"])
def test_every_fault_at_once(
    endpoint_url: str, stream_factory: Any, proxy: FaultProxy, tmp_path: Path, aggregation: bool
) -> None:
    stream = stream_factory(shards=4)
    run_id = uuid.uuid4().hex
    proxy.set_plan(
        FaultPlan(
            partial_failure=0.25,
            http_500=0.05,
            http_503=0.05,
            error_after_forward=0.05,
            drop_before_answer=0.05,
            drop_before_forward=0.05,
            delay_s=1.0,
            delay_probability=0.05,
            max_faults=40,
            seed=23,
        )
    )
    with producing(
        proxy.url,
        stream,
        tmp_path,
        aggregation=aggregation,
        request_timeout_ms=500,
        max_request_records=50,
    ) as producer:
        futures = _put_waves(producer, run_id, 800, waves=16)
        producer.flush(timeout=25)
        stats = producer.stats()
    assert proxy.stats["faults_injected"] >= 10, proxy.stats
    _assert_all_delivered(futures, endpoint_url, stream, run_id, exact=False)
    assert stats["total_sent"] == 800
    assert stats["total_failed"] == 0
    assert stats["total_retried"] > 0
    assert not dlq_entries(tmp_path)


# ------------------------------------------------------------------------ strict order


@pytest.mark.parametrize(
    "plan",
    [
        FaultPlan(partial_failure=0.3, max_faults=40, seed=7),
        FaultPlan(
            partial_failure=0.25,
            http_500=0.1,
            error_after_forward=0.1,
            drop_before_answer=0.05,
            max_faults=40,
            seed=8,
        ),
    ],
    ids=["partial", "mixed"],
)
@pytest.mark.parametrize("aggregation", [True, False], ids=["aggregated", "plain"])
@pytest.mark.parametrize("shards", [1, 2])
def test_strict_order_keeps_per_key_order(
    endpoint_url: str,
    stream_factory: Any,
    proxy: FaultProxy,
    tmp_path: Path,
    plan: FaultPlan,
    aggregation: bool,
    shards: int,
) -> None:
    stream = stream_factory(shards=shards)
    run_id = uuid.uuid4().hex
    n, n_keys = 300, 6
    proxy.set_plan(plan)
    with producing(
        proxy.url,
        stream,
        tmp_path,
        strict_order=True,
        aggregation=aggregation,
        max_record_bytes=1024,  # small aggregates: many Kinesis records, many chances to fail
    ) as producer:
        futures = _put_waves(producer, run_id, n, waves=10, keys=n_keys)
        producer.flush(timeout=25)
    assert proxy.stats["faults_injected"] > 0
    _assert_all_delivered(futures, endpoint_url, stream, run_id, exact=False)
    records = read_stream(endpoint_url, stream)
    for k in range(n_keys):
        key = f"key-{k}"
        seen: list[int] = []
        for record in records:
            if record.partition_key != key:
                continue
            index = int(str(payload_id(record.data)).rsplit("-", 1)[1])
            if index not in seen:  # a duplicate counts where it first appears
                seen.append(index)
        expected = [i for i in range(n) if i % n_keys == k]
        assert seen == expected, f"{key}: read back out of put order"


# ------------------------------------------------------------------------ refused for good


@pytest.mark.parametrize(
    ("plan", "code"),
    [
        (FaultPlan(fail_all_code="ValidationException"), "ValidationException"),
        (FaultPlan(fail_all_code="AccessDeniedException"), "AccessDeniedException"),
        (FaultPlan(fail_all_code="KMSAccessDeniedException"), "KMSAccessDeniedException"),
        (FaultPlan(entry_error_code="KMSAccessDeniedException"), "KMSAccessDeniedException"),
    ],
    ids=["request-validation", "request-access", "request-kms", "entry-kms"],
)
@pytest.mark.parametrize("aggregation", [True, False], ids=["aggregated", "plain"])
def test_non_retryable_errors_dead_letter_at_once(
    endpoint_url: str,
    stream_factory: Any,
    proxy: FaultProxy,
    tmp_path: Path,
    plan: FaultPlan,
    code: str,
    aggregation: bool,
) -> None:
    stream = stream_factory(shards=2)
    run_id = uuid.uuid4().hex
    dlq_dir = tmp_path / "dlq"
    proxy.set_plan(plan)
    n = 60
    with producing(proxy.url, stream, dlq_dir, aggregation=aggregation) as producer:
        futures = [
            producer.put(make_payload(run_id, i), f"pk-{i % 7}", source="refused") for i in range(n)
        ]
        producer.flush(timeout=10)
        stats = producer.stats()
    for future in futures:
        result = future.result(0)
        assert result.outcome is Outcome.DEAD_LETTERED
        assert result.reason is DlqReason.NON_RETRYABLE_ERROR
        assert result.error_code == code
        assert result.attempts == 1, "a non-retryable error must not be retried"
    entries = dlq_entries(dlq_dir)
    assert len(entries) == n
    by_id = {payload_id(e.payload): e for e in entries}
    assert set(by_id) == {f"{run_id}-{i}" for i in range(n)}
    for i in range(n):
        entry = by_id[f"{run_id}-{i}"]
        assert entry.reason is DlqReason.NON_RETRYABLE_ERROR
        assert entry.error_code == code
        assert entry.partition_key == f"pk-{i % 7}"
        assert entry.source == "refused"
        assert entry.stream == stream
        assert entry.attempts == 1
        assert entry.first_attempt_at is not None
    assert stats["total_failed"] == n
    assert stats["total_retried"] == 0
    assert stats["by_source"]["refused"]["dead_lettered_by_reason"] == {"non_retryable_error": n}
    assert not read_stream(endpoint_url, stream)


def test_records_past_their_ttl_are_dead_lettered(
    endpoint_url: str, stream_factory: Any, proxy: FaultProxy, tmp_path: Path
) -> None:
    stream = stream_factory(shards=2)
    run_id = uuid.uuid4().hex
    proxy.set_plan(FaultPlan(http_503=1.0))
    with producing(
        proxy.url, stream, tmp_path, record_ttl_ms=1500, retry_base_ms=50, retry_max_ms=300
    ) as producer:
        started = time.monotonic()
        futures = [
            producer.put(make_payload(run_id, i), f"k{i % 9}", source="ttl") for i in range(100)
        ]
        wait_until(lambda: all(f.done() for f in futures), 6, "every record to expire")
        elapsed = time.monotonic() - started
        stats = producer.stats()
    assert elapsed >= 1.4, "records expired before their time-to-live"
    for future in futures:
        result = future.result(0)
        assert result.outcome is Outcome.DEAD_LETTERED
        assert result.reason is DlqReason.TTL_EXPIRED
        assert result.attempts >= 1
    entries = dlq_entries(tmp_path)
    assert {payload_id(e.payload) for e in entries} == {f"{run_id}-{i}" for i in range(100)}
    assert all(e.reason is DlqReason.TTL_EXPIRED for e in entries)
    assert stats["by_source"]["ttl"]["dead_lettered_by_reason"] == {"ttl_expired": 100}
    assert proxy.stats["http_503"] > 0


# ------------------------------------------------------------------------ close


def _outcomes(
    futures: list[RecordFuture], endpoint_url: str, stream: str, dlq: Path, run_id: str
) -> None:
    """Every record is done, and is in the stream or in the dead-letter queue (or both)."""
    assert all(f.done() for f in futures), "close() returned with records not done"
    read = set(ids_read(read_stream(endpoint_url, stream)))
    dead = {payload_id(e.payload) for e in dlq_entries(dlq)}
    for i, future in enumerate(futures):
        record_id = f"{run_id}-{i}"
        result = future.result(0)
        if result.delivered:
            assert record_id in read, f"{record_id} reported delivered but not in the stream"
        else:
            assert record_id in dead, f"{record_id} reported dead-lettered but not in the DLQ"


def test_close_under_faults_loses_nothing(
    endpoint_url: str, stream_factory: Any, proxy: FaultProxy, tmp_path: Path
) -> None:
    stream = stream_factory(shards=4)
    run_id = uuid.uuid4().hex
    proxy.set_plan(
        FaultPlan(
            partial_failure=0.3,
            drop_before_answer=0.1,
            drop_before_forward=0.1,
            http_503=0.05,
            max_faults=40,
            seed=31,
        )
    )
    producer = Producer(
        stream, endpoint_url=proxy.url, dlq_dir=str(tmp_path), **{**FAST, "linger_ms": 50}
    )
    futures = [producer.put(make_payload(run_id, i), f"k{i % 41}") for i in range(600)]
    started = time.monotonic()
    producer.close()  # no flush first: close() itself must deliver everything
    assert time.monotonic() - started < 20
    assert proxy.stats["faults_injected"] > 0
    _outcomes(futures, endpoint_url, stream, tmp_path, run_id)
    # The TTL (5 minutes) never ran out, so everything was delivered.
    assert all(f.result(0).delivered for f in futures)
    stats = producer.stats()
    assert stats["total_sent"] == 600
    assert stats["queue_size"] == 0


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_close_with_timeout_against_a_silent_endpoint(
    endpoint_url: str, stream_factory: Any, proxy: FaultProxy, tmp_path: Path, flavour: str
) -> None:
    """An endpoint that never answers: close(timeout) returns in about the timeout and every
    record is dead-lettered with reason shutdown."""
    stream = stream_factory(shards=2)
    run_id = uuid.uuid4().hex
    proxy.set_plan(FaultPlan(delay_s=60, delay_probability=1.0))
    settings = {**FAST, "request_timeout_ms": 30_000}
    n = 80
    if flavour == "sync":
        producer = Producer(stream, endpoint_url=proxy.url, dlq_dir=str(tmp_path), **settings)
        futures = [producer.put(make_payload(run_id, i), f"k{i % 5}") for i in range(n)]
        wait_until(lambda: proxy.stats["delayed"] > 0, 5, "a request to hang in the proxy")
        started = time.monotonic()
        producer.close(timeout=1.0)
        elapsed = time.monotonic() - started
    else:

        async def go() -> tuple[list[RecordFuture], float]:
            producer = AsyncProducer(
                stream, endpoint_url=proxy.url, dlq_dir=str(tmp_path), **settings
            )
            await producer.start()
            futures = [await producer.put(make_payload(run_id, i), f"k{i % 5}") for i in range(n)]
            deadline = time.monotonic() + 5
            while proxy.stats["delayed"] == 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            started = time.monotonic()
            await producer.close(timeout=1.0)
            return futures, time.monotonic() - started

        futures, elapsed = asyncio.run(go())
    assert 0.9 <= elapsed < 3.0, elapsed
    for future in futures:
        result = future.result(0)
        assert result.outcome is Outcome.DEAD_LETTERED
        assert result.reason is DlqReason.SHUTDOWN
    entries = dlq_entries(tmp_path)
    assert {payload_id(e.payload) for e in entries} == {f"{run_id}-{i}" for i in range(n)}
    assert all(e.reason is DlqReason.SHUTDOWN for e in entries)


def test_close_with_timeout_while_records_wait_for_a_retry(
    endpoint_url: str, stream_factory: Any, proxy: FaultProxy, tmp_path: Path
) -> None:
    """Records backing off between attempts when close(timeout) runs out end as shutdown."""
    stream = stream_factory(shards=2)
    run_id = uuid.uuid4().hex
    proxy.set_plan(FaultPlan(http_503=1.0))
    producer = Producer(
        stream,
        endpoint_url=proxy.url,
        dlq_dir=str(tmp_path),
        **{**FAST, "retry_base_ms": 2000, "retry_max_ms": 5000},
    )
    futures = [producer.put(make_payload(run_id, i), f"k{i % 5}") for i in range(50)]
    wait_until(lambda: producer.stats()["total_retried"] > 0, 5, "a first failed attempt")
    started = time.monotonic()
    producer.close(timeout=0.5)
    assert time.monotonic() - started < 2.5
    for future in futures:
        result = future.result(0)
        assert result.reason is DlqReason.SHUTDOWN, result
        assert result.attempts >= 1
    entries = dlq_entries(tmp_path)
    assert {payload_id(e.payload) for e in entries} == {f"{run_id}-{i}" for i in range(50)}
    assert all(e.attempts >= 1 and e.reason is DlqReason.SHUTDOWN for e in entries)


def test_put_blocked_on_a_full_buffer_during_close(
    endpoint_url: str, stream_factory: Any, proxy: FaultProxy, tmp_path: Path
) -> None:
    """A thread waiting for buffer room while close() runs either gets ProducerClosedError or
    a future that ends: never a record left behind undone."""
    stream = stream_factory(shards=1)
    run_id = uuid.uuid4().hex
    proxy.set_plan(FaultPlan(delay_s=0.2, delay_probability=1.0))
    producer = Producer(
        stream, endpoint_url=proxy.url, dlq_dir=str(tmp_path), **FAST, max_buffer_records=20
    )
    futures: list[RecordFuture] = []
    errors: list[BaseException] = []

    def feed() -> None:
        try:
            for i in range(2000):
                futures.append(producer.put(make_payload(run_id, i), f"k{i % 3}"))
        except ProducerClosedError:
            pass
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=feed)
    thread.start()
    wait_until(lambda: len(futures) >= 60, 10, "the feeder to fill the buffer a few times")
    producer.close(timeout=20)
    thread.join(10)
    assert not thread.is_alive(), "put() still blocked after close()"
    assert not errors, f"put() raised {errors[0]!r} instead of ProducerClosedError"
    undone = [i for i, f in enumerate(futures) if not f.done()]
    assert not undone, f"{len(undone)} records accepted by put() never ended: {undone[:5]}"
    _outcomes(futures, endpoint_url, stream, tmp_path, run_id)


# ------------------------------------------------------------------------ backpressure


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_backpressure_blocks_and_drops_nothing(
    endpoint_url: str, stream_factory: Any, proxy: FaultProxy, tmp_path: Path, flavour: str
) -> None:
    stream = stream_factory(shards=2)
    run_id = uuid.uuid4().hex
    bound, n = 50, 500
    proxy.set_plan(FaultPlan(delay_s=0.3, delay_probability=1.0))
    settings = {**FAST, "max_buffer_records": bound}
    peak = 0
    sampling = threading.Event()

    def sample(producer: Producer | AsyncProducer) -> None:
        nonlocal peak
        gate = producer._core.gate
        while not sampling.is_set():
            peak = max(peak, gate.records)
            time.sleep(0.0005)

    if flavour == "sync":
        producer = Producer(stream, endpoint_url=proxy.url, dlq_dir=str(tmp_path), **settings)
        sampler = threading.Thread(target=sample, args=(producer,))
        sampler.start()
        futures: list[RecordFuture] = []
        started = time.monotonic()
        try:
            feeder = threading.Thread(
                target=lambda: futures.extend(
                    producer.put(make_payload(run_id, i), f"k{i % 13}") for i in range(n)
                )
            )
            feeder.start()
            feeder.join(30)
            put_time = time.monotonic() - started
            assert not feeder.is_alive()
            producer.flush(timeout=20)
        finally:
            sampling.set()
            sampler.join()
            producer.close(timeout=10)
    else:

        async def go() -> tuple[list[RecordFuture], float]:
            producer = AsyncProducer(
                stream, endpoint_url=proxy.url, dlq_dir=str(tmp_path), **settings
            )
            await producer.start()
            sampler = threading.Thread(target=sample, args=(producer,))
            sampler.start()
            try:
                started = time.monotonic()
                futures = [
                    await producer.put(make_payload(run_id, i), f"k{i % 13}") for i in range(n)
                ]
                put_time = time.monotonic() - started
                await asyncio.wait_for(producer.flush(), 20)
            finally:
                sampling.set()
                sampler.join()
                await producer.close(timeout=10)
            return futures, put_time

        futures, put_time = asyncio.run(go())
    assert len(futures) == n
    assert peak <= bound, f"{peak} records held with max_buffer_records={bound}"
    assert peak >= bound * 0.8, "the buffer never filled: the test proves nothing"
    # Ten buffer-fulls through a proxy answering in 0.3 s: put() must have waited.
    assert put_time >= 1.0, put_time
    _assert_all_delivered(futures, endpoint_url, stream, run_id, exact=True)
    assert not dlq_entries(tmp_path)


def test_put_timeout_raises_buffer_full(
    endpoint_url: str, stream_factory: Any, proxy: FaultProxy, tmp_path: Path
) -> None:
    stream = stream_factory(shards=1)
    run_id = uuid.uuid4().hex
    proxy.set_plan(FaultPlan(delay_s=1.0, delay_probability=1.0))
    with producing(
        proxy.url, stream, tmp_path, max_buffer_records=10, request_timeout_ms=5000
    ) as producer:
        futures = [producer.put(make_payload(run_id, i), "k") for i in range(10)]
        started = time.monotonic()
        with pytest.raises(BufferFullError):
            producer.put(make_payload(run_id, 10), "k", timeout=0.2)
        assert 0.15 <= time.monotonic() - started < 1.5
        producer.flush(timeout=10)
    assert all(f.result(0).delivered for f in futures)


def test_drop_newest_dead_letters_the_overflow(
    endpoint_url: str, stream_factory: Any, proxy: FaultProxy, tmp_path: Path
) -> None:
    stream = stream_factory(shards=2)
    run_id = uuid.uuid4().hex
    proxy.set_plan(FaultPlan(delay_s=0.3, delay_probability=1.0))
    n = 300
    with producing(
        proxy.url, stream, tmp_path, max_buffer_records=50, on_buffer_full="drop_newest"
    ) as producer:
        futures = []
        for i in range(n):
            future = producer.put(make_payload(run_id, i), f"k{i % 7}", source="bursty")
            futures.append(future)
        producer.flush(timeout=20)
        stats = producer.stats()
    dropped = [i for i, f in enumerate(futures) if f.result(0).outcome is Outcome.DEAD_LETTERED]
    assert dropped, "nothing was dropped: the buffer never filled"
    assert len(dropped) < n
    for i in dropped:
        result = futures[i].result(0)
        assert result.reason is DlqReason.BUFFER_FULL
        assert result.attempts == 0
    by_reason = stats["by_source"]["bursty"]["dead_lettered_by_reason"]
    assert by_reason == {"buffer_full": len(dropped)}
    assert stats["total_sent"] == n - len(dropped)
    entries = dlq_entries(tmp_path)
    assert sorted(payload_id(e.payload) for e in entries) == sorted(
        f"{run_id}-{i}" for i in dropped
    )
    assert all(e.reason is DlqReason.BUFFER_FULL and e.source == "bursty" for e in entries)
    read = set(ids_read(read_stream(endpoint_url, stream)))
    kept = {f"{run_id}-{i}" for i in range(n)} - {f"{run_id}-{i}" for i in dropped}
    assert read == kept, "a record was both dropped and stored, or accepted and lost"
