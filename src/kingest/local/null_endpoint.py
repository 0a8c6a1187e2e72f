"""A Kinesis-compatible endpoint that stores nothing, so benchmarks measure the producer alone.

It answers the control-plane calls a producer makes (CreateStream, DescribeStreamSummary,
DescribeStream, ListShards, ListStreams) for any stream name as if the stream had N open shards
with evenly split hash ranges, and acknowledges PutRecords/PutRecord with increasing sequence
numbers and the shard each record's hash key falls in, as Kinesis would route it. It counts
requests, records and body bytes; ``GET /stats`` returns the counts.

The server is a bare asyncio protocol speaking just enough HTTP/1.1 (keep-alive, Content-Length
bodies, ``Expect: 100-continue``) because the endpoint must never be what a benchmark measures:
it answered about 28,000 small PutRecords requests per CPU-second where aiohttp.web answered
about 8,000, and takes 5 MiB bodies at about 380 MiB per CPU-second.

Run it with ``python -m kingest.local.null_endpoint --port P --shards N``, or use
:class:`NullEndpoint` to run it as a child process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import itertools
import logging
import os
import re
import signal
import sys
import time
import urllib.request
from bisect import bisect_right
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson

from kingest.errors import ConfigError
from kingest.local.process import ServerProcess, connect_url
from kingest.producer.cbor import CborError
from kingest.producer.cbor import decode as cbor_decode
from kingest.producer.cbor import encode as cbor_encode

log = logging.getLogger(__name__)

TARGET_PREFIX = "Kinesis_20131202."
HASH_SPACE = 1 << 128
# Real sequence numbers are 56-digit decimals; start there so parsers sized for them work.
FIRST_SEQUENCE_NUMBER = 49 * 10**54
MAX_BODY_BYTES = 64 * 1024 * 1024
MAX_HEAD_BYTES = 64 * 1024
ACCOUNT_ID = "000000000000"
REGION = "us-east-1"

_REASONS = {
    200: b"OK",
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    411: b"Length Required",
    413: b"Content Too Large",
    431: b"Request Header Fields Too Large",
}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def shard_id(index: int) -> str:
    """Kinesis's name of the index-th shard of a stream (``shardId-000000000000``)."""
    return f"shardId-{index:012d}"


def hash_ranges(shards: int) -> list[tuple[int, int]]:
    """Start and end hash key of each shard of a stream split evenly into that many shards."""
    step = HASH_SPACE // shards
    return [
        (step * i, step * (i + 1) - 1 if i < shards - 1 else HASH_SPACE - 1) for i in range(shards)
    ]


