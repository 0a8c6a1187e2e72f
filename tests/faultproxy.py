"""A fault-injecting HTTP proxy in front of a Kinesis endpoint, for integration tests.

The proxy sits between the producer under test and a Kinesis emulator (kinesalite or
the embedded endpoint).  It forwards every request unchanged and, following a
:class:`FaultPlan`, damages the answers to ``PutRecords`` (or to any operation the plan
names) the way the real service can fail:

* per-entry failures inside a 200 answer (the failed entries are really *not* stored,
  because they are removed from the body sent upstream),
* HTTP 500/503 without storing anything,
* HTTP 500 *after* storing (the client must retry: duplicates, never loss),
* a dropped connection before forwarding or after storing,
* a slow answer (to exceed a client read timeout),
* a blanket 400 error with a chosen ``__type`` (non-retryable errors),
* a non-retryable per-entry error code.

It runs its own event loop in a background thread, so a synchronous test can start and
stop it and change the plan while the producer is running.  Decisions come from a
seeded :class:`random.Random`, so a run is reproducible for a given request order.

Kinesis speaks the AWS JSON 1.1 protocol: ``POST /`` with
``X-Amz-Target: Kinesis_20131202.<Operation>`` and a JSON body; errors are HTTP 4xx/5xx
with ``{"__type": ..., "message": ...}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import aiohttp
from aiohttp import web

from kingest.producer import cbor
from kingest.producer.cbor import CborError

__all__ = ["FaultPlan", "FaultProxy", "ProxyStats"]

JSON_CONTENT_TYPE = "application/x-amz-json-1.1"
PUT_RECORDS = "PutRecords"

# Hop-by-hop headers (RFC 9110 §7.6.1) never travel through a proxy.  Host and
# Content-Length are recomputed by aiohttp for the new connection/body.  Content-Encoding
# is dropped both ways because aiohttp decodes bodies (server side: request payloads;
# client side: auto_decompress), so the bytes we pass on are already identity-encoded.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "content-encoding",
    }
)

# Messages the real service uses (or close to them), so client-side logging of injected
# faults looks like production.
_ENTRY_MESSAGES = {
    "ProvisionedThroughputExceededException": (
        "Rate exceeded for shard (injected by faultproxy) in stream {stream} "
        "under account 000000000000."
    ),
    "InternalFailure": "Internal service failure.",
}

STAT_NAMES = (
    "requests",
    "put_records_requests",
    "forwarded",
    "entries_forwarded",
    "entries_failed_injected",
    "http_500",
    "http_503",
    "error_after_forward",
    "dropped_before_answer",
    "dropped_before_forward",
    "delayed",
    "fail_all",
    "faults_injected",
    "upstream_errors",
)


@dataclass(frozen=True)
class FaultPlan:
    """What to break, and how often.

    Probabilities are in ``[0, 1]``.  Request-level faults (``fail_all_code``,
    ``drop_before_forward``, ``http_500``, ``http_503``, ``error_after_forward``,
    ``drop_before_answer``) are mutually exclusive per request and checked in that
    order; entry-level faults (``entry_error_code``, ``partial_failure``) only apply to a
    ``PutRecords`` request that got no request-level fault; a delay can be added to any
    request that was forwarded and is answered.

    ``max_faults`` counts *requests* that got at least one fault (a PutRecords with
    three failed entries plus a delay is one fault).  Setting a plan resets that count
    and re-seeds the random generator.
    """

    partial_failure: float = 0.0
    partial_failure_code: str = "ProvisionedThroughputExceededException"
    http_500: float = 0.0
    http_503: float = 0.0
    error_after_forward: float = 0.0
    drop_before_answer: float = 0.0
    drop_before_forward: float = 0.0
    delay_s: float = 0.0
    delay_probability: float = 0.0
    fail_all_code: str | None = None
    entry_error_code: str | None = None
    max_faults: int | None = None
    seed: int = 0
    # Operations (the part of X-Amz-Target after the dot) that get faults at all.
    # Entry-level faults need the PutRecords body shape and only ever touch PutRecords.
    operations: tuple[str, ...] = (PUT_RECORDS,)

    def __post_init__(self) -> None:
        for name in (
            "partial_failure",
            "http_500",
            "http_503",
            "error_after_forward",
            "drop_before_answer",
            "drop_before_forward",
            "delay_probability",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")
        if self.delay_s < 0:
            raise ValueError(f"delay_s must be >= 0, got {self.delay_s!r}")
        if self.max_faults is not None and self.max_faults < 0:
            raise ValueError(f"max_faults must be >= 0, got {self.max_faults!r}")
        # Accept any iterable (a list or a set reads naturally in tests) but store a
        # tuple so the frozen plan stays hashable and immutable.
        object.__setattr__(self, "operations", tuple(self.operations))


class ProxyStats:
    """Thread-safe counters; read them with :meth:`snapshot`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = dict.fromkeys(STAT_NAMES, 0)

    def incr(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] = self._counts.get(name, 0) + n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def reset(self) -> None:
        with self._lock:
            self._counts = dict.fromkeys(STAT_NAMES, 0)

    def __getitem__(self, name: str) -> int:
        with self._lock:
            return self._counts.get(name, 0)

    def __repr__(self) -> str:
        return f"ProxyStats({self.snapshot()!r})"


