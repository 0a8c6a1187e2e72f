"""Tests of ``kingest read`` (and the reader under it) against the embedded Kinesis endpoint."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import queue
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

import orjson
import pytest

from kingest.producer.aggregate import MAGIC, encode_aggregate
from kingest.producer.producer import Producer
from kingest.producer.transport import KinesisTransport
from kingest.reader import read_all
from kingest.record import RecordResult

pytestmark = pytest.mark.integration

T = TypeVar("T")
KINGEST = [sys.executable, "-m", "kingest"]
STARTED = "Started reading shard"


def _read_cli(
    endpoint_url: str, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*KINGEST, "read", "--endpoint-url", endpoint_url, *args],
        capture_output=True,
        timeout=timeout,
        check=False,
    )


def _envelopes(stdout: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in stdout.splitlines()]


def _with_transport(url: str, body: Callable[[KinesisTransport], Coroutine[Any, Any, T]]) -> T:
    async def run() -> T:
        transport = KinesisTransport(endpoint_url=url)
        try:
            return await body(transport)
        finally:
            await transport.close()

    return asyncio.run(run())


def _put_raw(url: str, stream: str, records: list[tuple[bytes, str]]) -> list[dict[str, Any]]:
    """PutRecord each (data, partition key) in order, bypassing the producer (no aggregation)."""

    async def put(transport: KinesisTransport) -> list[dict[str, Any]]:
        answers = []
        for data, key in records:
            answers.append(
                await transport.call(
                    "PutRecord",
                    {
                        "StreamName": stream,
                        "Data": base64.b64encode(data).decode(),
                        "PartitionKey": key,
                    },
                )
            )
        return answers

    return _with_transport(url, put)


def _split_first_shard(url: str, stream: str) -> None:
    async def split(transport: KinesisTransport) -> None:
        await transport.call(
            "SplitShard",
            {
                "StreamName": stream,
                "ShardToSplit": "shardId-000000000000",
                "NewStartingHashKey": str(2**127),
            },
        )
        deadline = time.monotonic() + 30
        while True:
            answer = await transport.call("DescribeStreamSummary", {"StreamName": stream})
            summary = answer["StreamDescriptionSummary"]
            if summary["StreamStatus"] == "ACTIVE" and summary["OpenShardCount"] == 2:
                return
            assert time.monotonic() < deadline, "the split did not finish in time"
            await asyncio.sleep(0.05)

    _with_transport(url, split)


def _produce(
    url: str, stream: str, tmp_path: Path, items: list[tuple[Any, str]], **settings: Any
) -> list[RecordResult]:
    with Producer(stream, endpoint_url=url, dlq_dir=str(tmp_path / "dlq"), **settings) as producer:
        futures = [producer.put(payload, partition_key=key) for payload, key in items]
    results = [future.result(timeout=60) for future in futures]
    assert all(result.delivered for result in results), results
    return results


class _StderrLines:
    """Collects a child's standard error lines on a thread, so waiting for one cannot hang."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[bytes]) -> None:
        for raw in stream:
            self._queue.put(raw.decode("utf-8", "replace"))
        self._queue.put(None)

    def wait_for(self, text: str, count: int, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while sum(text in line for line in self.lines) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{count} x {text!r} not seen on stderr: {self.lines}")
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"stderr closed before {count} x {text!r}: {self.lines}")
            self.lines.append(line)

    def rest(self) -> str:
        self._thread.join(timeout=30)
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.lines.append(line)
        return "".join(self.lines)


def _readlines(stream: IO[bytes], count: int, timeout_s: float = 60) -> list[bytes]:
    """``count`` lines from a pipe, or AssertionError after timeout_s (a bare read could hang)."""
    lines: queue.Queue[bytes] = queue.Queue()

    def pump() -> None:
        for _ in range(count):
            line = stream.readline()
            lines.put(line)
            if not line:
                return

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout_s
    got: list[bytes] = []
    while len(got) < count:
        try:
            line = lines.get(timeout=max(deadline - time.monotonic(), 0.001))
        except queue.Empty:
            raise AssertionError(f"{len(got)} of {count} lines within {timeout_s}s") from None
        assert line, f"output ended after {len(got)} of {count} lines"
        got.append(line)
    return got