class NullKinesis:
    """The endpoint's state and answers, independent of HTTP.

    Args:
        shards: open shards of every stream.
    """

    def __init__(self, shards: int) -> None:
        if shards < 1:
            raise ConfigError(f"a stream needs at least one shard, not {shards}")
        self.shards = shards
        ranges = hash_ranges(shards)
        self._starts = [start for start, _ in ranges]
        self._shard_ids = [shard_id(i) for i in range(shards)]
        self._shard_list = [
            {
                "ShardId": shard_id(i),
                "HashKeyRange": {"StartingHashKey": str(start), "EndingHashKey": str(end)},
                "SequenceNumberRange": {"StartingSequenceNumber": str(FIRST_SEQUENCE_NUMBER)},
            }
            for i, (start, end) in enumerate(ranges)
        ]
        self._sequence = itertools.count(FIRST_SEQUENCE_NUMBER + 1)
        self._created = time.time()
        self.streams: dict[str, None] = {}  # insertion-ordered set of names seen
        self.requests = 0
        self.records = 0
        self.body_bytes = 0
        self.operations: Counter[str] = Counter()
        self._handlers = {
            "PutRecords": self._put_records,
            "PutRecord": self._put_record,
            "CreateStream": self._create_stream,
            "DescribeStreamSummary": self._describe_stream_summary,
            "DescribeStream": self._describe_stream,
            "ListShards": self._list_shards,
            "ListStreams": self._list_streams,
        }

    def stats(self) -> dict[str, Any]:
        """Counts since start: requests (all, and per operation), records, request body bytes."""
        return {
            "requests": self.requests,
            "records": self.records,
            "bytes": self.body_bytes,
            "operations": dict(self.operations),
            "shards": self.shards,
        }

    def handle(
        self, operation: str, body: bytes | bytearray, *, cbor: bool = False
    ) -> tuple[int, bytes]:
        """Answer one Kinesis API call.

        Args:
            operation: the operation from ``X-Amz-Target`` without its prefix.
            body: the request body, JSON or (``cbor``) CBOR.
            cbor: the request is CBOR, and so is the answer.

        Returns:
            HTTP status and answer body.
        """
        status, answer = self._handle(operation, body, cbor)
        if cbor:
            # Answers are built as JSON; the few CBOR ones are converted rather than built twice.
            answer = cbor_encode(orjson.loads(answer))
        return status, answer

    def _handle(self, operation: str, body: bytes | bytearray, cbor: bool) -> tuple[int, bytes]:
        self.requests += 1
        self.body_bytes += len(body)
        self.operations[operation] += 1
        handler = self._handlers.get(operation)
        if handler is None:
            return _error(400, "UnknownOperationException", f"unknown operation {operation!r}")
        try:
            if not body:
                params = {}
            elif cbor:
                params = cbor_decode(bytes(body))
            else:
                params = orjson.loads(body)
        except (orjson.JSONDecodeError, CborError):
            return _error(400, "SerializationException", "the request body does not decode")
        if not isinstance(params, dict):
            return _error(400, "SerializationException", "the request body is not an object")
        try:
            return 200, handler(params)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            return _error(400, "ValidationException", f"invalid {operation} request: {exc!r}")

    def _stream_name(self, params: dict[str, Any]) -> str:
        name = params.get("StreamName")
        if not name:
            arn = params.get("StreamARN")
            if not arn:
                raise ValueError("StreamName or StreamARN is required")
            name = str(arn).rsplit("/", 1)[-1]
        name = str(name)
        self.streams.setdefault(name)
        return name

    def _shard_of(self, record: dict[str, Any]) -> str:
        if self.shards == 1:
            return self._shard_ids[0]  # Nothing to route; skip the hashing.
        explicit = record.get("ExplicitHashKey")
        if explicit is not None:
            key = int(explicit)
            if not 0 <= key < HASH_SPACE:
                raise ValueError(f"ExplicitHashKey {explicit} is outside the hash key range")
        else:
            key = int.from_bytes(
                hashlib.md5(record["PartitionKey"].encode(), usedforsecurity=False).digest()
            )
        return self._shard_ids[bisect_right(self._starts, key) - 1]

    def _put_records(self, params: dict[str, Any]) -> bytes:
        self._stream_name(params)
        entries = params["Records"]
        sequence = self._sequence
        shard_of = self._shard_of
        answers = [{"SequenceNumber": str(next(sequence)), "ShardId": shard_of(r)} for r in entries]
        self.records += len(answers)
        return orjson.dumps({"FailedRecordCount": 0, "Records": answers})

    def _put_record(self, params: dict[str, Any]) -> bytes:
        self._stream_name(params)
        shard = self._shard_of(params)
        self.records += 1
        return orjson.dumps(
            {
                "SequenceNumber": str(next(self._sequence)),
                "ShardId": shard,
                "EncryptionType": "NONE",
            }
        )

    def _create_stream(self, params: dict[str, Any]) -> bytes:
        self._stream_name(params)
        return b""

    def _summary(self, name: str) -> dict[str, Any]:
        return {
            "StreamName": name,
            "StreamARN": f"arn:aws:kinesis:{REGION}:{ACCOUNT_ID}:stream/{name}",
            "StreamStatus": "ACTIVE",
            "StreamModeDetails": {"StreamMode": "PROVISIONED"},
            "RetentionPeriodHours": 24,
            "StreamCreationTimestamp": self._created,
            "EnhancedMonitoring": [{"ShardLevelMetrics": []}],
            "EncryptionType": "NONE",
        }

    def _describe_stream_summary(self, params: dict[str, Any]) -> bytes:
        summary = self._summary(self._stream_name(params))
        summary.update(OpenShardCount=self.shards, ConsumerCount=0)
        return orjson.dumps({"StreamDescriptionSummary": summary})

    def _describe_stream(self, params: dict[str, Any]) -> bytes:
        description = self._summary(self._stream_name(params))
        description.update(Shards=self._shard_list, HasMoreShards=False)
        return orjson.dumps({"StreamDescription": description})

    def _list_shards(self, params: dict[str, Any]) -> bytes:
        # A NextToken call names no stream; every stream has the same shards anyway.
        if "NextToken" not in params:
            self._stream_name(params)
        return orjson.dumps({"Shards": self._shard_list})

    def _list_streams(self, params: dict[str, Any]) -> bytes:
        names = list(self.streams)
        return orjson.dumps(
            {
                "StreamNames": names,
                "HasMoreStreams": False,
                "StreamSummaries": [
                    {
                        key: value
                        for key, value in self._summary(name).items()
                        if key in ("StreamName", "StreamARN", "StreamStatus", "StreamModeDetails")
                    }
                    | {"StreamCreationTimestamp": self._created}
                    for name in names
                ],
            }
        )


