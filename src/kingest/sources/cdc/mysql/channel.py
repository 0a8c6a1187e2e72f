"""The bounded channel that hands the reader thread's chunks to the event loop.

The binlog reader thread (see :mod:`~kingest.sources.cdc.mysql.reader`) puts the chunks the
:class:`~kingest.sources.cdc.mysql.assembler.TransactionAssembler` cuts into a :class:`Channel`,
and the source takes them on the event loop. When the channel is full the thread waits: the
binlog is read no faster than Kinesis accepts it, and nothing is dropped. A fatal error of the
thread travels the same way, behind the chunks read before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque

from kingest.sources.cdc.mysql.assembler import Chunk

__all__ = ["Channel", "ReaderStopped"]


class ReaderStopped(Exception):
    """The reader was asked to stop (raised in the thread to unwind it)."""


class Channel:
    """Chunks from the reader thread to the event loop, bounded in events.

    :meth:`put` (thread) waits while the channel holds ``capacity`` events or more;
    :meth:`get` (loop) takes everything held at once. A chunk that only moves the position
    forward is merged into the previous chunk when that one ends a transaction, so a stream of
    transactions on tables not captured takes no room.

    Args:
        loop: the event loop that calls :meth:`get`.
        capacity: events held before :meth:`put` waits.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, capacity: int) -> None:
        self._loop = loop
        self._capacity = capacity
        self._cond = threading.Condition()
        self._chunks: deque[Chunk] = deque()
        self._held = 0
        self._error: BaseException | None = None
        self._closed = False
        self._waiting = False
        self._ready = asyncio.Event()

    def put(self, chunk: Chunk) -> None:
        """Hand a chunk over, waiting while the channel is full (reader thread).

        Raises:
            ReaderStopped: the channel was closed.
        """
        with self._cond:
            while self._held >= self._capacity and not self._closed:
                self._cond.wait()
            if self._closed:
                raise ReaderStopped
            chunks = self._chunks
            if not chunk.size and chunk.end is not None and chunks and chunks[-1].end is not None:
                chunks[-1].end = chunk.end
                return
            chunks.append(chunk)
            self._held += max(chunk.size, 1)
            wake = self._waiting
            self._waiting = False
        if wake:
            self._wake()

    def fail(self, error: BaseException) -> None:
        """Hand the reader's fatal error over; :meth:`get` raises it after the chunks held."""
        with self._cond:
            self._error = error
            self._waiting = False
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            self._loop.call_soon_threadsafe(self._ready.set)

    async def get(self, timeout_s: float | None = None) -> list[Chunk]:
        """Every chunk held, waiting up to ``timeout_s`` for one (event loop).

        Returns:
            The chunks in order; empty after the timeout or once closed.

        Raises:
            BaseException: the reader's fatal error, once the chunks before it are taken.
        """
        while True:
            with self._cond:
                if self._chunks:
                    chunks = list(self._chunks)
                    self._chunks.clear()
                    self._held = 0
                    self._cond.notify_all()
                    return chunks
                if self._error is not None:
                    raise self._error
                if self._closed:
                    return []
                self._waiting = True
                self._ready.clear()
            try:
                async with asyncio.timeout(timeout_s):
                    await self._ready.wait()
            except TimeoutError:
                return []

    def close(self) -> None:
        """Refuse further chunks and release a waiting reader and a waiting :meth:`get`."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._ready.set()
