"""Run an agent config: every source and its producer on one asyncio loop.

Each source runs as a task feeding the producer of its stream. A committer task asks every
source's ack tracker, every ``commit_interval_ms``, which positions became safe (every record
before them delivered or dead-lettered) and has the source store them. On stop, the sources
end, the producers deliver or dead-letter what they hold, and the last positions are committed
before anything is closed, so a clean restart sends nothing twice.

The agent's metrics live in :attr:`Agent.registry`; with ``metrics.address`` set they are
served as Prometheus text on ``/metrics`` (with ``/health``) from before the sources start to
after the last commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from kingest.addresses import parse_host_port
from kingest.agent.config import AgentConfig
from kingest.checkpoint import CheckpointStore
from kingest.dlq import DeadLetterQueue
from kingest.errors import KingestError
from kingest.metrics.cloudwatch import CloudWatchExporter
from kingest.metrics.events import (
    cloudwatch_families,
    process_families,
    producer_families,
    source_families,
)
from kingest.metrics.prometheus import MetricsServer
from kingest.metrics.registry import MetricFamily, Registry
from kingest.producer.producer import AsyncProducer
from kingest.runtime import tune_for_reader_threads
from kingest.schemas.validate import RecordValidator, load_registry, validator_for
from kingest.sources.base import Source, SourceContext

log = logging.getLogger(__name__)

# Longest a stopping agent waits for its last CloudWatch publication.
CLOUDWATCH_FINAL_FLUSH_S = 20.0


class SourceFailedError(RuntimeError):
    """A source stopped with an unexpected error; the agent shut down cleanly after it."""


class Agent:
    """The sources of one config, their producers and their checkpoints.

    Args:
        config: the validated config.
        endpoint_url: overrides the config's endpoint (the CLI's ``--endpoint-url``).
    """

    def __init__(self, config: AgentConfig, *, endpoint_url: str | None = None) -> None:
        self.config = config
        self.endpoint_url = endpoint_url or config.endpoint_url
        self.sources: list[tuple[Source, SourceContext]] = []
        self.producers: dict[str, AsyncProducer] = {}
        self._store: CheckpointStore | None = None
        self._dlq: DeadLetterQueue | None = None
        # Set once every source has started (a slot created, a port bound, a broker joined).
        self.started = asyncio.Event()
        self.started_at = time.time()
        self.registry = Registry()
        self.registry.register(self._families)
        self.metrics_server: MetricsServer | None = None
        self.cloudwatch: CloudWatchExporter | None = None
        self._state = "starting"

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set (or a source fails), then shut down cleanly.

        Raises:
            ConfigError, KinesisError: a source or a stream cannot be set up.
            SourceFailedError: a source failed while running (after the clean shutdown).
        """
        config = self.config
        self._store = CheckpointStore(config.checkpoint_path)
        self._dlq = DeadLetterQueue(config.producer.dlq_dir)
        failure: BaseException | None = None
        exporting = asyncio.Event()  # set: the CloudWatch exporter's last flush
        exporter: asyncio.Task[None] | None = None
        try:
            await self._start_metrics()
            if self.cloudwatch is not None:
                exporter = asyncio.create_task(
                    self.cloudwatch.run(exporting), name="kingest-cloudwatch"
                )
            await self._start()
            self._state = "running"
            self.started.set()
            failure = await self._run_sources(stop)
        finally:
            self._state = "stopping" if failure is None else "failed"
            await self._shutdown()
            # After the shutdown: the last interval holds the last deliveries.
            exporting.set()
            if exporter is not None:
                await self._finish_export(exporter)
            elif self.cloudwatch is not None:
                self.cloudwatch.close()  # made, but the agent stopped before it ran
            if self.metrics_server is not None:
                await self.metrics_server.close()
        if failure is not None:
            raise SourceFailedError(str(failure)) from failure

    async def _start_metrics(self) -> None:
        metrics = self.config.metrics
        if metrics.cloudwatch is not None:
            self.cloudwatch = CloudWatchExporter(
                self.registry,
                metrics.cloudwatch,
                region=self.config.region,
                profile=self.config.profile,
            )
        if metrics.address is not None:
            host, port = parse_host_port(metrics.address, any_port=True)
            self.metrics_server = MetricsServer(self.registry, host, port, self.health)
            await self.metrics_server.start()

    async def _finish_export(self, exporter: asyncio.Task[None]) -> None:
        try:
            await asyncio.wait_for(exporter, CLOUDWATCH_FINAL_FLUSH_S)
        except TimeoutError:
            log.warning(
                "CloudWatch did not take the last metrics in time; they are not published.",
                extra={"timeout_s": CLOUDWATCH_FINAL_FLUSH_S},
            )

    def _families(self) -> list[MetricFamily]:
        sources = [(source.name, ctx.stats) for source, ctx in self.sources]
        cores = [producer.core for producer in self.producers.values()]
        families = [
            *process_families(self.started_at),
            *source_families(sources),
            *producer_families(cores, (name for name, _ in sources)),
        ]
        if self.cloudwatch is not None:
            families.extend(cloudwatch_families(self.cloudwatch))
        return families

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Whether the agent runs (for ``/health``), with each source's status."""
        details: dict[str, Any] = {"status": self._state}
        sources = {}
        for source, _ in self.sources:
            try:
                sources[source.name] = source.status()
            except Exception as exc:  # a status must never take the endpoint down
                sources[source.name] = {"error": str(exc)}
        details["sources"] = sources
        return self._state == "running", details

    async def _start(self) -> None:
        config = self.config
        assert self._store is not None
        validators = self._validators()
        built = [
            (source_config, source_config.build(self._store)) for source_config in config.sources
        ]
        if any(source.reads_in_thread for _, source in built):
            tune_for_reader_threads()
        for source_config, source in built:
            stream = config.stream_of(source_config)
            producer = self.producers.get(stream)
            if producer is None:
                producer = AsyncProducer(
                    stream,
                    config=config.producer,
                    endpoint_url=self.endpoint_url,
                    region=config.region,
                    profile=config.profile,
                    dlq=self._dlq,
                )
                self.producers[stream] = producer
                await producer.start()
            context = SourceContext(source.name, producer, validators.get(source_config.name))
            self.sources.append((source, context))
            # Listed first, so that the shutdown closes it even when its start fails.
            await source.start()
        log.info(
            "The agent is running.",
            extra={"sources": [s.name for s, _ in self.sources], "streams": list(self.producers)},
        )

    def _validators(self) -> dict[str, RecordValidator]:
        """The schema check of each source whose config names a schema.

        Raises:
            ConfigError: a schema path or a named schema cannot be used.
        """
        named = [s for s in self.config.sources if s.record_schema is not None]
        if not named and not self.config.schema_paths:
            return {}
        registry = load_registry(self.config.schema_paths)
        validators = {}
        for source_config in named:
            assert source_config.record_schema is not None
            validators[source_config.name] = validator_for(
                registry, source_config.record_schema, source_config.name
            )
        return validators

    async def _run_sources(self, stop: asyncio.Event) -> BaseException | None:
        """Run every source and the committer until stop; the first source failure ends all."""
        tasks = {
            asyncio.create_task(source.run(ctx, stop), name=f"kingest-source-{source.name}"): source
            for source, ctx in self.sources
        }
        committer = asyncio.create_task(self._commit_loop(stop), name="kingest-committer")
        failure: BaseException | None = None
        pending = set(tasks)
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task.cancelled():
                        continue
                    exc = task.exception()
                    if exc is not None and failure is None:
                        failure = exc
                        log.error(
                            "A source failed; the agent delivers what it holds and stops.",
                            # A KingestError's message says it all; anything else is a bug.
                            exc_info=None if isinstance(exc, KingestError) else exc,
                            extra={"source": tasks[task].name},
                        )
                        stop.set()
        finally:
            stop.set()
            for task in pending:
                task.cancel()
            committer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await committer
        return failure

    async def _commit_loop(self, stop: asyncio.Event) -> None:
        interval = self.config.commit_interval_ms / 1000
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
            self.commit()

    def commit(self) -> None:
        """Commit every position that became safe, source by source.

        A failed commit is logged and tried again next time: the positions stay committable.
        """
        for source, ctx in self.sources:
            # Called even with nothing acknowledged: a source may have positions of its own to
            # store (a file opened at its end) or finished inputs to forget.
            ready = ctx.acks.collect()
            try:
                source.commit(ready)
            except Exception:
                log.exception(
                    "Cannot commit positions; they are committed with the next ones.",
                    extra={"source": source.name},
                )
                continue
            ctx.acks.committed(ready)

    async def _shutdown(self) -> None:
        timeout = self.config.shutdown_timeout_s
        for producer in self.producers.values():
            try:
                await asyncio.wait_for(producer.flush(), timeout)
            except TimeoutError:
                log.warning(
                    "Shutdown timed out; what is left goes to the dead-letter queue.",
                    extra={"timeout_s": timeout},
                )
        for producer in self.producers.values():
            await producer.close(timeout=0 if timeout else None)
        self.commit()
        for source, _ in self.sources:
            try:
                source.close()
            except Exception:
                log.exception("Cannot close a source cleanly.", extra={"source": source.name})
        if self._store is not None:
            self._store.close()
        if self._dlq is not None:
            self._dlq.close()

    def stats(self) -> dict[str, Any]:
        """Per-source reading counters and per-stream producer statistics."""
        return {
            "sources": {source.name: ctx.stats.snapshot() for source, ctx in self.sources},
            "streams": {stream: producer.stats() for stream, producer in self.producers.items()},
        }
