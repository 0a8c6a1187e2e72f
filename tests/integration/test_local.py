"""Tests of the embedded endpoints: ``kingest local``, LocalKinesis, the null endpoint, no loss."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import IO, Any, TypeVar

import orjson
import pytest

from kingest.errors import ConfigError, KinesisError
from kingest.local.kinesalite import LocalKinesis, create_stream, ensure_installed, install_dir
from kingest.local.null_endpoint import NullEndpoint
from kingest.producer.transport import KinesisTransport

pytestmark = pytest.mark.integration

T = TypeVar("T")
KINGEST = [sys.executable, "-m", "kingest"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _process_exists(pid: int) -> bool:
    """True while pid runs; a zombie (an orphan nobody reaped yet) counts as gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_until(check: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _readline(stream: IO[str], timeout_s: float) -> str:
    """One line from a pipe, or AssertionError after timeout_s (a bare readline could hang)."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: lines.put(stream.readline()), daemon=True).start()
    try:
        return lines.get(timeout=timeout_s)
    except queue.Empty:
        raise AssertionError(f"no line within {timeout_s}s") from None


def _with_transport(
    url: str, body: Callable[[KinesisTransport], Coroutine[Any, Any, T]], **options: Any
) -> T:
    async def run() -> T:
        transport = KinesisTransport(endpoint_url=url, **options)
        try:
            return await body(transport)
        finally:
            await transport.close()

    return asyncio.run(run())


async def _shard_count(transport: KinesisTransport, stream: str) -> tuple[int, int]:
    summary = await transport.call("DescribeStreamSummary", {"StreamName": stream})
    shards = await transport.call("ListShards", {"StreamName": stream})
    return summary["StreamDescriptionSummary"]["OpenShardCount"], len(shards["Shards"])


# ------------------------------------------------------------------------ kingest local


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_cli_serves_streams_until_signalled(local_kinesis: LocalKinesis, signum: int) -> None:
    port = _free_port()
    with subprocess.Popen(
        [*KINGEST, "local", "--port", str(port), "--stream", "a:2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            line = _readline(proc.stdout, timeout_s=60)
            url = f"http://127.0.0.1:{port}"
            assert line == f"kingest local: listening on {url} (streams: a:2)\n"

            async def check(transport: KinesisTransport) -> None:
                assert await _shard_count(transport, "a") == (2, 2)
                await create_stream(transport, "b", 3)
                assert await _shard_count(transport, "b") == (3, 3)

            _with_transport(url, check)
            proc.send_signal(signum)
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.stderr is not None
        assert proc.stderr.read() == ""
    assert not _port_open(port), "the emulator outlived `kingest local`"


@pytest.mark.parametrize("spec", ["a", "a:", "a:0", "a:-1", "a:x", "bad name:1", ":2", "a:10001"])
def test_cli_rejects_bad_stream_spec(spec: str) -> None:
    result = subprocess.run(
        [*KINGEST, "local", "--stream", spec], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "argument --stream:" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_port_in_use_is_one_line_and_exit_1(local_kinesis: LocalKinesis) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [*KINGEST, "local", "--port", str(port)], capture_output=True, text=True, timeout=60
        )
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0] == (
        f"kingest local: error: cannot listen on 127.0.0.1:{port}: the address is already in use"
    )


def test_cli_install_only(local_kinesis: LocalKinesis) -> None:
    result = subprocess.run(
        [*KINGEST, "local", "--install-only"], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("kingest local: kinesalite 3.3.3 is installed in ")


# ----------------------------------------------------------------------------- install


def _fake_tools(tmp_path: Path, *, node: str | None, npm: str | None) -> str:
    """A PATH of one directory holding the given node/npm (a shell script, or "real")."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, script in (("node", node), ("npm", npm)):
        if script == "real":
            real = shutil.which(name)
            assert real is not None
            (bin_dir / name).symlink_to(real)
        elif script is not None:
            (bin_dir / name).write_text(f"#!/bin/sh\n{script}\n")
            (bin_dir / name).chmod(0o755)
    return str(bin_dir)


def test_install_dir_follows_kingest_local_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KINGEST_LOCAL_HOME", str(tmp_path / "home"))
    assert install_dir() == tmp_path / "home"
    monkeypatch.delenv("KINGEST_LOCAL_HOME")
    assert install_dir() in (
        Path(sys.prefix) / "share" / "kingest" / "kinesalite",
        Path.home() / ".cache" / "kingest" / "kinesalite",
    )


@pytest.mark.parametrize(
    ("node", "npm", "message"),
    [
        (None, None, "node is not on PATH"),
        ("echo v16.20.0", "true", "is version v16.20.0"),
        ("real", None, "npm is not on PATH"),
    ],
)
def test_ensure_installed_names_what_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, node: str | None, npm: str | None, message: str
) -> None:
    monkeypatch.setenv("KINGEST_LOCAL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PATH", _fake_tools(tmp_path, node=node, npm=npm))
    with pytest.raises(ConfigError, match=message) as caught:
        ensure_installed(quiet=True)
    assert "Node.js 18+ and npm: apt-get install nodejs npm" in str(caught.value)


