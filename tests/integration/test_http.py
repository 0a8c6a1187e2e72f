"""The HTTP source end to end: real clients in, the embedded Kinesis endpoint out.

Concurrent clients, oversize bodies, bad tokens, bad JSON and a full buffer (made by a fault
proxy that refuses every PutRecords until healed), each answered as the contract says.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from kingest.agent.config import AgentConfig
from kingest.sources.http.source import HttpSource
from kingest.spool import Spool
from tests.agents import AgentProcess, InProcessAgent
from tests.faultproxy import FaultPlan, FaultProxy
from tests.helpers import free_port, read_stream, wait_until

pytestmark = pytest.mark.integration

TOKEN = "t0ken-" + uuid.uuid4().hex


def config(stream: str, tmp_path: Path, producer: dict[str, Any] | None = None,
           **fields: Any) -> AgentConfig:  # fmt: skip
    return AgentConfig.model_validate(
        {
            "stream": stream,
            "checkpoint_path": str(tmp_path / "checkpoints.db"),
            "producer": {"linger_ms": 20, "dlq_dir": str(tmp_path / "dlq"), **(producer or {})},
            "sources": [{"type": "http", "listen": "127.0.0.1:0", "token": TOKEN, **fields}],
        }
    )


class Server:
    """An agent whose one source is the HTTP source, and its address."""

    def __init__(self, agent_config: AgentConfig, endpoint_url: str) -> None:
        self.agent = InProcessAgent(agent_config, endpoint_url)

        def bound() -> bool:
            sources = self.agent.agent.sources
            return bool(sources) and getattr(sources[0][0], "bound_port", None) is not None

        wait_until(lambda: bound() or self.agent.error is not None, 30, "the server")
        if self.agent.error is not None:
            raise self.agent.error
        source = self.agent.agent.sources[0][0]
        assert isinstance(source, HttpSource)
        self.url = f"http://127.0.0.1:{source.bound_port}"

    def stop(self) -> None:
        self.agent.stop()


@pytest.fixture
def serve(endpoint_url: str) -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def start(agent_config: AgentConfig, endpoint: str | None = None) -> Server:
        server = Server(agent_config, endpoint or endpoint_url)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


Answer = tuple[int, dict[str, str], Any]


def post(
    url: str,
    body: bytes,
    content_type: str = "application/json",
    token: str | None = TOKEN,
    timeout: float = 30,
) -> Answer:
    async def go() -> Answer:
        headers = {"Content-Type": content_type}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        async with aiohttp.ClientSession() as session, session.post(
            f"{url}/v1/events", data=body, headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as response:  # fmt: skip
            return response.status, dict(response.headers), await response.json()

    return asyncio.run(go())


def test_concurrent_clients_every_event_answered_and_stored(
    serve: Callable[..., Server], stream_factory: Callable[..., str], endpoint_url: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    stream = stream_factory(shards=2)
    server = serve(config(stream, tmp_path))
    clients, requests, per_request = 64, 4, 25

    async def client(number: int, session: aiohttp.ClientSession) -> list[dict[str, Any]]:
        answers = []
        for request in range(requests):
            events = [{"id": f"{number}-{request}-{i}", "user_id": f"u{number}"}
                      for i in range(per_request)]  # fmt: skip
            if request % 2:
                body = b"\n".join(orjson.dumps(e) for e in events)
                content_type = "application/x-ndjson"
            else:
                body, content_type = orjson.dumps(events), "application/json"
            async with session.post(
                f"{server.url}/v1/events", data=body,
                headers={"Content-Type": content_type, "Authorization": f"Bearer {TOKEN}"},
            ) as response:  # fmt: skip
                assert response.status == 200
                answers.append(await response.json())
        return answers

    async def run_all() -> list[list[dict[str, Any]]]:
        async with aiohttp.ClientSession() as session:
            return await asyncio.gather(*(client(n, session) for n in range(clients)))

    answers = [answer for per_client in asyncio.run(run_all()) for answer in per_client]
    assert all(a["accepted"] == per_request and a["failed"] == 0 for a in answers)
    assert all([r["index"] for r in a["results"]] == list(range(per_request)) for a in answers)
    stored = [orjson.loads(r.data) for r in read_stream(endpoint_url, stream)]
    assert len(stored) == clients * requests * per_request
    assert len({e["id"] for e in stored}) == len(stored)
    assert all(e["source"] == "app_events" and "ingestion_timestamp" in e for e in stored)


def test_tokens_sizes_types_and_bad_json(
    serve: Callable[..., Server], stream_factory: Callable[..., str], tmp_path: Path,
) -> None:  # fmt: skip
    server = serve(config(stream_factory(), tmp_path, max_body_bytes=4096))
    status, headers, body = post(server.url, b'{"a": 1}', token=None)
    assert status == 401 and "Bearer" in headers["WWW-Authenticate"]
    assert post(server.url, b'{"a": 1}', token="wrong")[0] == 401
    status, _, body = post(server.url, orjson.dumps([{"pad": "x" * 5000}]))
    assert status == 413 and "4096" in body["error"]
    status, _, body = post(server.url, b'{"a": 1}\n{"b": }\n', "application/x-ndjson")
    assert status == 400 and body["error"].startswith("line 2:")
    assert post(server.url, b"a=1", "application/x-www-form-urlencoded")[0] == 415
    status, _, body = post(server.url, b'[{"a": 1}, "no"]')
    assert status == 200 and body["accepted"] == 1 and body["failed"] == 1
    assert body["results"][1]["status"] == "rejected"

    async def health() -> int:
        async with aiohttp.ClientSession() as session, session.get(f"{server.url}/health") as r:
            return r.status

    assert asyncio.run(health()) == 200


def test_a_full_buffer_is_answered_503_with_retry_after_never_dropped(
    serve: Callable[..., Server], stream_factory: Callable[..., str], endpoint_url: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    stream = stream_factory()
    with FaultProxy(endpoint_url, FaultPlan(http_503=1.0)) as proxy:
        server = serve(
            config(stream, tmp_path, producer={"max_buffer_records": 20}, admission_timeout_s=0.2),
            proxy.url,
        )
        first: list[Any] = []
        events = [{"id": f"a{i}"} for i in range(20)]
        waiter = threading.Thread(
            target=lambda: first.append(post(server.url, orjson.dumps(events)))
        )
        waiter.start()  # fills the buffer; answered once Kinesis takes the events
        producer = next(iter(server.agent.agent.producers.values()))
        wait_until(lambda: producer.stats()["queue_size"] >= 20, 30, "a full buffer")
        status, headers, body = post(server.url, orjson.dumps([{"id": "b0"}, {"id": "b1"}]))
        assert status == 503 and headers["Retry-After"] == "1"
        assert [r["status"] for r in body["results"]] == ["rejected", "rejected"]
        assert body["results"][0]["error"] == "buffer full"
        assert not first, "the first request waits for its events to be safe"
        proxy.set_plan(FaultPlan())
        waiter.join(60)
    status, _, body = first[0]
    assert status == 200 and body["accepted"] == 20
    stored = {orjson.loads(r.data)["id"] for r in read_stream(endpoint_url, stream)}
    assert stored == {f"a{i}" for i in range(20)}


def test_buffered_acknowledgement_answers_202(
    serve: Callable[..., Server], stream_factory: Callable[..., str], endpoint_url: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    stream = stream_factory()
    server = serve(config(stream, tmp_path, ack="buffered"))
    status, _, body = post(server.url, b'{"id": "x"}')
    assert status == 202 and body["results"] == [{"index": 0, "status": "accepted"}]
    wait_until(lambda: len(read_stream(endpoint_url, stream)) == 1, 30, "the event")


def test_the_command_serves_until_sigterm_and_exits_zero(
    stream_factory: Callable[..., str], endpoint_url: str, tmp_path: Path,
    agents: Callable[[list[str], Path], AgentProcess],
) -> None:  # fmt: skip
    stream = stream_factory()
    token_file = tmp_path / "token"
    token_file.write_text(f"  {TOKEN}\n")
    port = free_port()
    agent = agents(
        ["http", "--listen", f"127.0.0.1:{port}", "--stream", stream,
         "--token-file", str(token_file), "--endpoint-url", endpoint_url],
        tmp_path,
    )  # fmt: skip

    def answers() -> bool:
        try:
            return post(f"http://127.0.0.1:{port}", b'{"id": 1}', timeout=5)[0] == 200
        except aiohttp.ClientError:
            return False

    wait_until(answers, 30, "the first answer")
    assert agent.stop(signal.SIGTERM) == 0, agent.stderr
    assert "1 accepted" in agent.stderr
    assert TOKEN not in agent.stderr


def test_http_senders_are_told_which_events_break_the_schema(
    serve: Callable[..., Server], stream_factory: Any, endpoint_url: str, tmp_path: Path
) -> None:
    stream = stream_factory(shards=1)
    config = AgentConfig.model_validate(
        {
            "stream": stream,
            "checkpoint_path": str(tmp_path / "checkpoints.db"),
            "producer": {"linger_ms": 10, "dlq_dir": str(tmp_path / "dlq")},
            "sources": [
                {
                    "type": "http",
                    "listen": "127.0.0.1:0",
                    "token": TOKEN,
                    "schema": {"name": "app_events"},
                }
            ],
        }
    )
    server = serve(config)
    good = {"event_type": "page_view", "user_id": "u1", "timestamp": "2026-12-07T10:00:00Z"}
    bad = {"event_type": 12, "user_id": "u2"}
    status, _, body = post(server.url, orjson.dumps([good, bad]))
    assert status == 200, body
    assert body["results"][0]["status"] == "accepted"
    rejected = body["results"][1]
    assert rejected["status"] == "rejected"
    assert rejected["error"].startswith("breaks schema app_events/v")
    assert "$.event_type" in rejected["error"]
    assert body["accepted"] == 1 and body["failed"] == 1


def test_spooled_events_answered_202_survive_a_crash(
    stream_factory: Callable[..., str], endpoint_url: str, tmp_path: Path,
    agents: Callable[[list[str], Path], AgentProcess],
) -> None:  # fmt: skip
    """ack: spooled: a 202 means on disk. Kinesis refuses everything, the agent is killed, and
    the restarted agent sends every answered event, once; a clean stop then leaves nothing."""
    stream = stream_factory(shards=2)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    port = free_port()
    spool = tmp_path / "spool"

    def command(endpoint: str) -> list[str]:
        return ["http", "--listen", f"127.0.0.1:{port}", "--stream", stream,
                "--token-file", str(token_file), "--endpoint-url", endpoint,
                "--ack", "spooled", "--spool-dir", str(spool), "--linger-ms", "20"]  # fmt: skip

    def answered(body: bytes) -> int:
        try:
            return post(f"http://127.0.0.1:{port}", body, "application/x-ndjson", timeout=10)[0]
        except aiohttp.ClientError:
            return 0

    with FaultProxy(endpoint_url, FaultPlan(http_503=1.0)) as refusing:
        agent = agents(command(refusing.url), tmp_path)
        wait_until(lambda: answered(b"") in (202, 400), 30, "the server")
        for batch in range(5):
            body = b"\n".join(orjson.dumps({"id": f"e{batch}-{i}"}) for i in range(20))
            assert answered(body) == 202
        assert not read_stream(endpoint_url, stream)
        agent.kill()  # SIGKILL: what was answered 202 is only on disk

    restarted = agents(command(endpoint_url), tmp_path)
    expected = {f"e{batch}-{i}" for batch in range(5) for i in range(20)}

    def ids() -> list[str]:
        return [orjson.loads(r.data)["id"] for r in read_stream(endpoint_url, stream)]

    wait_until(lambda: set(ids()) >= expected, 60, "the spooled events")
    assert restarted.stop(signal.SIGTERM) == 0, restarted.stderr
    assert sorted(ids()) == sorted(expected), "an event was sent twice or lost"
    assert "Sending events spooled before a stop" in restarted.stderr
    # Everything is delivered and committed: a clean stop leaves no event to send again.
    left = Spool(spool)
    try:
        assert list(left.pending()) == []
    finally:
        left.close()


def test_spooled_requests_get_503_when_the_producer_stays_behind(
    serve: Callable[..., Server], stream_factory: Callable[..., str], endpoint_url: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    stream = stream_factory()
    spooled = config(
        stream, tmp_path, producer={"max_buffer_records": 5, "record_ttl_ms": 600_000},
        ack="spooled", spool_dir=str(tmp_path / "spool"), max_queued_events=10,
        admission_timeout_s=0.2,
    )  # fmt: skip
    with FaultProxy(endpoint_url, FaultPlan(http_503=1.0)) as refusing:
        server = serve(spooled, refusing.url)
        statuses = []
        for batch in range(10):
            body = b"\n".join(orjson.dumps({"id": f"b{batch}-{i}"}) for i in range(5))
            status, headers, answer = post(server.url, body, "application/x-ndjson")
            statuses.append(status)
            if status == 503:
                assert headers["Retry-After"] == "1"
                assert {r["status"] for r in answer["results"]} == {"rejected"}
                break
        assert statuses[0] == 202 and statuses[-1] == 503, statuses
        accepted = 5 * (len(statuses) - 1)

        def spooled() -> float:
            families = {f.name: f for f in server.agent.agent.registry.collect()}
            return families["kingest_source_spooled_events"].value(source="app_events")

        assert spooled() == accepted
        refusing.set_plan(FaultPlan())
        wait_until(lambda: len(read_stream(endpoint_url, stream)) == accepted, 60, "the events")
        # Delivered, then committed: the spool's backlog goes back to nothing.
        wait_until(lambda: spooled() == 0, 30, "the spool to be committed")
