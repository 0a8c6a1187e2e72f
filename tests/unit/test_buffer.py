"""The producer's memory bound: admission, blocking from threads and coroutines, release."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from kingest.errors import ProducerClosedError
from kingest.producer.buffer import BufferGate


def test_admits_up_to_the_record_bound() -> None:
    gate = BufferGate(max_records=3, max_bytes=10_000)
    assert all(gate.try_acquire(10) for _ in range(3))
    assert not gate.try_acquire(10)
    assert (gate.records, gate.bytes) == (3, 30)
    assert gate.fill == 1.0
    gate.release(1, 10)
    assert gate.try_acquire(10)


def test_admits_up_to_the_byte_bound() -> None:
    gate = BufferGate(max_records=100, max_bytes=1024)
    assert gate.try_acquire(1000)
    assert not gate.try_acquire(25)
    assert gate.try_acquire(24)
    assert gate.bytes == 1024
    assert gate.fill == 1.0


def test_oversize_record_admitted_only_when_empty() -> None:
    gate = BufferGate(max_records=10, max_bytes=1024)
    assert gate.try_acquire(5000), "a record larger than the whole budget must not wait forever"
    assert gate.fill > 1.0
    assert not gate.try_acquire(1)
    gate.release(1, 5000)
    assert (gate.records, gate.bytes) == (0, 0)
    assert gate.try_acquire(1)
    assert not gate.try_acquire(5000), "not admitted while something else is held"


def test_acquire_times_out() -> None:
    gate = BufferGate(max_records=1, max_bytes=1024)
    assert gate.try_acquire(1)
    started = time.monotonic()
    assert not gate.acquire(1, timeout=0.1)
    assert 0.09 <= time.monotonic() - started < 1.0
    assert gate.records == 1


def test_acquire_blocks_a_thread_until_release() -> None:
    gate = BufferGate(max_records=2, max_bytes=1024)
    assert gate.try_acquire(1) and gate.try_acquire(1)
    got: list[bool] = []
    thread = threading.Thread(target=lambda: got.append(gate.acquire(1, timeout=10)))
    thread.start()
    # A negative (it did not return) can only be observed over some time.
    time.sleep(0.05)
    assert not got, "acquire() returned although the gate was full"
    gate.release(1, 1)
    thread.join(5)
    assert got == [True]
    assert gate.records == 2


def test_release_wakes_every_waiting_thread_it_has_room_for() -> None:
    gate = BufferGate(max_records=4, max_bytes=1024)
    for _ in range(4):
        gate.try_acquire(1)
    got: list[bool] = []
    lock = threading.Lock()

    def wait() -> None:
        ok = gate.acquire(1, timeout=5)
        with lock:
            got.append(ok)

    threads = [threading.Thread(target=wait) for _ in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(0.05)
    gate.release(3, 3)
    for thread in threads:
        thread.join(5)
    assert got == [True, True, True]
    assert gate.records == 4


def test_acquire_async_waits_for_release_from_another_thread() -> None:
    gate = BufferGate(max_records=1, max_bytes=1024)
    assert gate.try_acquire(1)

    async def go() -> tuple[bool, float]:
        timer = threading.Timer(0.1, gate.release, args=(1, 1))
        timer.start()
        started = time.monotonic()
        ok = await gate.acquire_async(1, timeout=5)
        timer.join()
        return ok, time.monotonic() - started

    ok, waited = asyncio.run(go())
    assert ok
    assert 0.08 <= waited < 2
    assert gate.records == 1


def test_acquire_async_times_out_and_leaves_the_loop_usable() -> None:
    gate = BufferGate(max_records=1, max_bytes=1024)
    assert gate.try_acquire(1)

    async def go() -> bool:
        ok = await gate.acquire_async(1, timeout=0.1)
        gate.release(1, 1)  # a late release must not break anything
        await asyncio.sleep(0.01)
        return ok

    assert asyncio.run(go()) is False
    assert gate.records == 0


def test_acquire_async_does_not_block_the_loop() -> None:
    gate = BufferGate(max_records=1, max_bytes=1024)
    assert gate.try_acquire(1)

    async def go() -> bool:
        waiter = asyncio.create_task(gate.acquire_async(1, timeout=5))
        await asyncio.sleep(0.05)
        assert not waiter.done()
        gate.release(1, 1)  # from the loop's own thread
        return await asyncio.wait_for(waiter, 2)

    assert asyncio.run(go())


def test_sync_and_async_waiters_share_one_budget() -> None:
    gate = BufferGate(max_records=2, max_bytes=1024)
    assert gate.try_acquire(1) and gate.try_acquire(1)
    results: list[str] = []

    def thread_wait() -> None:
        if gate.acquire(1, timeout=5):
            results.append("thread")

    async def go() -> None:
        thread = threading.Thread(target=thread_wait)
        thread.start()
        waiter = asyncio.create_task(gate.acquire_async(1, timeout=5))
        await asyncio.sleep(0.05)
        gate.release(2, 2)
        if await asyncio.wait_for(waiter, 5):
            results.append("task")
        await asyncio.to_thread(thread.join, 5)

    asyncio.run(go())
    assert sorted(results) == ["task", "thread"]
    assert gate.records == 2


@pytest.mark.parametrize(("records", "n_bytes", "fill"), [(5, 0, 0.5), (1, 512, 0.5), (0, 0, 0.0)])
def test_fill_is_the_larger_share(records: int, n_bytes: int, fill: float) -> None:
    gate = BufferGate(max_records=10, max_bytes=1024)
    gate.records, gate.bytes = records, n_bytes
    assert gate.fill == fill


def test_admitted_records_go_to_inbound_and_close_stops_admission() -> None:
    gate = BufferGate(max_records=1, max_bytes=1024)
    assert gate.try_acquire(10, "first")
    assert list(gate.inbound) == ["first"]
    outcome: list[BaseException | bool] = []

    def wait() -> None:
        try:
            outcome.append(gate.acquire(10, timeout=10, record="second"))
        except ProducerClosedError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=wait)
    thread.start()
    time.sleep(0.05)
    gate.close()
    thread.join(5)
    assert len(outcome) == 1 and isinstance(outcome[0], ProducerClosedError)
    assert list(gate.inbound) == ["first"], "nothing is admitted once the gate is closed"
    with pytest.raises(ProducerClosedError):
        gate.try_acquire(1, "third")