def _error(status: int, code: str, message: str) -> tuple[int, bytes]:
    return status, orjson.dumps({"__type": code, "message": message})


class _HttpProtocol(asyncio.Protocol):
    """One HTTP/1.1 connection: reads requests, answers each in turn, keeps the connection."""

    def __init__(self, state: NullKinesis) -> None:
        self._state = state
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._body_length = -1  # -1: still reading the head of the next request
        self._method = b""
        self._path = b""
        self._target = b""
        self._cbor = False
        self._close_after = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while self._transport is not None:
            if self._body_length < 0:
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    if len(buffer) > MAX_HEAD_BYTES:
                        self._reply(431, b"", close=True)
                    return
                if not self._parse_head(bytes(buffer[:end])):
                    return
                del buffer[: end + 4]
            length = self._body_length
            if len(buffer) < length:
                return
            if len(buffer) == length:
                # The common case, and the one for large bodies: no copy.
                body, self._buffer = buffer, bytearray()
                buffer = self._buffer
            else:
                body = buffer[:length]
                del buffer[:length]
            self._body_length = -1
            self._dispatch(body)

    def _parse_head(self, head: bytes) -> bool:
        """Read request line and headers; False when the connection was answered and closed."""
        lines = head.split(b"\r\n")
        try:
            self._method, self._path, version = lines[0].split(b" ", 2)
        except ValueError:
            self._reply(400, b"", close=True)
            return False
        length = 0
        target = b""
        self._cbor = False
        expect_continue = False
        close = version != b"HTTP/1.1"
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    self._reply(400, b"", close=True)
                    return False
            elif name == b"x-amz-target":
                target = value.strip()
            elif name == b"content-type":
                self._cbor = b"cbor" in value.lower()
            elif name == b"connection":
                token = value.strip().lower()
                close = token == b"close" or (close and token != b"keep-alive")
            elif name == b"expect":
                expect_continue = value.strip().lower() == b"100-continue"
            elif name == b"transfer-encoding":
                self._reply(411, b"", close=True)
                return False
        if not 0 <= length <= MAX_BODY_BYTES:
            self._reply(413, b"", close=True)
            return False
        self._body_length = length
        self._target = target
        self._close_after = close
        if expect_continue and length and self._transport is not None:
            self._transport.write(_CONTINUE)
        return True

    def _dispatch(self, body: bytearray) -> None:
        state = self._state
        if self._method == b"POST":
            target = self._target.decode("latin-1")
            if not target.startswith(TARGET_PREFIX):
                status, answer = _error(
                    400, "UnknownOperationException", f"unknown X-Amz-Target {target!r}"
                )
            else:
                status, answer = state.handle(target[len(TARGET_PREFIX) :], body, cbor=self._cbor)
        elif self._method == b"GET" and self._path.split(b"?", 1)[0] == b"/stats":
            status, answer = 200, orjson.dumps(state.stats())
        elif self._method == b"GET":
            status, answer = _error(404, "NotFound", "only GET /stats is served")
        else:
            status, answer = _error(405, "MethodNotAllowed", "use POST or GET /stats")
        self._reply(status, answer, close=self._close_after)

    def _reply(self, status: int, body: bytes, *, close: bool) -> None:
        transport = self._transport
        if transport is None:
            return
        head = b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n" % (
            status,
            _REASONS.get(status, b"Error"),
            b"application/x-amz-cbor-1.1" if self._cbor else b"application/x-amz-json-1.1",
            len(body),
            b"Connection: close\r\n" if close else b"",
        )
        transport.write(head + body)
        if close:
            transport.close()
            self._transport = None


