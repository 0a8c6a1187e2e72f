"""RecordFuture: results, timeouts, callbacks, awaiting across threads; RecordResult."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from kingest.record import Delivery, DlqReason, Outcome, RecordFuture, RecordResult

DEAD = RecordResult(Outcome.DEAD_LETTERED, reason=DlqReason.TTL_EXPIRED, attempts=3)


def test_result_times_out_while_pending() -> None:
    future = RecordFuture()
    assert not future.done()
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        future.result(timeout=0.05)
    assert time.monotonic() - started >= 0.04
    with pytest.raises(TimeoutError):
        future.result(timeout=0)


def test_result_once_done() -> None:
    future = RecordFuture()
    future.set_result(DEAD)
    assert future.done()
    assert future.result() is DEAD
    assert future.result(0) is DEAD
    assert not future.result().delivered


def test_second_result_is_ignored() -> None:
    future = RecordFuture()
    future.set_result(DEAD)
    future.set_result(RecordResult(Outcome.DELIVERED, shard_id="s", sequence_number="1"))
    future.set_delivered(Delivery("s", "1", False), 0, 1)
    assert future.result() is DEAD


def test_set_delivered_builds_the_result_lazily() -> None:
    delivery = Delivery("shardId-000000000001", "4960", aggregated=True)
    futures = [RecordFuture() for _ in range(3)]
    for index, future in enumerate(futures):
        future.set_delivered(delivery, index, 2)
    assert all(f.done() for f in futures)
    results = [f.result() for f in futures]
    assert [r.sub_sequence_number for r in results] == [0, 1, 2]
    for result in results:
        assert result.outcome is Outcome.DELIVERED
        assert result.delivered
        assert result.shard_id == "shardId-000000000001"
        assert result.sequence_number == "4960"
        assert result.attempts == 2
        assert result.reason is None
    assert futures[1].result() is results[1], "the result is built once"


def test_plain_delivery_has_sub_sequence_zero() -> None:
    future = RecordFuture()
    future.set_delivered(Delivery("s", "9", aggregated=False), 5, 1)
    assert future.result().sub_sequence_number == 0


def test_result_waits_for_another_thread() -> None:
    future = RecordFuture()
    timer = threading.Timer(0.05, future.set_result, args=(DEAD,))
    timer.start()
    assert future.result(timeout=5) is DEAD
    timer.join()


def test_many_threads_wait_on_one_future() -> None:
    future = RecordFuture()
    got: list[RecordResult] = []
    lock = threading.Lock()

    def wait() -> None:
        result = future.result(timeout=5)
        with lock:
            got.append(result)

    threads = [threading.Thread(target=wait) for _ in range(8)]
    for thread in threads:
        thread.start()
    # Resolve once a waiter has set up the event the others share.
    deadline = time.monotonic() + 5
    while future._event is None and time.monotonic() < deadline:
        time.sleep(0.001)
    future.set_delivered(Delivery("s", "1", False), 0, 1)
    for thread in threads:
        thread.join(5)
    assert len(got) == 8
    assert all(r.delivered for r in got)


def test_callbacks_run_once_in_order() -> None:
    future = RecordFuture()
    calls: list[tuple[str, RecordFuture]] = []
    future.add_done_callback(lambda f: calls.append(("a", f)))
    future.add_done_callback(lambda f: calls.append(("b", f)))
    assert not calls
    future.set_result(DEAD)
    future.set_result(DEAD)
    assert calls == [("a", future), ("b", future)]


def test_callback_added_after_done_runs_at_once() -> None:
    future = RecordFuture()
    future.set_delivered(Delivery("s", "1", False), 0, 1)
    calls: list[RecordFuture] = []
    future.add_done_callback(calls.append)
    assert calls == [future]
    assert calls[0].result().delivered


def test_callbacks_racing_completion_run_exactly_once() -> None:
    for _ in range(200):
        future = RecordFuture()
        calls: list[int] = []
        barrier = threading.Barrier(2)

        def add(
            future: RecordFuture = future,
            calls: list[int] = calls,
            barrier: threading.Barrier = barrier,
        ) -> None:
            barrier.wait()
            future.add_done_callback(lambda _: calls.append(1))

        thread = threading.Thread(target=add)
        thread.start()
        barrier.wait()
        future.set_result(DEAD)
        thread.join(5)
        assert calls == [1]


def test_await_resolved_from_another_thread() -> None:
    future = RecordFuture()

    async def go() -> RecordResult:
        timer = threading.Timer(0.05, future.set_result, args=(DEAD,))
        timer.start()
        try:
            return await asyncio.wait_for(future, 5)  # type: ignore[arg-type]
        finally:
            timer.join()

    assert asyncio.run(go()) is DEAD


def test_await_done_future_returns_at_once() -> None:
    future = RecordFuture()
    future.set_delivered(Delivery("s", "1", True), 3, 1)

    async def go() -> RecordResult:
        return await future

    assert asyncio.run(go()).sub_sequence_number == 3


def test_await_and_result_together() -> None:
    future = RecordFuture()
    from_thread: list[RecordResult] = []
    waiter = threading.Thread(target=lambda: from_thread.append(future.result(timeout=5)))
    waiter.start()

    async def go() -> RecordResult:
        asyncio.get_running_loop().call_later(0.05, future.set_result, DEAD)
        return await future

    assert asyncio.run(go()) is DEAD
    waiter.join(5)
    assert from_thread == [DEAD]


def test_gather_many_futures() -> None:
    futures = [RecordFuture() for _ in range(100)]

    async def go() -> list[RecordResult]:
        def finish() -> None:
            for i, future in enumerate(futures):
                future.set_delivered(Delivery("s", str(i), False), 0, 1)

        threading.Timer(0.02, finish).start()
        return await asyncio.wait_for(asyncio.gather(*futures), 5)  # type: ignore[arg-type]

    results = asyncio.run(go())
    assert [r.sequence_number for r in results] == [str(i) for i in range(100)]


def test_dlq_reason_values_never_change() -> None:
    """Dashboards and alerts key on these strings: reasons may be added, never renamed."""
    assert {r.value for r in DlqReason} >= {
        "invalid_input",
        "invalid_partition_key",
        "record_too_large",
        "non_retryable_error",
        "ttl_expired",
        "buffer_full",
        "shutdown",
    }
    assert DlqReason("ttl_expired") is DlqReason.TTL_EXPIRED
    assert all(r.value == r.name.lower() for r in DlqReason)
