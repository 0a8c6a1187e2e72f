"""The producer's memory bound: admission of records against a record and byte budget.

A record holds its share of the budget from ``put()`` until it is done (accepted or
dead-lettered), so the bound covers buffered and in-flight records alike. Waiting for room
works from threads (``acquire``) and from asyncio (``acquire_async``) on the same budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from typing import Any

from kingest.errors import ProducerClosedError


class BufferGate:
    """Admits records while at most ``max_records`` and ``max_bytes`` are held.

    A single record larger than ``max_bytes`` is admitted when nothing else is held, so no
    record can wait forever. An admitted record given to an ``acquire`` method is appended to
    :attr:`inbound` under the gate's lock, and :meth:`close` takes the same lock: whoever
    closes the gate and then drains :attr:`inbound` has every record ever admitted.
    """

    def __init__(self, max_records: int, max_bytes: int) -> None:
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.records = 0
        self.bytes = 0
        self.closed = False
        self.inbound: deque[Any] = deque()
        self.lock = threading.Lock()
        self._room = threading.Condition(self.lock)
        self._async_waiters: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = deque()

    def _fits(self, n_bytes: int) -> bool:
        if self.closed:
            raise ProducerClosedError("the producer is closed")
        if self.records >= self.max_records:
            return False
        return self.records == 0 or self.bytes + n_bytes <= self.max_bytes

    def _take(self, n_bytes: int, record: Any) -> None:
        self.records += 1
        self.bytes += n_bytes
        if record is not None:
            self.inbound.append(record)

    def take_inbound(self) -> deque[Any]:
        """Take every record admitted so far, leaving :attr:`inbound` empty."""
        with self.lock:
            taken, self.inbound = self.inbound, deque()
        return taken

    def try_acquire(self, n_bytes: int, record: Any = None) -> bool:
        """Take room for one record of ``n_bytes`` if there is some now.

        Raises:
            ProducerClosedError: the gate is closed.
        """
        with self.lock:
            if not self._fits(n_bytes):
                return False
            self._take(n_bytes, record)
            return True

    def acquire(self, n_bytes: int, timeout: float | None, record: Any = None) -> bool:
        """Wait (a thread) until there is room for one record; False if ``timeout`` passed.

        Raises:
            ProducerClosedError: the gate is closed, or closed while waiting.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._room:
            while not self._fits(n_bytes):
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._room.wait(remaining)
            self._take(n_bytes, record)
            return True

    async def acquire_async(self, n_bytes: int, timeout: float | None, record: Any = None) -> bool:
        """Wait (a coroutine) until there is room for one record; False if ``timeout`` passed.

        Raises:
            ProducerClosedError: the gate is closed, or closed while waiting.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            with self.lock:
                if self._fits(n_bytes):
                    self._take(n_bytes, record)
                    return True
                waiter: asyncio.Future[None] = loop.create_future()
                self._async_waiters.append((loop, waiter))
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return False
            try:
                await asyncio.wait_for(waiter, remaining)
            except TimeoutError:
                return False

    def close(self) -> None:
        """Admit nothing more; whoever waits for room gets ProducerClosedError."""
        with self.lock:
            self.closed = True
        self._wake_all()

    def release(self, n_records: int, n_bytes: int) -> None:
        """Give back the room of finished records and wake whoever waits for it."""
        with self.lock:
            self.records -= n_records
            self.bytes -= n_bytes
        self._wake_all()

    def _wake_all(self) -> None:
        with self.lock:
            self._room.notify_all()
            waiters = list(self._async_waiters)
            self._async_waiters.clear()
        for loop, waiter in waiters:
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits there
                loop.call_soon_threadsafe(_wake, waiter)

    @property
    def fill(self) -> float:
        """How full the buffer is, 0.0 to 1.0 (the larger of records and bytes)."""
        return max(self.records / self.max_records, self.bytes / self.max_bytes)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