async def serve(
    *, host: str = "127.0.0.1", port: int = 0, shards: int = 1, parent_pid: int | None = None
) -> None:
    """Serve the null endpoint until SIGINT/SIGTERM (or until parent_pid is no longer the parent).

    Args:
        host: address to listen on.
        port: TCP port; 0 lets the system pick one.
        shards: open shards of every stream.
        parent_pid: exit when this process stops being our parent (it died without stopping us).
    """
    state = NullKinesis(shards)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _HttpProtocol(state), host, port, backlog=1024)
    bound_port = server.sockets[0].getsockname()[1]
    print(f"listening on {connect_url(host, bound_port)}", flush=True)
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            if parent_pid is not None and os.getppid() != parent_pid:
                log.warning("Parent process %d is gone; stopping.", parent_pid)
                break


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m kingest.local.null_endpoint``."""
    parser = argparse.ArgumentParser(
        prog="python -m kingest.local.null_endpoint",
        description="Serve a Kinesis-compatible endpoint that stores nothing.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="TCP port (default: any free one)")
    parser.add_argument("--shards", type=int, default=1, help="shards per stream (default: 1)")
    parser.add_argument("--parent-pid", type=int, help="exit when this process is gone")
    args = parser.parse_args(argv)
    if args.shards < 1:
        parser.error("--shards must be at least 1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(
            serve(host=args.host, port=args.port, shards=args.shards, parent_pid=args.parent_pid)
        )
    except OSError as exc:
        print(f"null endpoint: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


_LISTENING = re.compile(r"^listening on (\S+)\s*$", re.MULTILINE)


class NullEndpoint:
    """The null endpoint as a child process, for benchmarks.

    Args:
        port: TCP port; 0 lets the system pick a free one.
        host: address to listen on.
        shards: open shards of every stream.
        start_timeout_s: how long start() waits for it to listen.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        shards: int = 1,
        start_timeout_s: float = 30.0,
    ) -> None:
        self.port = port
        self.host = host
        self.shards = shards
        self.start_timeout_s = start_timeout_s
        self._process: ServerProcess | None = None
        self._url: str | None = None

    @property
    def endpoint_url(self) -> str:
        """URL of the running endpoint.

        Raises:
            ConfigError: it is not running.
        """
        if self._url is None:
            raise ConfigError("the null endpoint is not running; call start() first")
        return self._url

    @property
    def process(self) -> ServerProcess | None:
        """The endpoint's process while it runs."""
        return self._process

    def start(self) -> str:
        """Launch the endpoint and wait until it listens.

        Returns:
            The endpoint URL.

        Raises:
            ConfigError: it exited (port in use) or did not listen within start_timeout_s.
        """
        if self._url is not None:
            return self._url
        env = dict(os.environ)
        # The child imports this package from wherever this process did (a source checkout too).
        source_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [source_root, env.get("PYTHONPATH")]))
        process = ServerProcess(
            "null-endpoint",
            [
                sys.executable,
                "-m",
                "kingest.local.null_endpoint",
                "--host",
                self.host,
                "--port",
                str(self.port),
                "--shards",
                str(self.shards),
                "--parent-pid",
                str(os.getpid()),
            ],
            env=env,
        )
        process.start()
        self._process = process
        try:
            match = process.wait_for_output(_LISTENING, time.monotonic() + self.start_timeout_s)
        except BaseException:
            self.stop()
            raise
        self._url = match.group(1)
        self.port = int(self._url.rsplit(":", 1)[1])
        log.info("Null endpoint listening on %s.", self._url)
        return self._url

    def stats(self) -> dict[str, Any]:
        """The endpoint's counts (``GET /stats``): requests, records, bytes, operations."""
        # No proxy: an http_proxy setting must not divert a request to this machine.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"{self.endpoint_url}/stats", timeout=10) as answer:
            stats: dict[str, Any] = orjson.loads(answer.read())
        return stats

    def stop(self) -> None:
        """Stop the endpoint. Idempotent."""
        if self._process is not None:
            self._process.stop()
            self._process = None
        self._url = None

    def __enter__(self) -> NullEndpoint:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


if __name__ == "__main__":
    sys.exit(main())