def test_ensure_installed_reports_npm_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KINGEST_LOCAL_HOME", str(tmp_path / "home"))
    npm = "echo 'npm error code E404' >&2; echo 'npm error 404 Not Found' >&2; exit 1"
    monkeypatch.setenv("PATH", _fake_tools(tmp_path, node="real", npm=npm))
    with pytest.raises(ConfigError) as caught:
        ensure_installed(quiet=True)
    assert "exit status 1" in str(caught.value)
    assert str(caught.value).endswith("npm error code E404\nnpm error 404 Not Found")


# --------------------------------------------------------------------------- LocalKinesis


def test_local_kinesis_start_and_stop(local_kinesis: LocalKinesis) -> None:
    local = LocalKinesis(streams={"first": 3})
    with local:
        url = local.endpoint_url
        assert local.process is not None and local.process.pid is not None
        pid = local.process.pid
        local.create_stream("first", 3)  # already there: fine
        local.create_stream("second", 1)

        async def check(transport: KinesisTransport) -> None:
            assert await _shard_count(transport, "first") == (3, 3)
            assert await _shard_count(transport, "second") == (1, 1)

        _with_transport(url, check)
    assert _wait_until(lambda: not _process_exists(pid), 10), "kinesalite survived stop()"
    assert not _port_open(local.port)
    local.stop()  # idempotent
    with pytest.raises(ConfigError):
        local.endpoint_url  # noqa: B018 -- the property raises when stopped


_ORPHAN_PARENT = """
import sys, time
from kingest.local.kinesalite import LocalKinesis
from kingest.local.null_endpoint import NullEndpoint
server = LocalKinesis() if sys.argv[1] == "kinesalite" else NullEndpoint()
server.start()
print(server.process.pid, server.process.log_path.parent, flush=True)
time.sleep(120)
"""


@pytest.mark.parametrize("kind", ["kinesalite", "null"])
def test_server_ends_when_its_parent_is_killed(local_kinesis: LocalKinesis, kind: str) -> None:
    """A SIGKILLed parent runs no atexit handler; the child must notice and end by itself."""
    with subprocess.Popen(
        [sys.executable, "-c", _ORPHAN_PARENT, kind], stdout=subprocess.PIPE, text=True
    ) as parent:
        try:
            assert parent.stdout is not None
            pid, log_dir = _readline(parent.stdout, timeout_s=60).split()
            child = int(pid)
            assert _process_exists(child)
        finally:
            parent.kill()
    try:
        assert _wait_until(lambda: not _process_exists(child), 10), f"{kind} outlived its parent"
    finally:
        if _process_exists(child):
            os.kill(child, signal.SIGKILL)
        shutil.rmtree(log_dir, ignore_errors=True)  # its parent had no chance to


def test_kinesalite_keeps_idle_connections_open(local_kinesis: LocalKinesis) -> None:
    """Node closes idle keep-alive connections after 5 s by default, racing pooled clients."""
    request = (
        b"POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Target: Kinesis_20131202.ListStreams\r\n"
        b"Content-Type: application/x-amz-json-1.1\r\nX-Amz-Date: 20240101T000000Z\r\n"
        b"Authorization: AWS4-HMAC-SHA256 Credential=k/20240101/us-east-1/kinesis/aws4_request, "
        b"SignedHeaders=host, Signature=0\r\nContent-Length: 2\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", local_kinesis.port)) as sock:
        sock.settimeout(10)
        assert _http(sock, request, b"{}")[0] == b"HTTP/1.1 200 OK"
        time.sleep(6)
        assert _http(sock, request, b"{}")[0] == b"HTTP/1.1 200 OK"


