"""The public producers: :class:`Producer` for threads, :class:`AsyncProducer` for asyncio.

Both are thin façades over one :class:`~kingest.producer.core.ProducerCore`. The sync one runs
the core on an event loop in a background thread; the async one runs it on the caller's loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

from kingest.config import ProducerConfig
from kingest.dlq import DeadLetterQueue
from kingest.errors import ConfigError
from kingest.metrics.events import producer_families
from kingest.metrics.registry import MetricFamily
from kingest.producer.admission import NoRoom
from kingest.producer.core import ProducerCore
from kingest.producer.outcomes import DeliveryMark
from kingest.producer.transport import KinesisTransport
from kingest.record import DlqReason, Record, RecordFuture


def _build_core(
    stream: str,
    config: ProducerConfig | None,
    endpoint_url: str | None,
    region: str | None,
    profile: str | None,
    dlq: DeadLetterQueue | None,
    settings: dict[str, Any],
) -> ProducerCore:
    if not stream:
        raise ConfigError("a stream name or ARN is required")
    if config is None:
        try:
            config = ProducerConfig(**settings)
        except ValueError as exc:
            raise ConfigError(f"invalid producer settings: {exc}") from exc
    elif settings:
        config = config.model_copy(update=settings)
    transport = KinesisTransport(
        endpoint_url=endpoint_url,
        region=region,
        profile=profile,
        request_timeout_s=config.request_timeout_ms / 1000,
        connect_timeout_s=config.connect_timeout_ms / 1000,
        max_connections=config.max_in_flight_requests + 4,
    )
    if dlq is None:
        dlq = DeadLetterQueue(config.dlq_dir, max_file_bytes=config.dlq_max_file_bytes)
    return ProducerCore(stream, config, transport, dlq)


def _not_started(*_: Any) -> RecordFuture:
    raise RuntimeError("start the producer before put_nowait()")


class Producer:
    """Thread-safe producer: ``put()`` from any thread, delivery on a background thread.

    Args:
        stream: stream name or ARN.
        config: producer settings; keyword ``settings`` override single fields.
        endpoint_url: Kinesis endpoint (default: standard AWS resolution).
        region: AWS region (default: standard AWS configuration).
        profile: named AWS profile.
        dlq: dead-letter queue (default: rotating files in ``config.dlq_dir``).

    Raises:
        StreamNotFoundError: the stream does not exist.
        CredentialsError: no credentials or region for a non-local endpoint.
        KinesisError: the stream cannot be described (access, unreachable endpoint).

    Example::

        with Producer("events") as producer:
            future = producer.put({"user": 1}, partition_key="user-1", source="app")
        print(future.result())
    """

    def __init__(
        self,
        stream: str,
        *,
        config: ProducerConfig | None = None,
        endpoint_url: str | None = None,
        region: str | None = None,
        profile: str | None = None,
        dlq: DeadLetterQueue | None = None,
        **settings: Any,
    ) -> None:
        self._core = _build_core(stream, config, endpoint_url, region, profile, dlq, settings)
        self._offer = self._core.offer
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="kingest-producer", daemon=True
        )
        self._thread.start()
        self._closed = False
        try:
            self._call(self._core.start(), None)
        except BaseException:
            self._call(self._core.transport.close(), None)
            self._stop_loop()
            raise

    def _call(self, coro: Any, timeout: float | None) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    @property
    def config(self) -> ProducerConfig:
        """The settings in force."""
        return self._core.config

    @property
    def aggregation(self) -> bool:
        """True when records are aggregated (off on streams that ignore partition keys)."""
        return self._core.aggregation

    @property
    def dlq(self) -> DeadLetterQueue:
        """Where records that cannot be delivered go."""
        return self._core.dlq

    def put(
        self,
        payload: Any,
        partition_key: str | None = None,
        explicit_hash_key: str | None = None,
        source: str | None = None,
        *,
        timeout: float | None = None,
    ) -> RecordFuture:
        """Hand one record to the producer.

        Args:
            payload: a dict/list (sent as compact JSON), bytes (as they are) or str (UTF-8).
            partition_key: Kinesis partition key; derived from the data when None.
            explicit_hash_key: decimal 128-bit hash key overriding the key's hash.
            source: source name for statistics and the dead-letter queue.
            timeout: longest wait for buffer room under ``on_buffer_full="block"``.

        Returns:
            A future resolving to the record's :class:`~kingest.record.RecordResult`.
            A record that can never be sent (bad key, too large) is dead-lettered at once.

        Raises:
            ProducerClosedError: after close().
            BufferFullError: no buffer room within ``timeout``.
        """
        try:
            return self._offer(payload, partition_key, explicit_hash_key, source)
        except NoRoom as wait:
            return self._core.admit_blocking(wait.pending, timeout)

    def reject(
        self,
        payload: Any,
        reason: DlqReason,
        message: str,
        *,
        source: str | None = None,
        partition_key: str | None = None,
    ) -> RecordFuture:
        """Send a record that cannot be used (it failed to parse, say) to the dead-letter queue.

        It is counted per source like any dead-lettered record, and the returned future is
        already done.
        """
        return self._core.reject(payload, reason, message, source, partition_key)

    def put_record(self, record: Record, *, timeout: float | None = None) -> RecordFuture:
        """Hand a :class:`~kingest.record.Record` to the producer (see :meth:`put`)."""
        return self.put(
            record.payload,
            record.partition_key,
            record.explicit_hash_key,
            record.source,
            timeout=timeout,
        )

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every record put so far is delivered or dead-lettered.

        Raises:
            TimeoutError: not done within ``timeout`` seconds.
        """
        self._call(self._core.flush(), timeout)

    def close(self, timeout: float | None = None) -> None:
        """Deliver or dead-letter everything, then stop. Idempotent.

        Args:
            timeout: seconds to wait for delivery; what is left then is dead-lettered.
        """
        if self._closed:
            return
        self._closed = True
        try:
            self._call(self._core.close(timeout), None)
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def stats(self) -> dict[str, Any]:
        """Delivery statistics (the seed's ``get_stats()`` fields, and more)."""
        return self._core.snapshot()

    get_stats = stats

    def metrics(self) -> list[MetricFamily]:
        """The producer's metrics, as Prometheus-style families (see
        :mod:`kingest.metrics.events`; render them with
        :func:`kingest.metrics.prometheus.render`)."""
        return producer_families([self._core])

    def __enter__(self) -> Producer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncProducer:
    """Asyncio producer over the same core: ``await put()`` waits for buffer room.

    Use ``async with AsyncProducer(...) as producer:`` or call :meth:`start` first.
    Arguments are those of :class:`Producer`.
    """

    def __init__(
        self,
        stream: str,
        *,
        config: ProducerConfig | None = None,
        endpoint_url: str | None = None,
        region: str | None = None,
        profile: str | None = None,
        dlq: DeadLetterQueue | None = None,
        **settings: Any,
    ) -> None:
        self._core = _build_core(stream, config, endpoint_url, region, profile, dlq, settings)
        self._started = False
        self._closed = False
        self._offer: Callable[[Any, Any, Any, str | None], RecordFuture] = _not_started

    @property
    def config(self) -> ProducerConfig:
        """The settings in force."""
        return self._core.config

    @property
    def aggregation(self) -> bool:
        """True when records are aggregated."""
        return self._core.aggregation

    @property
    def dlq(self) -> DeadLetterQueue:
        """Where records that cannot be delivered go."""
        return self._core.dlq

    async def start(self) -> None:
        """Describe the stream and start sending on the running loop.

        Raises:
            StreamNotFoundError: the stream does not exist.
            KinesisError: the stream cannot be described.
        """
        if not self._started:
            try:
                await self._core.start()
            except BaseException:
                await self._core.transport.close()
                raise
            self._started = True
            self._offer = self._core.offer

    async def put(
        self,
        payload: Any,
        partition_key: str | None = None,
        explicit_hash_key: str | None = None,
        source: str | None = None,
        *,
        timeout: float | None = None,
    ) -> RecordFuture:
        """Hand one record to the producer, awaiting buffer room (see :meth:`Producer.put`).

        Returns:
            An awaitable future resolving to the record's result.
        """
        if not self._started:
            await self.start()
        try:
            return self._core.offer(payload, partition_key, explicit_hash_key, source)
        except NoRoom as wait:
            return await self._core.admit_async(wait.pending, timeout)

    def put_nowait(
        self,
        payload: Any,
        partition_key: str | None = None,
        explicit_hash_key: str | None = None,
        source: str | None = None,
    ) -> RecordFuture | None:
        """Hand one record to the started producer without waiting.

        The cheap path for sources that put many records between awaits: when it returns
        None the buffer is full, nothing was taken, and the caller awaits :meth:`put` for
        that record instead.

        Raises:
            ProducerClosedError: after close().
            RuntimeError: the producer is not started.
        """
        try:
            return self._offer(payload, partition_key, explicit_hash_key, source)
        except NoRoom:
            return None

    def put_many_nowait(
        self, records: Sequence[tuple[Any, str | None]], source: str | None = None
    ) -> int:
        """Hand records to the started producer without waiting, in order, while there is room.

        The cheap path for a source that follows delivery with :meth:`mark` rather than per
        record: no future is made for the caller, and the buffer is claimed once per run of
        records rather than once per record. Each record is as in :meth:`put`, without an
        explicit hash key.

        Args:
            records: ``(payload, partition_key)`` pairs; a None key is derived from the data.
            source: source name for statistics and the dead-letter queue.

        Returns:
            How many of the leading records were taken. Fewer than all when the buffer is
            full: the caller awaits :meth:`put` for the next one, then goes on.

        Raises:
            ProducerClosedError: after close().
            RuntimeError: the producer is not started.
            TypeError: a payload cannot be serialised; the records before it are taken.
        """
        if not self._started:
            raise RuntimeError("start the producer before put_many_nowait()")
        return self._core.offer_many(records, source)

    async def put_many(
        self, records: Sequence[tuple[Any, str | None]], source: str | None = None
    ) -> None:
        """Hand every record to the producer, in order, awaiting buffer room when it is full.

        :meth:`put_many_nowait` as far as there is room, then one record at a time through
        :meth:`put` (which waits), then the rest together again. No futures: follow delivery
        with :meth:`mark`.

        Raises:
            ProducerClosedError: after close().
            TypeError: a payload cannot be serialised; the records before it are taken.
        """
        if not self._started:
            await self.start()
        count = len(records)
        taken = self._core.offer_many(records, source)
        while taken < count:
            payload, key = records[taken]
            await self.put(payload, key, None, source)
            taken += 1
            if taken < count:
                taken += self._core.offer_many(records[taken:], source)

    def mark(self) -> DeliveryMark:
        """A mark whose ``done()`` is true once every record put before it is done.

        One mark per batch lets a source commit a batch's positions without looking at each
        record's future.

        Raises:
            RuntimeError: the producer is not started.
        """
        if not self._started:
            raise RuntimeError("start the producer before mark()")
        return self._core.mark()

    def reject(
        self,
        payload: Any,
        reason: DlqReason,
        message: str,
        *,
        source: str | None = None,
        partition_key: str | None = None,
    ) -> RecordFuture:
        """Send a record that cannot be used to the dead-letter queue (see Producer.reject)."""
        return self._core.reject(payload, reason, message, source, partition_key)

    async def put_record(self, record: Record, *, timeout: float | None = None) -> RecordFuture:
        """Hand a :class:`~kingest.record.Record` to the producer."""
        return await self.put(
            record.payload,
            record.partition_key,
            record.explicit_hash_key,
            record.source,
            timeout=timeout,
        )

    async def flush(self) -> None:
        """Wait until every record put so far is delivered or dead-lettered."""
        await self._core.flush()

    async def close(self, timeout: float | None = None) -> None:
        """Deliver or dead-letter everything, then stop. Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._core.close(timeout)

    def stats(self) -> dict[str, Any]:
        """Delivery statistics (the seed's ``get_stats()`` fields, and more)."""
        return self._core.snapshot()

    get_stats = stats

    def metrics(self) -> list[MetricFamily]:
        """The producer's metrics (see :meth:`Producer.metrics`)."""
        return producer_families([self._core])

    @property
    def core(self) -> ProducerCore:
        """The producer's engine, whose live statistics the metrics read."""
        return self._core

    async def __aenter__(self) -> AsyncProducer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