@contextlib.contextmanager
def _follower(url: str, stream: str, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """``kingest read`` running in the background (INFO logs on stderr); killed if it outlives
    the block, its pipes closed."""
    with subprocess.Popen(
        [*KINGEST, "--log-level", "INFO", "read", "--endpoint-url", url, "--stream", stream, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _assert_per_shard_order(envelopes: list[dict[str, Any]]) -> None:
    last: dict[str, tuple[int, int]] = {}
    for env in envelopes:
        position = (int(env["sequence_number"]), env["sub_sequence_number"])
        previous = last.get(env["shard_id"])
        assert previous is None or position > previous, (env["shard_id"], previous, position)
        last[env["shard_id"]] = position


# ------------------------------------------------------------------------------------ reading


def test_envelope_has_every_record_in_shard_order(
    endpoint_url: str, stream_factory: Callable[..., str], tmp_path: Path
) -> None:
    stream = stream_factory(shards=3)
    items: list[tuple[Any, str]] = [({"key": f"k{i % 7}", "n": i}, f"k{i % 7}") for i in range(300)]
    items.append((b"\xff\x00binary", "bin"))
    items.append(("two\nlines", "text"))
    results = _produce(endpoint_url, stream, tmp_path, items)
    # Aggregation packed several user records into each Kinesis record.
    assert any(result.sub_sequence_number > 0 for result in results)
    plain = _put_raw(endpoint_url, stream, [(b'{"plain": 1}', "p1"), (b"plain text", "p2")])

    result = _read_cli(endpoint_url, "--stream", stream, "--envelope", "--until-idle", "1")

    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    envelopes = _envelopes(result.stdout)
    assert len(envelopes) == len(items) + 2
    _assert_per_shard_order(envelopes)
    by_position = {
        (env["shard_id"], env["sequence_number"], env["sub_sequence_number"]): env
        for env in envelopes
    }
    for (payload, key), res in zip(items, results, strict=True):
        env = by_position[(res.shard_id, res.sequence_number, res.sub_sequence_number)]
        assert env["partition_key"] == key
        assert "explicit_hash_key" not in env
        assert isinstance(env["approximate_arrival_timestamp"], float)
        assert "corrupt_aggregate" not in env
        if isinstance(payload, dict):
            assert (env["data_encoding"], env["data"]) == ("json", payload)
        elif isinstance(payload, bytes):
            assert env["data_encoding"] == "base64"
            assert base64.b64decode(env["data"]["base64"]) == payload
        else:
            assert (env["data_encoding"], env["data"]) == ("text", payload)
    for answer, (encoding, data, key) in zip(
        plain, [("json", {"plain": 1}, "p1"), ("text", "plain text", "p2")], strict=True
    ):
        env = by_position[(answer["ShardId"], answer["SequenceNumber"], 0)]
        assert (env["data_encoding"], env["data"], env["partition_key"]) == (encoding, data, key)
    # Each key's records come in the order they were put.
    seen: dict[str, list[int]] = defaultdict(list)
    for env in envelopes:
        if env["data_encoding"] == "json" and "n" in env["data"]:
            seen[env["partition_key"]].append(env["data"]["n"])
    assert all(ns == sorted(ns) for ns in seen.values())
    assert sum(len(ns) for ns in seen.values()) == 300


def test_explicit_hash_key_of_an_aggregated_user_record(
    endpoint_url: str, stream_factory: Callable[..., str]
) -> None:
    stream = stream_factory(shards=1)
    data = encode_aggregate([("a", None, b"first"), ("b", str(2**100), b"second")])
    _put_raw(endpoint_url, stream, [(data, "outer")])

    result = _read_cli(endpoint_url, "--stream", stream, "--envelope", "--until-idle", "0.5")

    assert result.returncode == 0, result.stderr
    first, second = _envelopes(result.stdout)
    assert (first["partition_key"], first["sub_sequence_number"], first["data"]) == (
        "a",
        0,
        "first",
    )
    assert "explicit_hash_key" not in first
    assert second["explicit_hash_key"] == str(2**100)
    assert (second["partition_key"], second["sub_sequence_number"]) == ("b", 1)


def test_raw_output_is_payload_per_line(
    endpoint_url: str, stream_factory: Callable[..., str], tmp_path: Path
) -> None:
    stream = stream_factory(shards=1)
    items: list[tuple[Any, str]] = [(f"event {i}", "k") for i in range(50)]
    _produce(endpoint_url, stream, tmp_path, items)

    result = _read_cli(endpoint_url, "--stream", stream, "--until-idle", "0.5")

    assert result.returncode == 0, result.stderr
    assert result.stdout == b"".join(f"event {i}\n".encode() for i in range(50))


def test_until_idle_ends_an_empty_read(
    endpoint_url: str, stream_factory: Callable[..., str]
) -> None:
    stream = stream_factory(shards=2)
    started = time.monotonic()
    result = _read_cli(endpoint_url, "--stream", stream, "--until-idle", "0.5", timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b""
    assert time.monotonic() - started < 20


def test_from_latest_sees_only_new_records(
    endpoint_url: str, stream_factory: Callable[..., str], tmp_path: Path
) -> None:
    stream = stream_factory(shards=2)
    _produce(endpoint_url, stream, tmp_path, [({"old": i}, f"k{i}") for i in range(20)])
    with (
        Producer(stream, endpoint_url=endpoint_url, dlq_dir=str(tmp_path / "dlq2")) as producer,
        _follower(endpoint_url, stream, "--from", "latest", "--envelope") as proc,
    ):
        assert proc.stderr is not None and proc.stdout is not None
        stderr = _StderrLines(proc.stderr)
        stderr.wait_for(STARTED, 2)  # both iterators taken: what comes now is new
        futures = [producer.put({"new": i}, partition_key=f"k{i}") for i in range(20)]
        producer.flush()
        assert all(future.result().delivered for future in futures)
        lines = _readlines(proc.stdout, 20)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, stderr.rest()
        lines += proc.stdout.read().splitlines(keepends=True)
    assert sorted(env["data"]["new"] for env in _envelopes(b"".join(lines))) == list(range(20))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_follows_until_signalled(
    endpoint_url: str, stream_factory: Callable[..., str], tmp_path: Path, signum: int
) -> None:
    stream = stream_factory(shards=1)
    with _follower(endpoint_url, stream) as proc:
        assert proc.stderr is not None and proc.stdout is not None
        stderr = _StderrLines(proc.stderr)
        stderr.wait_for(STARTED, 1)
        _produce(endpoint_url, stream, tmp_path, [(f"line {i}", "k") for i in range(5)])
        # Flushed once per GetRecords answer, so the lines come while the reader follows.
        lines = _readlines(proc.stdout, 5)
        assert lines == [f"line {i}\n".encode() for i in range(5)]
        proc.send_signal(signum)
        assert proc.wait(timeout=30) == 0
        assert proc.stdout.read() == b""
        assert "Traceback" not in stderr.rest()


# ---------------------------------------------------------------------------------- resharding


def _check_parents_first(envelopes: list[dict[str, Any]], parent: str) -> None:
    shards = [env["shard_id"] for env in envelopes]
    assert parent in shards
    last_parent = max(i for i, shard in enumerate(shards) if shard == parent)
    first_child = min(i for i, shard in enumerate(shards) if shard != parent)
    assert last_parent < first_child, "a child shard's record came before the parent's last"
    _assert_per_shard_order(envelopes)
    by_key: dict[str, list[int]] = defaultdict(list)
    for env in envelopes:
        by_key[env["partition_key"]].append(env["data"]["n"])
    for key, ns in by_key.items():
        assert ns == sorted(ns), key


def test_reads_parent_before_children_after_a_split(
    endpoint_url: str, stream_factory: Callable[..., str], tmp_path: Path
) -> None:
    stream = stream_factory(shards=1)
    keys = [f"key-{i}" for i in range(16)]
    _produce(endpoint_url, stream, tmp_path, [({"n": n}, keys[n % 16]) for n in range(100)])
    _split_first_shard(endpoint_url, stream)
    _produce(endpoint_url, stream, tmp_path, [({"n": n}, keys[n % 16]) for n in range(100, 200)])

    result = _read_cli(endpoint_url, "--stream", stream, "--envelope", "--until-idle", "1")

    assert result.returncode == 0, result.stderr
    envelopes = _envelopes(result.stdout)
    assert sorted(env["data"]["n"] for env in envelopes) == list(range(200))
    assert {env["shard_id"] for env in envelopes} == {
        "shardId-000000000000",
        "shardId-000000000001",
        "shardId-000000000002",
    }
    _check_parents_first(envelopes, "shardId-000000000000")


def test_follows_a_split_that_happens_while_reading(
    endpoint_url: str, stream_factory: Callable[..., str], tmp_path: Path
) -> None:
    stream = stream_factory(shards=1)
    keys = [f"key-{i}" for i in range(16)]
    with _follower(endpoint_url, stream, "--envelope") as proc:
        assert proc.stderr is not None and proc.stdout is not None
        stderr = _StderrLines(proc.stderr)
        stderr.wait_for(STARTED, 1)
        _produce(endpoint_url, stream, tmp_path, [({"n": n}, keys[n % 16]) for n in range(100)])
        _split_first_shard(endpoint_url, stream)
        _produce(
            endpoint_url, stream, tmp_path, [({"n": n}, keys[n % 16]) for n in range(100, 200)]
        )
        # The children are found when the parent turns out closed, and read after it.
        lines = _readlines(proc.stdout, 200)
        stderr.wait_for(STARTED, 3)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, stderr.rest()
        lines += proc.stdout.read().splitlines(keepends=True)
    envelopes = _envelopes(b"".join(lines))
    assert sorted(env["data"]["n"] for env in envelopes) == list(range(200))
    _check_parents_first(envelopes, "shardId-000000000000")


def test_read_all_sees_the_split_stream(
    endpoint_url: str, stream_factory: Callable[..., str], tmp_path: Path
) -> None:
    stream = stream_factory(shards=1)
    _produce(endpoint_url, stream, tmp_path, [({"n": n}, f"k{n % 4}") for n in range(40)])
    _split_first_shard(endpoint_url, stream)
    _produce(endpoint_url, stream, tmp_path, [({"n": n}, f"k{n % 4}") for n in range(40, 80)])

    records = read_all(endpoint_url, stream, idle_s=0.5)

    assert sorted(orjson.loads(r.data)["n"] for r in records) == list(range(80))
    parent = [i for i, r in enumerate(records) if r.shard_id == "shardId-000000000000"]
    children = [i for i, r in enumerate(records) if r.shard_id != "shardId-000000000000"]
    assert max(parent) < min(children)


# ----------------------------------------------------------------------------------- failures


def test_corrupt_aggregate_is_reported_not_dropped(
    endpoint_url: str, stream_factory: Callable[..., str]
) -> None:
    stream = stream_factory(shards=1)
    good = encode_aggregate([("a", None, b"one"), ("b", None, b"two")])
    corrupt = good[:-1] + bytes([good[-1] ^ 0xFF])  # the MD5 digest no longer matches
    truncated = MAGIC + b"\x01"
    answers = _put_raw(
        endpoint_url,
        stream,
        [(b"before", "k"), (corrupt, "bad"), (truncated, "short"), (good, "ok")],
    )

    result = _read_cli(endpoint_url, "--stream", stream, "--envelope", "--until-idle", "0.5")

    assert result.returncode == 0, result.stderr
    envelopes = _envelopes(result.stdout)
    assert [env["data_encoding"] for env in envelopes] == [
        "text",
        "base64",
        "base64",
        "text",
        "text",
    ]
    for env, raw, answer in zip(envelopes[1:3], (corrupt, truncated), answers[1:3], strict=True):
        assert env["corrupt_aggregate"] is True
        assert base64.b64decode(env["data"]["base64"]) == raw
        assert env["sequence_number"] == answer["SequenceNumber"]
    assert [env["data"] for env in envelopes[3:]] == ["one", "two"]
    assert all("corrupt_aggregate" not in env for env in (envelopes[0], *envelopes[3:]))
    stderr = result.stderr.decode()
    for answer in answers[1:3]:
        assert answer["SequenceNumber"] in stderr
    assert stderr.count("shardId-000000000000") == 2
    assert stderr.count("WARNING") == 2

    raw_result = _read_cli(endpoint_url, "--stream", stream, "--until-idle", "0.5")
    assert raw_result.returncode == 0
    assert raw_result.stdout.split(b"\n")[:1] == [b"before"]
    assert corrupt in raw_result.stdout


def test_missing_stream_is_one_error_line(endpoint_url: str) -> None:
    result = _read_cli(endpoint_url, "--stream", "no-such-stream", "--until-idle", "1")
    assert result.returncode == 1
    assert result.stdout == b""
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("kingest read: error: stream no-such-stream does not exist")


def test_unreachable_endpoint_fails_soon() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens once the socket is closed
    started = time.monotonic()
    result = _read_cli(f"http://127.0.0.1:{port}", "--stream", "s", timeout=60)
    assert result.returncode == 1
    assert result.stderr.decode().startswith("kingest read: error: ListShards")
    assert len(result.stderr.splitlines()) == 1
    assert time.monotonic() - started < 30


def test_closed_pipe_ends_quietly(
    endpoint_url: str, stream_factory: Callable[..., str], tmp_path: Path
) -> None:
    stream = stream_factory(shards=2)
    # Far more than a pipe buffer holds, so the reader is still writing when head exits.
    _produce(endpoint_url, stream, tmp_path, [("x" * 100, f"k{i}") for i in range(3000)])
    command = shlex.join(
        [*KINGEST, "read", "--endpoint-url", endpoint_url, "--stream", stream, "--until-idle", "1"]
    )
    result = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {command} | head -1"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"x" * 100 + b"\n"
    assert result.stderr == b""


@pytest.mark.parametrize(
    "args",
    [["--stream", "s", "--until-idle", "-1"], ["--stream", "s", "--from", "middle"], []],
    ids=["negative-idle", "unknown-start", "no-stream"],
)
def test_rejects_bad_arguments(endpoint_url: str, args: list[str]) -> None:
    result = _read_cli(endpoint_url, *args)
    assert result.returncode == 2
    assert b"usage:" in result.stderr