def test_session_endpoint_and_stream_factory(
    endpoint_url: str, stream_factory: Callable[..., str]
) -> None:
    first, second = stream_factory(shards=2), stream_factory(shards=2, name="named")
    assert first != second and second.startswith("named-")

    async def check(transport: KinesisTransport) -> None:
        assert await _shard_count(transport, first) == (2, 2)

    _with_transport(endpoint_url, check)


# -------------------------------------------------------------------------- null endpoint


def _md5_key(partition_key: str) -> int:
    return int(hashlib.md5(partition_key.encode()).hexdigest(), 16)


def test_null_endpoint_routes_like_kinesis_and_counts() -> None:
    with NullEndpoint(shards=4) as null:
        sent: list[bytes] = []

        async def call(transport: KinesisTransport, operation: str, params: Any) -> Any:
            sent.append(orjson.dumps(params))  # what the transport puts on the wire
            return await transport.call(operation, params)

        async def exercise(transport: KinesisTransport) -> None:
            await call(transport, "CreateStream", {"StreamName": "s", "ShardCount": 4})
            summary = await call(transport, "DescribeStreamSummary", {"StreamName": "s"})
            assert summary["StreamDescriptionSummary"]["OpenShardCount"] == 4
            assert summary["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE"
            shards = (await call(transport, "ListShards", {"StreamName": "s"}))["Shards"]
            assert [s["ShardId"] for s in shards] == [f"shardId-00000000000{i}" for i in range(4)]
            ranges = [
                (int(s["HashKeyRange"]["StartingHashKey"]), int(s["HashKeyRange"]["EndingHashKey"]))
                for s in shards
            ]
            assert ranges[0][0] == 0 and ranges[-1][1] == 2**128 - 1
            assert all(ranges[i][1] + 1 == ranges[i + 1][0] for i in range(3))
            assert all("StartingSequenceNumber" in s["SequenceNumberRange"] for s in shards)

            def expected_shard(key: int) -> str:
                return next(
                    str(s["ShardId"])
                    for s, (lo, hi) in zip(shards, ranges, strict=True)
                    if lo <= key <= hi
                )

            keyed = [{"Data": "eA==", "PartitionKey": f"key-{i}"} for i in range(200)]
            explicit_keys = [0, ranges[1][0] - 1, ranges[1][0], ranges[2][1], 2**128 - 1]
            explicit = [
                {"Data": "eA==", "PartitionKey": "same", "ExplicitHashKey": str(key)}
                for key in explicit_keys
            ]
            answer = await call(
                transport, "PutRecords", {"StreamName": "s", "Records": keyed + explicit}
            )
            assert answer["FailedRecordCount"] == 0
            got = [entry["ShardId"] for entry in answer["Records"]]
            want = [expected_shard(_md5_key(r["PartitionKey"])) for r in keyed]
            want += [expected_shard(key) for key in explicit_keys]
            assert got == want
            assert len(set(want)) == 4  # every shard was hit, so the routing was really tested
            numbers = [int(entry["SequenceNumber"]) for entry in answer["Records"]]
            assert numbers == sorted(set(numbers))

            one = await call(
                transport, "PutRecord", {"StreamName": "s", "Data": "eA==", "PartitionKey": "k"}
            )
            assert one["ShardId"] == expected_shard(_md5_key("k"))
            assert int(one["SequenceNumber"]) > numbers[-1]

            with pytest.raises(KinesisError) as caught:
                await call(transport, "MakeCoffee", {})
            assert caught.value.code == "UnknownOperationException"
            assert caught.value.http_status == 400

        _with_transport(null.endpoint_url, exercise)
        stats = null.stats()
        assert stats["requests"] == len(sent) == 6
        assert stats["records"] == 205 + 1
        assert stats["bytes"] == sum(len(body) for body in sent)
        assert stats["operations"]["PutRecords"] == 1
        pid = null.process.pid if null.process else None
    assert pid is not None
    assert _wait_until(lambda: not _process_exists(pid), 10), "null endpoint survived stop()"


def _http(sock: socket.socket, head: bytes, body: bytes = b"") -> tuple[bytes, bytes]:
    """Send one request on a raw connection; return the answer's status line and body."""

    def receive() -> bytes:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError("the server closed the connection")
        return chunk

    sock.sendall(head + body)
    received = b""
    while b"\r\n\r\n" not in received:
        received += receive()
    answer_head, _, rest = received.partition(b"\r\n\r\n")
    length = int(answer_head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    while len(rest) < length:
        rest += receive()
    assert len(rest) == length
    return answer_head.split(b"\r\n")[0], rest


def test_null_endpoint_http_framing() -> None:
    """Keep-alive, a body of several MiB, Expect: 100-continue, GET /stats, Connection: close."""
    # Raw HTTP because aiohttp warns (an error in this suite) about bodies over 1 MiB.
    blob = base64.b64encode(b"\0" * 900_000).decode()
    body = orjson.dumps(
        {"StreamName": "s", "Records": [{"Data": blob, "PartitionKey": str(i)} for i in range(6)]}
    )
    assert len(body) > 5 * 2**20

    def post(target: str, length: int, extra: bytes = b"") -> bytes:
        return (
            b"POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Target: Kinesis_20131202.%s\r\n"
            b"Content-Length: %d\r\n%s\r\n" % (target.encode(), length, extra)
        )

    with NullEndpoint(shards=2) as null, socket.create_connection(("127.0.0.1", null.port)) as sock:
        sock.settimeout(10)
        sock.sendall(post("PutRecords", len(body), b"Expect: 100-continue\r\n"))
        assert sock.recv(25) == b"HTTP/1.1 100 Continue\r\n\r\n"
        status, answer = _http(sock, b"", body)
        assert status == b"HTTP/1.1 200 OK"
        assert len(orjson.loads(answer)["Records"]) == 6
        status, answer = _http(sock, post("ListShards", 17), b'{"StreamName":"s"}'[:17])
        assert status == b"HTTP/1.1 400 Bad Request"  # truncated JSON, same connection
        assert orjson.loads(answer)["__type"] == "SerializationException"
        status, answer = _http(sock, b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n")
        stats = orjson.loads(answer)
        assert (stats["requests"], stats["records"]) == (2, 6)
        assert stats["bytes"] == len(body) + 17
        status, answer = _http(sock, post("ListStreams", 2, b"Connection: close\r\n"), b"{}")
        assert orjson.loads(answer)["StreamNames"] == ["s"]
        assert sock.recv(1) == b""  # closed as asked


# ----------------------------------------------------------------- emulator loses nothing

WRITERS, REQUESTS, BATCH = 8, 20, 100


async def _write(transport: KinesisTransport, stream: str, writer: int) -> list[str]:
    acknowledged: list[str] = []
    for request in range(REQUESTS):
        payloads = [f"{writer}/{request}/{i}".encode() for i in range(BATCH)]
        answer = await transport.call(
            "PutRecords",
            {
                "StreamName": stream,
                "Records": [
                    {"Data": base64.b64encode(p).decode(), "PartitionKey": p.decode()}
                    for p in payloads
                ],
            },
        )
        assert answer["FailedRecordCount"] == 0
        acknowledged += [entry["SequenceNumber"] for entry in answer["Records"]]
    return acknowledged


async def _read_all(transport: KinesisTransport, stream: str) -> list[dict[str, Any]]:
    iterator = (
        await transport.call(
            "GetShardIterator",
            {
                "StreamName": stream,
                "ShardId": "shardId-000000000000",
                "ShardIteratorType": "TRIM_HORIZON",
            },
        )
    )["ShardIterator"]
    records: list[dict[str, Any]] = []
    while iterator:
        page = await transport.call("GetRecords", {"ShardIterator": iterator, "Limit": 10000})
        if not page["Records"]:
            break  # caught up: everything stored before this call has been read
        records += page["Records"]
        iterator = page.get("NextShardIterator")
    return records


def test_emulator_stores_every_acknowledged_record_exactly_once(
    endpoint_url: str, stream_factory: Callable[..., str]
) -> None:
    stream = stream_factory(shards=1, name="noloss")

    async def run(transport: KinesisTransport) -> tuple[list[str], list[dict[str, Any]]]:
        batches = await asyncio.gather(*(_write(transport, stream, w) for w in range(WRITERS)))
        return [n for batch in batches for n in batch], await _read_all(transport, stream)

    acknowledged, stored = _with_transport(endpoint_url, run, max_connections=WRITERS)
    total = WRITERS * REQUESTS * BATCH
    assert len(acknowledged) == len(set(acknowledged)) == total
    payloads = Counter(base64.b64decode(r["Data"]) for r in stored)
    expected = {
        f"{w}/{r}/{i}".encode()
        for w in range(WRITERS)
        for r in range(REQUESTS)
        for i in range(BATCH)
    }
    assert set(payloads) == expected
    assert max(payloads.values()) == 1
    assert sorted(r["SequenceNumber"] for r in stored) == sorted(acknowledged)
