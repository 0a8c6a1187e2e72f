"""Tests of tests.faultproxy against a real Kinesis emulator (kinesalite).

Each fault is checked end to end with boto3 (its own retries switched off): what the
client sees, and what the emulator really stored, counted with GetRecords straight from
the emulator, bypassing the proxy.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError, ReadTimeoutError

from tests.faultproxy import FaultPlan, FaultProxy

pytestmark = pytest.mark.integration

# ------------------------------------------------------------------- emulator fixture


@pytest.fixture(scope="module")
def emulator_url(endpoint_url: str) -> str:
    """The session's embedded Kinesis endpoint (it skips, or fails under CI, when absent)."""
    return endpoint_url


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_until(
    check: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


# ------------------------------------------------------------------------- helpers

_SESSION = boto3.session.Session(
    aws_access_key_id="AKIDFAULTPROXYTEST",
    aws_secret_access_key="secret",
    region_name="us-east-1",
)


def kinesis(url: str, *, read_timeout: float = 10.0, pool: int = 10) -> Any:
    return _SESSION.client(
        "kinesis",
        endpoint_url=url,
        config=Config(
            # Every fault must reach the test, not be retried away by boto3.  Config's
            # max_attempts counts *retries* (botocore turns max_attempts=1 into two
            # attempts, measured), total_max_attempts counts attempts: exactly one try.
            retries={"total_max_attempts": 1},
            connect_timeout=5,
            read_timeout=read_timeout,
            max_pool_connections=pool,
        ),
    )


@pytest.fixture(scope="module")
def direct(emulator_url: str) -> Iterator[Any]:
    """A client talking to the emulator itself: the ground truth of what is stored."""
    client = kinesis(emulator_url)
    yield client
    client.close()


@pytest.fixture
def stream(direct: Any) -> str:
    name = f"fp-{uuid.uuid4().hex[:12]}"
    direct.create_stream(StreamName=name, ShardCount=2)

    def active() -> bool:
        summary = direct.describe_stream_summary(StreamName=name)
        return bool(summary["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE")

    _wait_until(active, 20, f"stream {name} to become ACTIVE")
    return name


@pytest.fixture
def proxy(emulator_url: str) -> Iterator[FaultProxy]:
    with FaultProxy(emulator_url) as p:
        yield p


@pytest.fixture
def client(proxy: FaultProxy) -> Iterator[Any]:
    c = kinesis(proxy.url)
    yield c
    c.close()


def stored(direct: Any, stream: str) -> list[bytes]:
    """Every record data blob in the stream, read from the emulator (not the proxy)."""
    out: list[bytes] = []
    shards = direct.list_shards(StreamName=stream)["Shards"]
    for shard in shards:
        it = direct.get_shard_iterator(
            StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        while it:
            page = direct.get_records(ShardIterator=it, Limit=10000)
            out.extend(r["Data"] for r in page["Records"])
            if not page["Records"]:
                break
            it = page.get("NextShardIterator")
    return out


def wait_stored(direct: Any, stream: str, expected: list[bytes], timeout_s: float = 10) -> None:
    want = sorted(expected)
    _wait_until(lambda: sorted(stored(direct, stream)) == want, timeout_s, "records stored")


def entries(prefix: str, n: int) -> list[dict[str, Any]]:
    return [{"Data": f"{prefix}-{i}".encode(), "PartitionKey": f"pk-{i}"} for i in range(n)]


def put(client: Any, stream: str, batch: list[dict[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = client.put_records(StreamName=stream, Records=batch)
    return result


# ------------------------------------------------------------------------- passthrough


def test_passthrough_without_faults(
    proxy: FaultProxy, client: Any, direct: Any, stream: str
) -> None:
    assert stream in client.list_streams()["StreamNames"]
    batch = entries("ok", 10)
    result = put(client, stream, batch)
    assert result["FailedRecordCount"] == 0
    assert all("SequenceNumber" in r and "ShardId" in r for r in result["Records"])
    wait_stored(direct, stream, [e["Data"] for e in batch])

    # Upstream errors pass through unchanged (status and __type).
    with pytest.raises(ClientError) as err:
        client.describe_stream(StreamName="no-such-stream")
    assert err.value.response["Error"]["Code"] == "ResourceNotFoundException"
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400

    snap = proxy.stats.snapshot()
    assert snap["requests"] == 3
    assert snap["put_records_requests"] == 1
    assert snap["forwarded"] == 3
    assert snap["faults_injected"] == 0


def test_start_is_idempotent_and_restart_keeps_url(emulator_url: str) -> None:
    p = FaultProxy(emulator_url)
    with pytest.raises(RuntimeError):
        _ = p.url
    url = p.start()
    assert p.start() == url == p.url
    assert url.startswith("http://127.0.0.1:")
    p.stop()
    p.stop()  # idempotent too
    assert not p.running
    # A stopped proxy refuses connections: a simulated outage.
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=2)
    assert p.start() == url  # same port, so a producer configured with it reconnects
    c = kinesis(url)
    try:
        c.list_streams()
    finally:
        c.close()
        p.stop()


# --------------------------------------------------------------------- entry faults


def test_partial_failure_entries_are_not_stored(
    proxy: FaultProxy, client: Any, direct: Any, stream: str
) -> None:
    proxy.set_plan(FaultPlan(partial_failure=0.5, seed=42))
    batch = entries("pf", 40)
    result = put(client, stream, batch)

    failed = [i for i, r in enumerate(result["Records"]) if "ErrorCode" in r]
    ok = [i for i, r in enumerate(result["Records"]) if "ErrorCode" not in r]
    assert 0 < len(failed) < len(batch)
    assert result["FailedRecordCount"] == len(failed)
    assert len(result["Records"]) == len(batch)
    for i in failed:
        assert result["Records"][i]["ErrorCode"] == "ProvisionedThroughputExceededException"
        assert result["Records"][i]["ErrorMessage"].startswith("Rate exceeded for shard")
        assert stream in result["Records"][i]["ErrorMessage"]
    for i in ok:
        assert result["Records"][i]["SequenceNumber"]
        assert result["Records"][i]["ShardId"].startswith("shardId-")

    # Exactly the successful entries are stored; the failed ones really are not.
    wait_stored(direct, stream, [batch[i]["Data"] for i in ok])
    snap = proxy.stats.snapshot()
    assert snap["entries_failed_injected"] == len(failed)
    assert snap["entries_forwarded"] == len(ok)

    # Retrying only the failed entries (what a producer does) completes the set.
    proxy.set_plan(FaultPlan())
    retry = put(client, stream, [batch[i] for i in failed])
    assert retry["FailedRecordCount"] == 0
    wait_stored(direct, stream, [e["Data"] for e in batch])


def test_partial_failure_is_reproducible_per_seed(
    proxy: FaultProxy, client: Any, stream: str
) -> None:
    def failed_positions(seed: int) -> list[int]:
        proxy.set_plan(FaultPlan(partial_failure=0.3, seed=seed))
        result = put(client, stream, entries("seed", 30))
        return [i for i, r in enumerate(result["Records"]) if "ErrorCode" in r]

    first = failed_positions(7)
    assert first == failed_positions(7)
    assert first != failed_positions(8)


def test_partial_failure_code_is_configurable(
    proxy: FaultProxy, client: Any, direct: Any, stream: str
) -> None:
    proxy.set_plan(FaultPlan(partial_failure=1.0, partial_failure_code="InternalFailure"))
    forwarded_before = proxy.stats["forwarded"]
    result = put(client, stream, entries("if", 5))
    assert result["FailedRecordCount"] == 5
    assert {r["ErrorCode"] for r in result["Records"]} == {"InternalFailure"}
    # All entries failed: nothing to send upstream (an empty Records list is invalid).
    assert proxy.stats["forwarded"] == forwarded_before
    assert stored(direct, stream) == []


def test_entry_error_code_fails_every_entry(
    proxy: FaultProxy, client: Any, direct: Any, stream: str
) -> None:
    proxy.set_plan(FaultPlan(entry_error_code="KMSAccessDeniedException"))
    result = put(client, stream, entries("kms", 4))
    assert result["FailedRecordCount"] == 4
    assert [r["ErrorCode"] for r in result["Records"]] == ["KMSAccessDeniedException"] * 4
    assert all(r["ErrorMessage"] for r in result["Records"])
    assert stored(direct, stream) == []
    assert proxy.stats["entries_failed_injected"] == 4


# ------------------------------------------------------------------- request faults


@pytest.mark.parametrize(
    ("field", "plan", "status", "code"),
    [
        ("http_500", FaultPlan(http_500=1.0), 500, "InternalFailure"),
        ("http_503", FaultPlan(http_503=1.0), 503, "ServiceUnavailable"),
    ],
)
def test_http_errors_store_nothing(
    proxy: FaultProxy,
    client: Any,
    direct: Any,
    stream: str,
    field: str,
    plan: FaultPlan,
    status: int,
    code: str,
) -> None:
    proxy.set_plan(plan)
    with pytest.raises(ClientError) as err:
        put(client, stream, entries(field, 3))
    assert err.value.response["Error"]["Code"] == code
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
    snap = proxy.stats.snapshot()
    assert snap[field] == 1
    assert snap["forwarded"] == 0
    assert stored(direct, stream) == []


def test_error_after_forward_stores_records(
    proxy: FaultProxy, client: Any, direct: Any, stream: str
) -> None:
    proxy.set_plan(FaultPlan(error_after_forward=1.0))
    batch = entries("eaf", 3)
    with pytest.raises(ClientError) as err:
        put(client, stream, batch)
    assert err.value.response["Error"]["Code"] == "InternalFailure"
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    wait_stored(direct, stream, [e["Data"] for e in batch])
    assert proxy.stats["error_after_forward"] == 1


def test_drop_before_answer_stores_and_client_sees_connection_error(
    proxy: FaultProxy, client: Any, direct: Any, stream: str
) -> None:
    proxy.set_plan(FaultPlan(drop_before_answer=1.0))
    batch = entries("dba", 3)
    with pytest.raises(ConnectionClosedError):
        put(client, stream, batch)
    wait_stored(direct, stream, [e["Data"] for e in batch])
    assert proxy.stats["dropped_before_answer"] == 1
    # The proxy itself is fine afterwards.
    proxy.set_plan(FaultPlan())
    assert put(client, stream, entries("after", 1))["FailedRecordCount"] == 0


def test_drop_before_forward_stores_nothing(
    proxy: FaultProxy, client: Any, direct: Any, stream: str
) -> None:
    proxy.set_plan(FaultPlan(drop_before_forward=1.0))
    with pytest.raises(ConnectionClosedError):
        put(client, stream, entries("dbf", 3))
    snap = proxy.stats.snapshot()
    assert snap["dropped_before_forward"] == 1
    assert snap["forwarded"] == 0
    assert stored(direct, stream) == []


def test_delay_exceeds_client_read_timeout(proxy: FaultProxy, direct: Any, stream: str) -> None:
    proxy.set_plan(FaultPlan(delay_s=3.0, delay_probability=1.0))
    slow_client = kinesis(proxy.url, read_timeout=0.5)
    batch = entries("delay", 3)
    try:
        started = time.monotonic()
        with pytest.raises(ReadTimeoutError):
            put(slow_client, stream, batch)
        assert time.monotonic() - started < 2.5
    finally:
        slow_client.close()
    # The delay happens after forwarding: the records are stored even though the client
    # gave up (so its retry makes duplicates, not loss).
    wait_stored(direct, stream, [e["Data"] for e in batch])
    assert proxy.stats["delayed"] == 1


def test_delayed_requests_run_concurrently(proxy: FaultProxy, direct: Any, stream: str) -> None:
    proxy.set_plan(FaultPlan(delay_s=0.5, delay_probability=1.0))
    n = 32
    c = kinesis(proxy.url, pool=n)
    try:
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=n) as pool:
            results = list(pool.map(lambda i: put(c, stream, entries(f"conc{i}", 5)), range(n)))
        elapsed = time.monotonic() - started
    finally:
        c.close()
    assert all(r["FailedRecordCount"] == 0 for r in results)
    assert elapsed < n * 0.5 / 4, f"requests were serialised: {elapsed:.1f}s"
    assert proxy.stats["delayed"] == n
    wait_stored(direct, stream, [f"conc{i}-{j}".encode() for i in range(n) for j in range(5)])


@pytest.mark.parametrize(
    "code",
    [
        "ValidationException",
        "AccessDeniedException",
        "KMSAccessDeniedException",
        "ResourceNotFoundException",
    ],
)
def test_fail_all_code(proxy: FaultProxy, client: Any, direct: Any, stream: str, code: str) -> None:
    proxy.set_plan(FaultPlan(fail_all_code=code))
    with pytest.raises(ClientError) as err:
        put(client, stream, entries("fa", 2))
    assert err.value.response["Error"]["Code"] == code
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    # Only PutRecords is affected by default.
    client.describe_stream_summary(StreamName=stream)
    assert proxy.stats["fail_all"] == 1
    assert stored(direct, stream) == []


def test_max_faults_stops_injecting(
    proxy: FaultProxy, client: Any, direct: Any, stream: str
) -> None:
    proxy.set_plan(FaultPlan(http_500=1.0, max_faults=2))
    outcomes: list[str] = []
    for i in range(4):
        try:
            put(client, stream, entries(f"mf{i}", 1))
            outcomes.append("ok")
        except ClientError as exc:
            outcomes.append(exc.response["Error"]["Code"])
    assert outcomes == ["InternalFailure", "InternalFailure", "ok", "ok"]
    wait_stored(direct, stream, [b"mf2-0", b"mf3-0"])

    # A new plan gets a fresh budget.
    proxy.set_plan(FaultPlan(fail_all_code="ValidationException", max_faults=1))
    with pytest.raises(ClientError):
        put(client, stream, entries("again", 1))
    put(client, stream, entries("again", 1))
    snap = proxy.stats.snapshot()
    assert snap["http_500"] == 2
    assert snap["fail_all"] == 1
    assert snap["faults_injected"] == 3


def test_max_faults_is_exact_under_concurrency(proxy: FaultProxy, direct: Any, stream: str) -> None:
    proxy.set_plan(FaultPlan(http_503=1.0, max_faults=5))
    n = 24
    c = kinesis(proxy.url, pool=n)

    def attempt(i: int) -> bool:
        try:
            put(c, stream, entries(f"mc{i}", 1))
            return True
        except ClientError:
            return False

    try:
        with ThreadPoolExecutor(max_workers=n) as pool:
            ok = list(pool.map(attempt, range(n)))
    finally:
        c.close()
    assert ok.count(False) == 5
    assert proxy.stats["http_503"] == 5
    wait_stored(direct, stream, [f"mc{i}-0".encode() for i in range(n) if ok[i]])


def test_plan_can_target_other_operations(proxy: FaultProxy, client: Any, stream: str) -> None:
    proxy.set_plan(FaultPlan(http_503=1.0, operations=("DescribeStreamSummary",)))
    with pytest.raises(ClientError) as err:
        client.describe_stream_summary(StreamName=stream)
    assert err.value.response["Error"]["Code"] == "ServiceUnavailable"
    # PutRecords is not in the plan's operations, so it passes.
    assert put(client, stream, entries("op", 1))["FailedRecordCount"] == 0
    client.list_streams()


def test_plan_change_while_running(proxy: FaultProxy, direct: Any, stream: str) -> None:
    """A producer keeps sending while the test flips the plan from another thread."""
    c = kinesis(proxy.url)
    stop = threading.Event()
    sent: list[bytes] = []
    errors: list[str] = []

    def produce() -> None:
        i = 0
        while not stop.is_set():
            batch = entries(f"run{i}", 1)
            i += 1
            try:
                if put(c, stream, batch)["FailedRecordCount"] == 0:
                    sent.append(batch[0]["Data"])
            except ClientError as exc:
                errors.append(exc.response["Error"]["Code"])

    worker = threading.Thread(target=produce)
    worker.start()
    try:
        _wait_until(lambda: len(sent) >= 3, 10, "some successful puts")
        proxy.set_plan(FaultPlan(http_500=1.0))
        _wait_until(lambda: len(errors) >= 3, 10, "injected errors")
        proxy.set_plan(FaultPlan())
        mark = len(sent)
        _wait_until(lambda: len(sent) >= mark + 3, 10, "recovery")
    finally:
        stop.set()
        worker.join(timeout=10)
        c.close()
    assert set(errors) == {"InternalFailure"}
    wait_stored(direct, stream, list(sent))


# -------------------------------------------------------- no emulator needed below


class _EchoHandler(BaseHTTPRequestHandler):
    """Upstream stand-in that answers with the headers and body it received."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        answer = json.dumps(
            {"headers": {k.lower(): v for k, v in self.headers.items()}, "body": body.decode()}
        ).encode()
        self.send_response(201)
        self.send_header("Content-Type", "application/x-test")
        self.send_header("X-Upstream", "yes")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass


def test_forwarding_keeps_headers_and_body() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EchoHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        upstream = f"http://127.0.0.1:{server.server_address[1]}"
        with FaultProxy(upstream) as p:
            body = b'{"StreamName": "s", "Limit": 1}'
            req = urllib.request.Request(
                p.url + "/",
                data=body,
                method="POST",
                headers={
                    "X-Amz-Target": "Kinesis_20131202.DescribeStream",
                    "Content-Type": "application/x-amz-json-1.1",
                    "Authorization": "AWS4-HMAC-SHA256 Credential=a/b, Signature=c",
                    "X-Amz-Date": "20240101T000000Z",
                    "User-Agent": "kingest-test",
                    "Connection": "close",
                },
            )
            with urllib.request.urlopen(req, timeout=10) as resp:
                assert resp.status == 201
                assert resp.headers["Content-Type"] == "application/x-test"
                assert resp.headers["X-Upstream"] == "yes"
                seen = json.loads(resp.read())
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    assert seen["body"] == body.decode()
    h = seen["headers"]
    assert h["x-amz-target"] == "Kinesis_20131202.DescribeStream"
    assert h["content-type"] == "application/x-amz-json-1.1"
    assert h["authorization"] == "AWS4-HMAC-SHA256 Credential=a/b, Signature=c"
    assert h["x-amz-date"] == "20240101T000000Z"
    assert h["user-agent"] == "kingest-test"
    assert h["host"] == f"127.0.0.1:{server.server_address[1]}"
    # urllib sends "identity" itself; aiohttp would have put "gzip, deflate" there.
    assert h["accept-encoding"] == "identity"


def test_unreachable_upstream_gives_502() -> None:
    with FaultProxy(f"http://127.0.0.1:{_free_port()}") as p:
        req = urllib.request.Request(
            p.url + "/",
            data=b"{}",
            method="POST",
            headers={"X-Amz-Target": "Kinesis_20131202.ListStreams"},
        )
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=10)
        assert err.value.code == 502
        assert json.loads(err.value.read())["__type"] == "InternalFailure"
        err.value.close()
        assert p.stats["upstream_errors"] == 1


def test_plan_validation() -> None:
    with pytest.raises(ValueError):
        FaultPlan(http_500=1.5)
    with pytest.raises(ValueError):
        FaultPlan(max_faults=-1)
    assert FaultPlan(operations=["PutRecords", "PutRecord"]).operations == (  # type: ignore[arg-type]
        "PutRecords",
        "PutRecord",
    )
