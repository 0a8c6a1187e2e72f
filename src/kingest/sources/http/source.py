"""The HTTP source: application events POSTed to ``/v1/events``, answered once they are safe.

``POST /v1/events`` takes one JSON object, a JSON array of objects (``application/json``) or
NDJSON (``application/x-ndjson``), with ``Authorization: Bearer TOKEN`` when a token is set.
Each event becomes one record: its fields, flat, plus ``source`` (the source name) and
``ingestion_timestamp``; an event's own ``source`` field is kept as ``origin``. The answer::

    {"accepted": 2, "failed": 1, "results": [
        {"index": 0, "status": "accepted"},
        {"index": 1, "status": "rejected", "error": "element 1 is a JSON number, not an object"},
        {"index": 2, "status": "accepted"}]}

comes once every event in it is accepted by Kinesis or in the dead-letter queue (``status``
``dead_lettered``, with the reason), so a 200 means the events are safe. With ``ack: spooled``
the answer is a 202 once the events are written and fsync'd to the source's spool on disk,
from which they are sent, and sent again after a crash (see :mod:`.spooling`). With
``ack: buffered`` it is a 202 as soon as the events are in the producer's memory buffer: the
fastest answer, and the only one that a crash can make untrue.

Status codes: 200 (or 202) with the results; 400 for a body that is not JSON (naming the line);
401 without the right token; 413 past ``max_body_bytes``; 415 for another content type; 503
with ``Retry-After`` when the buffer stays full (the events admitted before are in the results,
the others are ``rejected`` with ``"error": "buffer full"``: send those again) or while the
agent shuts down. ``GET /health`` answers 200 while the source runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from aiohttp import web
from pydantic import ConfigDict, Field, SecretStr, field_validator, model_validator

from kingest.addresses import parse_host_port
from kingest.checkpoint import CheckpointStore
from kingest.errors import BufferFullError, ConfigError, SourceError
from kingest.keys import KeyTemplate, key_with_fallback
from kingest.producer.producer import AsyncProducer
from kingest.record import DlqReason, RecordFuture
from kingest.schemas.validate import SchemaField
from kingest.sources.base import Source, SourceContext
from kingest.sources.http.events import NDJSON_TYPES, BodyError, NotAnEvent, parse_body
from kingest.sources.http.spooling import SPOOL_LANE, SpoolBusy, Spooler
from kingest.spool import Spool, SpoolError

log = logging.getLogger(__name__)

__all__ = ["HttpSource", "HttpSourceConfig"]

# Seconds a client is asked to wait before trying again (Retry-After).
RETRY_AFTER_S = 1


class HttpSourceConfig(SchemaField):
    """A ``type: http`` source: an HTTP endpoint taking application events."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    type: Literal["http"] = Field(description="Take events over HTTP.")
    name: str = Field(
        "app_events",
        min_length=1,
        description="Source name: the records' `source` field and statistics.",
    )
    listen: str = Field(
        "127.0.0.1:8080", description="HOST:PORT to listen on (port 0: any free port)."
    )
    token: SecretStr | None = Field(
        None, description="Bearer token clients must send; none: no authentication."
    )
    token_file: str | None = Field(
        None, description="File holding the token (its content without surrounding whitespace)."
    )
    max_body_bytes: int = Field(
        16 << 20, ge=1024, le=16 << 20, description="Largest request body taken (413 beyond)."
    )
    ack: Literal["delivered", "spooled", "buffered"] = Field(
        "delivered",
        description=(
            "delivered: answer once every event is accepted or dead-lettered; spooled: answer "
            "202 once the events are on disk in spool_dir (sent again after a crash); "
            "buffered: answer 202 once the events are in memory (lost on a crash)."
        ),
    )
    spool_dir: str | None = Field(
        None, description="Directory of the spool (ack: spooled): one per source, never shared."
    )
    max_queued_events: int = Field(
        100_000,
        ge=1,
        description="ack: spooled: most events on disk waiting for the producer before "
        "requests wait (and get 503 after admission_timeout_s).",
    )
    admission_timeout_s: float = Field(
        2.0,
        ge=0,
        description="How long a request waits for buffer room before the rest is refused (503).",
    )
    partition_key: str | None = Field(
        None,
        description="Partition key template, e.g. '{user_id}'; none: a digest of the event.",
    )
    stream: str | None = Field(None, description="Stream of this source (default: the agent's).")

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        parse_host_port(value, any_port=True)
        return value

    @model_validator(mode="after")
    def _check_together(self) -> HttpSourceConfig:
        problems = []
        if self.token is not None and self.token_file is not None:
            problems.append("give token or token_file, not both")
        if (self.ack == "spooled") != (self.spool_dir is not None):
            problems.append("spool_dir goes with ack: spooled, and ack: spooled needs it")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def build(self, store: CheckpointStore) -> HttpSource:
        """The running source for this config (``store`` is unused: clients hold the data).

        Raises:
            ConfigError: the token file cannot be read or is empty.
        """
        return HttpSource(self)