@dataclass
class _Decision:
    """What to do with one request, decided atomically under the plan lock."""

    request_fault: str | None = None  # one of the request-level fault names, or None
    fail_code: str | None = None
    # position -> error code, for PutRecords entries to fail
    entry_faults: dict[int, str] = field(default_factory=dict)
    delay_s: float = 0.0

    @property
    def is_fault(self) -> bool:
        return self.request_fault is not None or bool(self.entry_faults) or self.delay_s > 0


class FaultProxy:
    """HTTP proxy on ``127.0.0.1:<free port>`` that forwards to ``upstream_url``.

    Usage::

        with FaultProxy(emulator_url, FaultPlan(partial_failure=0.3, seed=7)) as proxy:
            producer = make_producer(endpoint_url=proxy.url)
            ...
            proxy.set_plan(FaultPlan())  # heal
            assert proxy.stats.snapshot()["entries_failed_injected"] > 0
    """

    def __init__(
        self,
        upstream_url: str,
        plan: FaultPlan | None = None,
        *,
        max_connections: int = 512,
        upstream_timeout_s: float = 60.0,
    ) -> None:
        self.upstream_url = upstream_url.rstrip("/")
        self.stats = ProxyStats()
        self._max_connections = max_connections
        self._upstream_timeout_s = upstream_timeout_s
        self._plan_lock = threading.Lock()
        self._plan = plan or FaultPlan()
        self._rng = random.Random(self._plan.seed)
        self._faults_used = 0
        self._life_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        # Remembered across stop()/start() so a restarted proxy (simulated outage) keeps
        # the URL the producer was configured with.
        self._port: int | None = None
        self._session: aiohttp.ClientSession | None = None

    # ----------------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        if self._port is None:
            raise RuntimeError("FaultProxy not started")
        return f"http://127.0.0.1:{self._port}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def plan(self) -> FaultPlan:
        with self._plan_lock:
            return self._plan

    def start(self) -> str:
        """Start serving (idempotent) and return the proxy URL.

        After a stop() the proxy re-binds the port it had, so its URL stays valid; if
        something else took that port meanwhile, this raises RuntimeError.
        """
        with self._life_lock:
            if self.running:
                return self.url
            ready = threading.Event()
            errors: list[BaseException] = []
            thread = threading.Thread(
                target=self._thread_main,
                args=(ready, errors),
                name="faultproxy",
                daemon=True,
            )
            thread.start()
            ready.wait(timeout=30)
            if errors:
                thread.join(timeout=5)
                raise RuntimeError("FaultProxy failed to start") from errors[0]
            if not ready.is_set():
                raise RuntimeError("FaultProxy did not start within 30 s")
            self._thread = thread
            return self.url

    def stop(self) -> None:
        """Stop serving; in-flight requests get cut off after a short grace time."""
        with self._life_lock:
            thread, loop, stop_event = self._thread, self._loop, self._stop_event
            if thread is None:
                return
            if loop is not None and stop_event is not None and not loop.is_closed():
                with contextlib.suppress(RuntimeError):  # loop closed in between
                    loop.call_soon_threadsafe(stop_event.set)
            thread.join(timeout=30)
            self._thread = None

    def set_plan(self, plan: FaultPlan) -> None:
        """Replace the plan; the next request uses it.  Resets max_faults and the seed."""
        with self._plan_lock:
            self._plan = plan
            self._rng = random.Random(plan.seed)
            self._faults_used = 0

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        port = self._port if self._port is not None else "-"
        return f"FaultProxy(127.0.0.1:{port} -> {self.upstream_url}, running={self.running})"

    def _thread_main(self, ready: threading.Event, errors: list[BaseException]) -> None:
        try:
            # asyncio.run, not a bare loop: on stop it cancels handlers still running
            # (e.g. one sleeping in an injected delay) so the loop closes cleanly.
            asyncio.run(self._serve(ready))
        except BaseException as exc:  # surface start-up failures to start()
            if not ready.is_set():
                errors.append(exc)
                ready.set()
            else:
                raise
        finally:
            self._loop = None
            self._stop_event = None

    async def _serve(self, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        # auto_decompress: we may have to parse and rewrite the PutRecords answer.
        # skip_auto_headers: forward the client's headers, not aiohttp's defaults.
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=0),
            timeout=aiohttp.ClientTimeout(total=self._upstream_timeout_s, sock_connect=10),
            auto_decompress=True,
            skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
        )
        self._session = session
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # A short shutdown timeout: stop() must not wait for a request stuck in a delay.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        try:
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", self._port or 0, reuse_address=True)
            await site.start()
            self._port = int(runner.addresses[0][1])
            ready.set()
            await self._stop_event.wait()
        finally:
            await runner.cleanup()
            await session.close()
            self._session = None

    # ------------------------------------------------------------------ decisions

    def _decide(self, operation: str, n_entries: int) -> _Decision:
        """Draw the faults for one request; atomic so max_faults is exact under load."""
        with self._plan_lock:
            plan, rng = self._plan, self._rng
            decision = _Decision()
            if operation not in plan.operations:
                return decision
            if plan.max_faults is not None and self._faults_used >= plan.max_faults:
                return decision
            if plan.fail_all_code is not None:
                decision.request_fault = "fail_all"
                decision.fail_code = plan.fail_all_code
            else:
                # Draw every probability each time so the sequence of random numbers,
                # and thus a run, does not depend on which faults are enabled earlier.
                draws = [
                    ("drop_before_forward", plan.drop_before_forward),
                    ("http_500", plan.http_500),
                    ("http_503", plan.http_503),
                    ("error_after_forward", plan.error_after_forward),
                    ("drop_before_answer", plan.drop_before_answer),
                ]
                for name, probability in draws:
                    hit = rng.random() < probability
                    if hit and decision.request_fault is None:
                        decision.request_fault = name
            if operation == PUT_RECORDS and decision.request_fault is None:
                if plan.entry_error_code is not None:
                    decision.entry_faults = dict.fromkeys(range(n_entries), plan.entry_error_code)
                elif plan.partial_failure > 0:
                    decision.entry_faults = {
                        i: plan.partial_failure_code
                        for i in range(n_entries)
                        if rng.random() < plan.partial_failure
                    }
            forwarded_and_answered = decision.request_fault in (None, "error_after_forward")
            if (
                forwarded_and_answered
                and plan.delay_s > 0
                and rng.random() < plan.delay_probability
            ):
                decision.delay_s = plan.delay_s
            if decision.is_fault:
                self._faults_used += 1
            return decision

    # -------------------------------------------------------------------- handler

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.stats.incr("requests")
        body = await request.read()
        target = request.headers.get("X-Amz-Target", "")
        operation = target.rpartition(".")[2] if target else ""

        codec = CBOR if "cbor" in request.headers.get("Content-Type", "") else JSON
        records: list[Any] | None = None
        payload: dict[str, Any] | None = None
        if operation == PUT_RECORDS:
            self.stats.incr("put_records_requests")
            payload = codec.parse_object(body)
            if payload is not None and isinstance(payload.get("Records"), list):
                records = payload["Records"]
        decision = self._decide(operation, len(records) if records is not None else 0)
        if decision.is_fault:
            self.stats.incr("faults_injected")

        fault = decision.request_fault
        if fault == "fail_all":
            self.stats.incr("fail_all")
            code = decision.fail_code or "ValidationException"
            return _error_response(400, code, f"{code}: injected by faultproxy", codec)
        if fault == "drop_before_forward":
            self.stats.incr("dropped_before_forward")
            return _abort(request)
        if fault == "http_500":
            self.stats.incr("http_500")
            return _error_response(500, "InternalFailure", "Internal service failure.", codec)
        if fault == "http_503":
            self.stats.incr("http_503")
            return _error_response(503, "ServiceUnavailable", "Service Unavailable.", codec)

        forward_body = body
        failed_positions: dict[int, str] = {}
        if decision.entry_faults and records is not None and payload is not None:
            failed_positions = decision.entry_faults
            kept = [r for i, r in enumerate(records) if i not in failed_positions]
            if not kept:
                # Kinesis rejects an empty Records list, so answer without forwarding.
                return await self._answer_all_failed(payload, failed_positions, decision, codec)
            forward_body = codec.dump({**payload, "Records": kept})

        try:
            status, headers, answer = await self._forward(request, forward_body)
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.stats.incr("upstream_errors")
            return _error_response(
                502, "InternalFailure", f"faultproxy: upstream failed: {exc!r}", codec
            )
        self.stats.incr("forwarded")
        if records is not None:
            self.stats.incr("entries_forwarded", len(records) - len(failed_positions))

        if fault == "drop_before_answer":
            self.stats.incr("dropped_before_answer")
            return _abort(request)

        # An upstream error answer passes through as is: the client then retries the whole
        # batch, removed entries included, so nothing can get lost.
        if failed_positions and status == 200:
            merged = _merge_put_records_answer(
                answer, payload or {}, records or [], failed_positions, codec
            )
            if merged is None:
                # Unparseable answer: the removed entries would silently vanish and the
                # proxy itself would lose data, so fail the whole request instead.
                return _error_response(
                    500, "InternalFailure", "faultproxy: could not rewrite PutRecords answer", codec
                )
            answer = merged
            self.stats.incr("entries_failed_injected", len(failed_positions))

        if decision.delay_s > 0:
            self.stats.incr("delayed")
            await asyncio.sleep(decision.delay_s)

        if fault == "error_after_forward":
            self.stats.incr("error_after_forward")
            return _error_response(500, "InternalFailure", "Internal service failure.", codec)
        return web.Response(status=status, body=answer, headers=headers)

    async def _answer_all_failed(
        self,
        payload: dict[str, Any],
        failed_positions: dict[int, str],
        decision: _Decision,
        codec: _Codec,
    ) -> web.StreamResponse:
        stream = _stream_name(payload)
        answer = {
            "FailedRecordCount": len(failed_positions),
            "Records": [
                _entry_error(failed_positions[i], stream) for i in sorted(failed_positions)
            ],
        }
        self.stats.incr("entries_failed_injected", len(failed_positions))
        if decision.delay_s > 0:
            self.stats.incr("delayed")
            await asyncio.sleep(decision.delay_s)
        return web.Response(
            status=200,
            body=codec.dump(answer),
            headers={
                "Content-Type": codec.content_type,
                "x-amzn-RequestId": str(uuid.uuid4()),
            },
        )

    async def _forward(
        self, request: web.Request, body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        session = self._session
        assert session is not None
        headers = _filter_headers(request.headers.items())
        async with session.request(
            request.method,
            self.upstream_url + request.path_qs,
            data=body,
            headers=headers,
            allow_redirects=False,
        ) as resp:
            answer = await resp.read()
            return resp.status, _filter_headers(resp.headers.items()), answer


# ------------------------------------------------------------------------ helpers


def _filter_headers(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    # A plain dict would merge repeated headers; Kinesis never repeats the ones that
    # matter (X-Amz-Target, Authorization, X-Amz-Date, Content-Type).
    return {k: v for k, v in items if k.lower() not in _HOP_BY_HOP}


@dataclass(frozen=True)
class _Codec:
    """How bodies of one request are read and written: JSON, or CBOR (raw record bytes)."""

    content_type: str
    loads: Callable[[bytes], Any]
    dumps: Callable[[Any], bytes]

    def parse_object(self, body: bytes) -> dict[str, Any] | None:
        try:
            value = self.loads(body)
        except (ValueError, UnicodeDecodeError, CborError):
            return None  # request-level faults still apply
        return value if isinstance(value, dict) else None

    def dump(self, value: Any) -> bytes:
        return self.dumps(value)


JSON = _Codec(JSON_CONTENT_TYPE, json.loads, lambda value: json.dumps(value).encode())
CBOR = _Codec("application/x-amz-cbor-1.1", cbor.decode, cbor.encode)


def _stream_name(payload: dict[str, Any]) -> str:
    name = payload.get("StreamName")
    if isinstance(name, str):
        return name
    arn = payload.get("StreamARN")
    if isinstance(arn, str):
        return arn.rpartition("/")[2]
    return "unknown"


def _entry_error(code: str, stream: str) -> dict[str, str]:
    message = _ENTRY_MESSAGES.get(code, f"{code}: injected by faultproxy").format(stream=stream)
    return {"ErrorCode": code, "ErrorMessage": message}


def _merge_put_records_answer(
    answer: bytes,
    payload: dict[str, Any],
    records: list[Any],
    failed_positions: dict[int, str],
    codec: _Codec,
) -> bytes | None:
    """Put injected failures back at their original positions in the upstream answer."""
    parsed = codec.parse_object(answer)
    if parsed is None or not isinstance(parsed.get("Records"), list):
        return None
    upstream_results: list[Any] = parsed["Records"]
    if len(upstream_results) != len(records) - len(failed_positions):
        return None
    stream = _stream_name(payload)
    upstream_iter = iter(upstream_results)
    merged: list[Any] = []
    for i in range(len(records)):
        if i in failed_positions:
            merged.append(_entry_error(failed_positions[i], stream))
        else:
            merged.append(next(upstream_iter))
    upstream_failed = int(parsed.get("FailedRecordCount") or 0)
    parsed["Records"] = merged
    parsed["FailedRecordCount"] = upstream_failed + len(failed_positions)
    return codec.dump(parsed)


def _error_response(
    status: int, code: str, message: str, codec: _Codec | None = None
) -> web.Response:
    codec = codec or JSON
    return web.Response(
        status=status,
        body=codec.dump({"__type": code, "message": message}),
        headers={
            "Content-Type": codec.content_type,
            "x-amzn-RequestId": str(uuid.uuid4()),
        },
    )


def _abort(request: web.Request) -> web.Response:
    """Cut the connection with no answer at all.

    aiohttp notices the dead transport when it tries to write the returned response and
    treats it as a client disconnect (no error log), so returning a dummy is safe.
    """
    transport = request.transport
    if transport is not None:
        transport.abort()
    return web.Response(status=500)
