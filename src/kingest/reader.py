"""Reading a stream back: every shard, parents before children, KPL aggregates unpacked.

This module's one job is to turn a Kinesis stream into the sequence of *user* records its
producers put, for ``kingest read``, the tests and the demo. It is a plain polling reader
(ListShards, GetShardIterator, GetRecords), not a checkpointing consumer: it keeps no lease and
no position across runs. Each Kinesis record is unpacked by
:func:`kingest.read_records.unpack_record`, which also handles damaged aggregates.

Order: records of one shard come out in shard order, and a shard is read only after its parent
shards (``ParentShardId`` and, after a merge, ``AdjacentParentShardId``) have been read to their
end, so the records of one partition key come out in the order they were stored even across a
split or a merge. Records of different shards are interleaved in no particular order.

Pace: each shard makes at most five GetRecords calls per second (the service's per-shard
limit) and, once caught up, one per ``poll_interval_s``. Throttling (``ProvisionedThroughput
ExceededException``, ``LimitExceededException``) and other retriable failures are retried with
exponential backoff and full jitter for up to :data:`RETRY_BUDGET_S` of consecutive failures.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, Final, Literal

from kingest.errors import KinesisError, StreamNotFoundError
from kingest.producer.retry import Backoff
from kingest.producer.transport import KinesisTransport
from kingest.read_records import ReadRecord, unpack_record

__all__ = [
    "START_POSITIONS",
    "iter_batches",
    "iter_stream",
    "read_all",
]

log = logging.getLogger(__name__)

StartPosition = Literal["trim_horizon", "latest"]
START_POSITIONS: Final = ("trim_horizon", "latest")

GET_RECORDS_LIMIT: Final = 10_000  # the most GetRecords returns in one call
MIN_CALL_INTERVAL_S: Final = 0.2  # GetRecords: at most 5 calls per second per shard
RETRY_BASE_S: Final = 0.2
RETRY_MAX_S: Final = 5.0
# How long consecutive retriable failures of one call are retried before the read fails: long
# enough to ride out throttling and a brief outage, short enough that a dead endpoint ends a
# bounded read instead of hanging it.
RETRY_BUDGET_S: Final = 60.0
# The first ListShards fails sooner: an endpoint that never answered is most likely a wrong
# --endpoint-url or region, which waiting does not fix.
FIRST_LISTING_BUDGET_S: Final = 5.0
# Batches (one GetRecords answer each) waiting for the consumer; a slow consumer holds the
# shard readers back rather than letting memory grow (a batch can reach 10 MiB).
_QUEUE_BATCHES: Final = 8
# How often the consumer side checks for idleness, a finished stream or a failed shard reader
# while no batch arrives.
_TICK_S: Final = 0.05


def _stream_params(stream: str) -> dict[str, str]:
    return {"StreamARN": stream} if stream.startswith("arn:") else {"StreamName": stream}


@dataclass(slots=True)
class _Shard:
    shard_id: str
    parents: tuple[str, ...]
    iterator_type: str
    done: asyncio.Event
    # When the last GetRecords call that found nothing new (no records, MillisBehindLatest 0
    # or absent) was sent; None after an answer with records or one still behind.
    quiet_since: float | None = None
    task: asyncio.Task[None] | None = None


class _StreamReader:
    """The shard tasks of one read and what the consumer side needs to know about them."""

    def __init__(
        self,
        transport: KinesisTransport,
        stream: str,
        start: StartPosition,
        poll_interval_s: float,
    ) -> None:
        self.transport = transport
        self.stream = stream
        self.start_type = start.upper()
        self.poll_interval_s = poll_interval_s
        self.queue: asyncio.Queue[list[ReadRecord]] = asyncio.Queue(_QUEUE_BATCHES)
        self.shards: dict[str, _Shard] = {}
        self.failure: BaseException | None = None
        self.last_record_at = time.monotonic()
        self._discover_lock = asyncio.Lock()
        self._discovered_once = False

    async def call(
        self, operation: str, params: dict[str, Any], budget_s: float = RETRY_BUDGET_S
    ) -> dict[str, Any]:
        """Call with backoff on retriable failures, for up to ``budget_s`` of them in a row."""
        backoff = Backoff(RETRY_BASE_S, RETRY_MAX_S)
        failures = 0
        first_failure = 0.0
        while True:
            try:
                return await self.transport.call(operation, params)
            except KinesisError as exc:
                if not exc.retriable:
                    raise
                now = time.monotonic()
                if failures == 0:
                    first_failure = now
                failures += 1
                if now - first_failure > budget_s:
                    raise
                delay = max(backoff.delay(failures), MIN_CALL_INTERVAL_S)
                log.debug("%s failed with %s; retrying in %.2fs.", operation, exc.code, delay)
                await asyncio.sleep(delay)

    async def discover(self) -> None:
        """List the shards and start a reader for each one not seen before.

        Shards found by the first listing start at the requested position; shards found later
        are children created while reading, so all of their records are new: TRIM_HORIZON.
        """
        async with self._discover_lock:
            listed: list[dict[str, Any]] = []
            params: dict[str, Any] = _stream_params(self.stream)
            budget_s = RETRY_BUDGET_S if self._discovered_once else FIRST_LISTING_BUDGET_S
            while True:
                try:
                    answer = await self.call("ListShards", params, budget_s)
                except StreamNotFoundError as exc:
                    raise StreamNotFoundError(
                        f"stream {self.stream} does not exist (ListShards answered "
                        f"{exc.code}; the stream is missing or these credentials cannot see it)"
                    ) from exc
                listed.extend(answer.get("Shards") or [])
                token = answer.get("NextToken")
                if not token:
                    break
                params = {"NextToken": token}  # a token replaces the stream name
            iterator_type = self.start_type if not self._discovered_once else "TRIM_HORIZON"
            self._discovered_once = True
            for item in listed:
                shard_id = str(item["ShardId"])
                if shard_id in self.shards:
                    continue
                parents = tuple(
                    str(item[key])
                    for key in ("ParentShardId", "AdjacentParentShardId")
                    if item.get(key)
                )
                self.shards[shard_id] = _Shard(shard_id, parents, iterator_type, asyncio.Event())
            # Tasks start only once every shard of this listing is known, so a child always
            # finds its parent (listed in the same answer) to wait for.
            for shard in self.shards.values():
                if shard.task is None:
                    shard.task = asyncio.create_task(
                        self._guarded(shard), name=f"kingest-read-{shard.shard_id}"
                    )

    async def _guarded(self, shard: _Shard) -> None:
        try:
            await self._read_shard(shard)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            if self.failure is None:
                self.failure = exc

    async def _iterator(self, shard: _Shard, after: str | None) -> str | None:
        params: dict[str, Any] = {**_stream_params(self.stream), "ShardId": shard.shard_id}
        if after is None:
            params["ShardIteratorType"] = shard.iterator_type
        else:
            params["ShardIteratorType"] = "AFTER_SEQUENCE_NUMBER"
            params["StartingSequenceNumber"] = after
        answer = await self.call("GetShardIterator", params)
        iterator = answer.get("ShardIterator")
        return str(iterator) if iterator else None

    async def _read_shard(self, shard: _Shard) -> None:
        for parent_id in shard.parents:
            parent = self.shards.get(parent_id)
            if parent is not None:  # a parent past retention is not listed: nothing to wait for
                await parent.done.wait()
        iterator = await self._iterator(shard, None)
        log.info("Started reading shard %s at %s.", shard.shard_id, shard.iterator_type)
        last_sequence: str | None = None
        last_call = 0.0
        while iterator:
            pause = last_call + MIN_CALL_INTERVAL_S - time.monotonic()
            if pause > 0:
                await asyncio.sleep(pause)
            sent_at = time.monotonic()
            try:
                answer = await self.call(
                    "GetRecords", {"ShardIterator": iterator, "Limit": GET_RECORDS_LIMIT}
                )
            except KinesisError as exc:
                if exc.code != "ExpiredIteratorException":
                    raise
                # Only after a long stall (an iterator lives five minutes): resume where we were.
                log.info("Shard iterator of %s expired; getting a new one.", shard.shard_id)
                iterator = await self._iterator(shard, last_sequence)
                continue
            last_call = time.monotonic()
            records = answer.get("Records") or []
            behind = answer.get("MillisBehindLatest")
            iterator = answer.get("NextShardIterator")
            if records:
                batch: list[ReadRecord] = []
                for record in records:
                    batch.extend(unpack_record(shard.shard_id, record))
                last_sequence = str(records[-1]["SequenceNumber"])
                shard.quiet_since = None
                if batch:
                    await self.queue.put(batch)
                self.last_record_at = time.monotonic()
            else:
                shard.quiet_since = None if behind else sent_at
            # Behind or a full answer: more is waiting, so only the per-shard call limit applies.
            # Otherwise poll like the KCL does, leaving most of the shard's five reads per
            # second to the stream's other consumers.
            if iterator and not behind and len(records) < GET_RECORDS_LIMIT:
                await asyncio.sleep(self.poll_interval_s)
        log.info("Finished reading closed shard %s.", shard.shard_id)
        shard.done.set()
        # A shard closes when it is split or merged: its children are new shards to read.
        await self.discover()

    def finished(self) -> bool:
        """True when every shard is closed and read to its end (nothing can come any more)."""
        return all(shard.task is not None and shard.task.done() for shard in self.shards.values())

    def idle(self, idle_s: float) -> bool:
        """True when no record came for ``idle_s`` seconds, as every open shard confirmed.

        Each open shard must have found nothing new in a call sent ``idle_s`` or more after
        the last record arrived, so a record stored during the idle period is never missed
        because no call looked for it (the poll interval may be longer than ``idle_s``).
        """
        threshold = self.last_record_at + idle_s
        return all(
            shard.done.is_set()
            or (shard.quiet_since is not None and shard.quiet_since >= threshold)
            for shard in self.shards.values()
        )

    async def stop(self) -> None:
        """Cancel every shard task and wait for them to end."""
        tasks = [shard.task for shard in self.shards.values() if shard.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def iter_batches(
    transport: KinesisTransport,
    stream: str,
    *,
    start: StartPosition = "trim_horizon",
    until_idle_s: float | None = None,
    poll_interval_s: float = 1.0,
) -> AsyncGenerator[list[ReadRecord], None]:
    """Read a stream, yielding the user records of each GetRecords answer as one list.

    Use with ``contextlib.aclosing`` (or run to the end) so that the shard tasks are stopped
    when the caller stops early. See :func:`iter_stream` for the arguments and the order.

    Yields:
        Non-empty lists of records of one shard, in shard order.

    Raises:
        StreamNotFoundError: the stream does not exist.
        KinesisError: a call failed for good (non-retriable, or retriable for too long).
        ValueError: ``start`` is not a known position or a duration is negative.
    """
    if start not in START_POSITIONS:
        raise ValueError(f"start must be one of {', '.join(START_POSITIONS)}, not {start!r}")
    if until_idle_s is not None and not until_idle_s >= 0:
        raise ValueError(f"until_idle_s must be a non-negative number, not {until_idle_s}")
    if not poll_interval_s >= 0:
        raise ValueError(f"poll_interval_s must be a non-negative number, not {poll_interval_s}")
    reader = _StreamReader(transport, stream, start, max(poll_interval_s, MIN_CALL_INTERVAL_S))
    try:
        await reader.discover()
        while True:
            # A failed shard ends the read at once; the records it would have given are gone.
            if reader.failure is not None:
                raise reader.failure
            try:
                batch = reader.queue.get_nowait()
            except asyncio.QueueEmpty:
                # Nothing waiting: decide whether to stop before waiting for more.
                if reader.finished():
                    log.info("Every shard of stream %s is closed and read.", stream)
                    return
                if until_idle_s is not None and reader.idle(until_idle_s):
                    log.info("No record arrived for %gs; stopping.", until_idle_s)
                    return
                try:
                    batch = await asyncio.wait_for(reader.queue.get(), _TICK_S)
                except TimeoutError:
                    continue
            yield batch
    finally:
        await reader.stop()


async def iter_stream(
    transport: KinesisTransport,
    stream: str,
    *,
    start: StartPosition = "trim_horizon",
    until_idle_s: float | None = None,
    poll_interval_s: float = 1.0,
) -> AsyncGenerator[ReadRecord, None]:
    """Read every user record of a stream: all shards, parents before children.

    Records of one shard come in shard order (user records of an aggregate in their order
    inside it), and a shard's records come only after those of its parent shards, so each
    partition key's records come in the order they were stored, resharding included. Use with
    ``contextlib.aclosing`` (or run to the end) so the shard tasks stop with the caller.

    Args:
        transport: the Kinesis wire; the caller closes it.
        stream: stream name or ARN.
        start: "trim_horizon" (everything retained) or "latest" (only records stored after
            each shard's iterator was taken; shards created while reading are read whole).
        until_idle_s: end once no record came for this many seconds, confirmed by a call to
            every open shard sent after that period that found nothing (and MillisBehindLatest
            0 where given); None reads until cancelled. The read also ends when every shard is
            closed and read.
        poll_interval_s: pause between GetRecords calls of a caught-up shard (at least 0.2 s;
            1 s, the KCL's default, leaves most of a shard's read budget to other consumers).

    Yields:
        :class:`ReadRecord` objects.

    Raises:
        StreamNotFoundError: the stream does not exist.
        KinesisError: a call failed for good (non-retriable, or retriable for too long).
        ValueError: ``start`` is not a known position or a duration is negative.
    """
    batches = iter_batches(
        transport,
        stream,
        start=start,
        until_idle_s=until_idle_s,
        poll_interval_s=poll_interval_s,
    )
    async with contextlib.aclosing(batches):
        async for batch in batches:
            for record in batch:
                yield record


def read_all(
    endpoint_url: str,
    stream: str,
    *,
    idle_s: float = 1.0,
    region: str | None = None,
) -> list[ReadRecord]:
    """Read a whole stream from the start until it has been idle, from synchronous code.

    Args:
        endpoint_url: Kinesis endpoint.
        stream: stream name or ARN.
        idle_s: stop once no record came for this many seconds (see :func:`iter_stream`).
        region: AWS region (default: standard configuration; any for a local endpoint).

    Returns:
        Every user record, each shard's in order, parents' before children's.

    Raises:
        StreamNotFoundError: the stream does not exist.
        KinesisError: a call failed for good.
        CredentialsError: no usable region or credentials for a non-local endpoint.
    """
    # Imported here: the embedded endpoint's module is a heavier import than reading needs.
    from kingest.local.process import run_sync

    async def collect() -> list[ReadRecord]:
        transport = KinesisTransport(endpoint_url=endpoint_url, region=region)
        try:
            records = iter_stream(transport, stream, until_idle_s=idle_s)
            async with contextlib.aclosing(records):
                return [record async for record in records]
        finally:
            await transport.close()

    return run_sync(collect)