class HttpSource(Source):
    """Serves ``/v1/events`` and ``/health`` (see the module docstring)."""

    can_ack = False  # the answer to the client is the acknowledgement (but see ack: spooled)

    def __init__(self, config: HttpSourceConfig) -> None:
        super().__init__(config.name)
        self.config = config
        # With a spool, its sequence numbers are positions committed after ack.
        self.can_ack = config.ack == "spooled"
        self._spooler: Spooler | None = None
        self._spool_failing = False
        self.host, self.port = parse_host_port(config.listen, any_port=True)
        self._token = _load_token(config)
        self.keys = [KeyTemplate(None, config.partition_key)] if config.partition_key else []
        self._ctx: SourceContext | None = None
        self._stopping = False
        self._running = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.bound_port: int | None = None

    def _application(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_body_bytes)
        app.router.add_post("/v1/events", self._post_events)
        app.router.add_get("/health", self._health)
        return app

    async def start(self) -> None:
        """Open the spool (ack: spooled) and listen (a port in use stops the agent with a
        one-line error)."""
        if self.config.spool_dir is not None:
            spool = Spool(self.config.spool_dir)
            self._spooler = Spooler(spool, self.config.max_queued_events)
            recovered = self._spooler.recover()
            if recovered:
                log.warning(
                    "Sending events spooled before a stop that did not deliver them.",
                    extra={"source": self.name, "events": recovered},
                )
        runner = web.AppRunner(self._application(), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise SourceError(f"cannot listen on {self.config.listen}: {exc}") from exc
        self._runner = runner
        addresses = runner.addresses
        self.bound_port = int(addresses[0][1]) if addresses else self.port
        log.info("Listening for events.", extra={"source": self.name, "port": self.bound_port})

    async def run(self, ctx: SourceContext, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, then answer the requests in progress and close."""
        self._ctx = ctx
        spooler = self._spooler
        pump = None
        if spooler is not None:
            pump = asyncio.create_task(spooler.run(ctx), name=f"kingest-pump-{self.name}")
        self._running.set()
        stopped = asyncio.ensure_future(stop.wait())
        try:
            # The pump ends only on a failure (the producer closed under it): so does the source.
            await asyncio.wait({stopped, *([pump] if pump else [])}, return_when="FIRST_COMPLETED")
        finally:
            stopped.cancel()
            self._stopping = True
            if self._runner is not None:
                # Requests already taken are answered once their events are safe: the
                # producer is still running while the runner waits for them.
                await self._runner.cleanup()
                self._runner = None
            if spooler is not None and pump is not None:
                spooler.close()
                await pump

    def commit(self, positions: Mapping[str, Any]) -> None:
        """Mark spooled events done up to the committable sequence number (ack: spooled)."""
        seq = positions.get(SPOOL_LANE)
        if seq is not None and self._spooler is not None:
            self._spooler.spool.commit(int(seq))
            if self._ctx is not None:
                self._spooler.measure(self._ctx)

    def close(self) -> None:
        """Close the spool, after the last commit (the runner is cleaned up in :meth:`run`)."""
        if self._spooler is not None:
            self._spooler.spool.close()

    # --- handlers ------------------------------------------------------------------------------

    async def _health(self, _request: web.Request) -> web.Response:
        if self._stopping:
            return web.json_response({"status": "stopping"}, status=503)
        return web.json_response({"status": "ok"})

    async def _post_events(self, request: web.Request) -> web.Response:
        if self._ctx is None and not self._stopping:
            # Listening starts before the agent hands the source its context.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._running.wait(), 10)
        ctx = self._ctx
        if self._stopping or ctx is None:
            return _error(503, "the agent is stopping", retry_after=5)
        if self._token is not None and not self._authorized(request):
            return _error(401, "missing or wrong bearer token", bearer=True)
        length = request.content_length
        if length is not None and length > self.config.max_body_bytes:
            return _error(413, f"body over {self.config.max_body_bytes} bytes")
        media_type = request.content_type
        if media_type != "application/json" and media_type not in NDJSON_TYPES:
            return _error(
                415, f"content type {media_type} (use application/json or application/x-ndjson)"
            )
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _error(413, f"body over {self.config.max_body_bytes} bytes")
        try:
            events = parse_body(body, media_type)
        except BodyError as exc:
            return _error(400, str(exc))
        return await self._take(ctx, events)

    def _authorized(self, request: web.Request) -> bool:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        assert self._token is not None
        return scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), self._token
        )

    async def _take(
        self, ctx: SourceContext, events: list[dict[str, Any] | NotAnEvent]
    ) -> web.Response:
        stats = ctx.stats
        stats.received += len(events)
        results: list[dict[str, Any] | None] = [None] * len(events)
        prepared = self._prepare(ctx, events, results)
        if self._spooler is not None:
            full = await self._spool(ctx, prepared, results)
        else:
            full = await self._put(ctx, prepared, results)
        accepted = sum(1 for r in results if r is not None and r["status"] == "accepted")
        body = {"accepted": accepted, "failed": len(events) - accepted, "results": results}
        if full:
            return web.json_response(body, status=503, headers={"Retry-After": str(RETRY_AFTER_S)})
        return web.json_response(body, status=200 if self.config.ack == "delivered" else 202)

    def _prepare(
        self,
        ctx: SourceContext,
        events: list[dict[str, Any] | NotAnEvent],
        results: list[dict[str, Any] | None],
    ) -> list[tuple[int, dict[str, Any], str | None]]:
        """The events to send, enriched and keyed, with their index; the others' results."""
        name = self.name
        keys = self.keys
        validator = ctx.validator
        ingested = datetime.now(UTC).isoformat(timespec="milliseconds")
        prepared = []
        for index, event in enumerate(events):
            if isinstance(event, NotAnEvent):
                ctx.count_invalid(DlqReason.INVALID_INPUT)
                results[index] = {"index": index, "status": "rejected", "error": event.reason}
                continue
            own = event.pop("source", None)
            if own is not None:
                event["origin"] = own
            event["source"] = name
            event["ingestion_timestamp"] = ingested
            if validator is not None:
                violations = validator.check(event)
                if violations is not None:
                    # The sender is there to be told, and can fix and send again.
                    ctx.count_invalid(DlqReason.INVALID_RECORD)
                    error = validator.describe(violations)
                    results[index] = {"index": index, "status": "rejected", "error": error}
                    continue
            try:
                key: str | None = key_with_fallback(keys, event) if keys else None
            except KeyError:
                key = None
            prepared.append((index, event, key))
        return prepared

    async def _spool(
        self,
        ctx: SourceContext,
        prepared: list[tuple[int, dict[str, Any], str | None]],
        results: list[dict[str, Any] | None],
    ) -> bool:
        """ack: spooled: every prepared event on disk, or none; True when refused for room."""
        assert self._spooler is not None
        try:
            await self._spooler.submit(
                [(event, key) for _, event, key in prepared], self.config.admission_timeout_s
            )
        except (SpoolBusy, SpoolError) as refused:
            if isinstance(refused, SpoolError) and not self._spool_failing:
                # A full or broken disk: nothing is answered 202 that is not on it.
                log.error(
                    "Cannot write the spool; requests are refused until it can be written.",
                    extra={"source": self.name, "error": str(refused)},
                )
            self._spool_failing = isinstance(refused, SpoolError)
            error = "cannot write the spool" if self._spool_failing else str(refused)
            for index, _, _ in prepared:
                results[index] = {"index": index, "status": "rejected", "error": error}
            return True
        if self._spool_failing:
            log.warning("The spool is written again.", extra={"source": self.name})
            self._spool_failing = False
        ctx.stats.parsed += len(prepared)
        for index, _, _ in prepared:
            results[index] = {"index": index, "status": "accepted"}
        return False

    async def _put(
        self,
        ctx: SourceContext,
        prepared: list[tuple[int, dict[str, Any], str | None]],
        results: list[dict[str, Any] | None],
    ) -> bool:
        """ack: delivered or buffered: each event into the producer, then (delivered) its
        outcome; True when the buffer stayed full."""
        producer: AsyncProducer = ctx.producer
        name = self.name
        admitted: list[tuple[int, RecordFuture]] = []
        full_at: int | None = None
        for position, (index, event, key) in enumerate(prepared):
            future = producer.put_nowait(event, key, None, name)
            if future is None:
                try:
                    future = await producer.put(
                        event, key, None, name, timeout=self.config.admission_timeout_s
                    )
                except BufferFullError:
                    full_at = position
                    break
            ctx.stats.parsed += 1
            admitted.append((index, future))
        if full_at is not None:
            for index, _, _ in prepared[full_at:]:
                results[index] = {"index": index, "status": "rejected", "error": "buffer full"}
        if self.config.ack == "buffered":
            for index, _ in admitted:
                results[index] = {"index": index, "status": "accepted"}
            return full_at is not None
        for index, future in admitted:
            result = await future
            if result.delivered:
                results[index] = {"index": index, "status": "accepted"}
            else:
                reason = result.reason.value if result.reason else "dead_lettered"
                detail = f": {result.error_message}" if result.error_message else ""
                results[index] = {
                    "index": index,
                    "status": "dead_lettered",
                    "error": f"{reason}{detail}",
                }
        return full_at is not None


def _error(
    status: int, message: str, *, retry_after: int | None = None, bearer: bool = False
) -> web.Response:
    headers = {}
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    if bearer:
        headers["WWW-Authenticate"] = 'Bearer realm="kingest"'
    return web.json_response({"error": message}, status=status, headers=headers)


def _load_token(config: HttpSourceConfig) -> bytes | None:
    if config.token is not None:
        token = config.token.get_secret_value().strip()
    elif config.token_file is not None:
        try:
            token = Path(config.token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"source {config.name}: cannot read token_file: {exc}") from exc
    else:
        return None
    if not token:
        raise ConfigError(f"source {config.name}: the token is empty")
    return token.encode()
