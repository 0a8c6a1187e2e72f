"""Durable acceptance for the HTTP source: events on disk before the 202, replayed after a crash.

With ``ack: spooled`` an HTTP request is answered once its events are written and fsync'd to
the source's :class:`~kingest.spool.Spool`, and the spool, not the client, becomes the input
the source can replay. Two tasks share the work:

- the *writer* takes every request waiting at that moment and writes their events in one
  ``Spool.write`` (one fsync for all of them: a group commit), in a worker thread so that the
  event loop never waits on the disk, then wakes the requests;
- the *pump* hands the written events to the producer in sequence order and gives the ack
  tracker each batch's last sequence number, so the spool is committed (and its segments freed)
  only up to events that are delivered or dead-lettered.

Events written but not committed when the agent stops or crashes are in :meth:`Spool.pending`
at the next start, and are sent before anything new. Memory stays bounded: a request waits
(and is refused with 503 after the admission timeout) while more than ``max_queued_events``
written events wait for the producer.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

import orjson

from kingest.sources.base import SourceContext
from kingest.spool import Spool

log = logging.getLogger(__name__)

# The ack tracker's lane of spooled events: one sequence, in the spool's order.
SPOOL_LANE = "spool"
# Most events handed to the producer in one put_many.
PUMP_BATCH = 500

Event = tuple[dict[str, Any], str | None]


class SpoolBusy(Exception):
    """Too many written events wait for the producer: the request is refused (503)."""


class Spooler:
    """Group commit of many requests' events to the spool, and their hand-over in order.

    Args:
        spool: the open spool.
        max_queued_events: most written events waiting for the producer before requests wait.
    """

    def __init__(self, spool: Spool, max_queued_events: int) -> None:
        self.spool = spool
        self.max_queued_events = max_queued_events
        self._submitted: list[tuple[list[Event], asyncio.Future[None]]] = []
        self._written: deque[tuple[list[Event], int]] = deque()
        self._queued = 0
        self._submission = asyncio.Event()
        self._more_written = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._closing = False
        self._ctx: SourceContext | None = None

    def recover(self) -> int:
        """Queue the events a previous run wrote but never committed; how many there were."""
        count = 0
        batch: list[Event] = []
        last = 0
        for seq, item in self.spool.pending():
            payload, key = orjson.loads(item)
            batch.append((payload, key))
            last = seq
            if len(batch) == PUMP_BATCH:
                self._push(batch, last)
                count += len(batch)
                batch = []
        if batch:
            self._push(batch, last)
            count += len(batch)
        return count

    async def submit(self, events: list[Event], timeout_s: float) -> None:
        """Return once ``events`` are on disk (fsync'd).

        Raises:
            SpoolBusy: the producer is behind by more than ``max_queued_events`` for longer than
                ``timeout_s``, or the source is stopping.
            SpoolError: the spool cannot be written.
        """
        if self._closing:
            raise SpoolBusy("the source is stopping")
        if self._queued >= self.max_queued_events:
            self._room.clear()
            try:
                await asyncio.wait_for(self._room.wait(), timeout_s)
            except TimeoutError:
                raise SpoolBusy("the buffer stays full") from None
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._submitted.append((events, done))
        self._submission.set()
        await done

    def measure(self, ctx: SourceContext) -> None:
        """Put the spool's backlog and size in the source's statistics."""
        ctx.stats.spooled_events = self.spool.last - self.spool.committed
        ctx.stats.spool_bytes = self.spool.bytes_on_disk

    async def run(self, ctx: SourceContext) -> None:
        """Write and pump until :meth:`close` and everything submitted is handed over."""
        self._ctx = ctx
        self.measure(ctx)
        writer = asyncio.create_task(self._write_loop(), name=f"kingest-spool-{ctx.name}")
        try:
            await self._pump(ctx, writer)
        finally:
            if not writer.done():
                writer.cancel()

    def close(self) -> None:
        """Refuse new submissions (the source is stopping)."""
        self._closing = True
        self._submission.set()

    async def _write_loop(self) -> None:
        """Write what was submitted, all at once, until closed and nothing is left."""
        while True:
            if not self._submitted:
                if self._closing:
                    return
                self._submission.clear()
                await self._submission.wait()
                continue
            taken, self._submitted = self._submitted, []
            items = [orjson.dumps(event) for events, _ in taken for event in events]
            try:
                last = await asyncio.to_thread(self.spool.write, items)
            except Exception as exc:
                for _, done in taken:
                    if not done.done():
                        done.set_exception(exc)
                continue
            if self._ctx is not None:
                self.measure(self._ctx)
            first = last - len(items) + 1
            for events, done in taken:
                first += len(events)
                if events:
                    self._push(events, first - 1)
                if not done.done():
                    done.set_result(None)

    def _push(self, events: list[Event], last_seq: int) -> None:
        self._written.append((events, last_seq))
        self._queued += len(events)
        self._more_written.set()

    async def _pump(self, ctx: SourceContext, writer: asyncio.Task[None]) -> None:
        """Hand written events to the producer in order; each batch's last seq to the acks."""
        producer = ctx.producer
        while True:
            if not self._written:
                if writer.done():
                    writer.result()  # a writer failure ends the source
                    return
                self._more_written.clear()
                waiter = asyncio.ensure_future(self._more_written.wait())
                await asyncio.wait({waiter, writer}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                continue
            events, last_seq = self._written.popleft()
            await producer.put_many(events, ctx.name)
            ctx.acks.add(SPOOL_LANE, last_seq, producer.mark())
            self._queued -= len(events)
            if self._queued < self.max_queued_events:
                self._room.set()
