"""Metrics after a known workload: the numbers a dashboard shows must be the true ones.

A producer sends through the fault proxy, so some records are throttled and retried and some
refused for good; the metrics must count each record once, as accepted or dead-lettered, and
the retries beside them. An agent serves the same families over HTTP on ``/metrics``.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kingest.agent.config import AgentConfig
from kingest.metrics.prometheus import render
from kingest.metrics.registry import MetricFamily
from kingest.producer.producer import Producer
from kingest.record import DlqReason
from tests.agents import AgentProcess, InProcessAgent
from tests.faultproxy import FaultPlan, FaultProxy
from tests.helpers import free_port, ids_read, make_payload, read_stream, wait_until

pytestmark = pytest.mark.integration

FAST = {"linger_ms": 10, "retry_base_ms": 20, "retry_max_ms": 200, "request_timeout_ms": 2000}
THROTTLED = "ProvisionedThroughputExceededException"


def by_name(families: list[MetricFamily]) -> dict[str, MetricFamily]:
    return {family.name: family for family in families}


def test_a_partly_failed_workload_is_counted_once_per_record(
    endpoint_url: str, stream_factory: Any, tmp_path: Path
) -> None:
    stream = stream_factory(shards=2)
    run_id = uuid.uuid4().hex
    with FaultProxy(endpoint_url) as proxy:
        producer = Producer(
            stream, endpoint_url=proxy.url, dlq_dir=str(tmp_path), aggregation=False, **FAST
        )
        try:
            # Throttled entries first: retried, then accepted.
            proxy.set_plan(FaultPlan(partial_failure=0.5, max_faults=4, seed=1))
            futures = [
                (producer.put(make_payload(run_id, i), f"k{i % 13}", source="orders"), "orders")
                for i in range(200)
            ]
            producer.flush(timeout=30)
            # Then one request with entries refused for good: dead-lettered, never retried.
            proxy.set_plan(
                FaultPlan(
                    partial_failure=0.4,
                    partial_failure_code="KMSAccessDeniedException",
                    max_faults=1,
                    seed=2,
                )
            )
            for i in range(200, 300):
                source = "orders" if i % 2 else "clicks"
                futures.append(
                    (producer.put(make_payload(run_id, i), f"k{i % 13}", source=source), source)
                )
            producer.flush(timeout=30)
            families = by_name(producer.metrics())
            stats = producer.stats()
        finally:
            producer.close(timeout=20)

    delivered: Counter[str] = Counter()
    dead: Counter[str] = Counter()
    for future, source in futures:
        result = future.result(0)
        if result.delivered:
            delivered[source] += 1
        else:
            assert result.reason is DlqReason.NON_RETRYABLE_ERROR
            dead[source] += 1
    assert sum(dead.values()) > 0, "the plan refused no entry: the test proves nothing"
    assert sum(delivered.values()) + sum(dead.values()) == 300

    accepted = families["kingest_producer_accepted_records_total"]
    dlq = families["kingest_dlq_records_total"]
    for source in ("orders", "clicks"):
        # A dead-lettered record is never counted as processed.
        assert accepted.value(source=source) == delivered[source]
        assert dlq.value(source=source, reason="non_retryable_error") == dead[source]
        assert families["kingest_producer_put_records_total"].value(source=source) == (
            delivered[source] + dead[source]
        )
        latency = families["kingest_source_delivery_latency_seconds"]
        count = [
            s.value
            for s in latency.samples
            if s.name.endswith("_count") and s.label("source") == source
        ]
        assert count == [delivered[source]]

    retried = families["kingest_producer_retried_records_total"]
    retried_orders = retried.value(source="orders", error_code=THROTTLED)
    assert retried_orders > 0
    assert retried_orders == stats["by_source"]["orders"]["retried"]
    assert families["kingest_producer_throttled_records_total"].value(source="orders") == (
        retried_orders
    )
    assert retried.value(error_code="KMSAccessDeniedException") == 0

    total = sum(delivered.values())
    ack = families["kingest_producer_ack_latency_seconds"]
    assert [s.value for s in ack.samples if s.name.endswith("_count")] == [total]
    assert families["kingest_producer_buffered_records"].value() == 0
    assert families["kingest_producer_shard_records_total"].value(stream=stream) == total
    # Plain records: one Kinesis record per user record.
    assert families["kingest_producer_kinesis_records_total"].value(stream=stream) == total
    # What the stream holds is what the metrics say was accepted.
    assert len(set(ids_read(read_stream(endpoint_url, stream)))) == total

    text = render(families.values())
    assert (
        f'kingest_producer_accepted_records_total{{source="orders"}} {delivered["orders"]}\n'
        in (text)
    )
    assert (
        f'kingest_dlq_records_total{{source="clicks",reason="non_retryable_error"}} '
        f"{dead['clicks']}\n"
    ) in text


def scrape(port: int) -> dict[str, float]:
    """Every sample of ``/metrics`` as ``name{labels}`` -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = answer.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            samples[series] = float(value)
    return samples


def test_an_agent_serves_its_metrics_and_health(
    endpoint_url: str, stream_factory: Any, tmp_path: Path
) -> None:
    stream = stream_factory(shards=1)
    log = tmp_path / "access.log"
    good = [
        f'10.0.0.{i % 250} - - [26/May/2024:10:30:00 +0000] "GET /p/{i} HTTP/1.1" 200 {i}\n'
        for i in range(30)
    ]
    log.write_text("".join(good) + "not a log line\n" * 3)
    config = AgentConfig.model_validate(
        {
            "stream": stream,
            "checkpoint_path": str(tmp_path / "checkpoints.db"),
            "producer": {"dlq_dir": str(tmp_path / "dlq"), "linger_ms": 10},
            "metrics": {"address": "127.0.0.1:0"},
            "sources": [
                {
                    "type": "file",
                    "name": "web",
                    "paths": [str(log)],
                    "format": "common",
                    "from": "beginning",
                }
            ],
        }
    )
    running = InProcessAgent(config, endpoint_url)
    try:
        server = running.agent.metrics_server
        assert server is not None and server.port > 0
        port = server.port
        accepted = 'kingest_producer_accepted_records_total{source="web"}'
        wait_until(lambda: scrape(port).get(accepted) == 30, 30, "30 records accepted")
        samples = scrape(port)
        assert samples['kingest_source_received_records_total{source="web"}'] == 33
        assert samples['kingest_source_parsed_records_total{source="web"}'] == 30
        assert (
            samples['kingest_source_invalid_records_total{source="web",reason="invalid_input"}']
            == 3
        )
        assert samples['kingest_dlq_records_total{source="web",reason="invalid_input"}'] == 3
        assert samples["kingest_producer_buffered_records"] == 0
        assert samples['kingest_producer_ack_latency_seconds_bucket{le="+Inf"}'] == 30
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as answer:
            health = json.load(answer)
        assert health["status"] == "running"
        assert "web" in health["sources"]
    finally:
        running.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_a_taken_metrics_address_stops_the_agent_with_a_clear_error(
    endpoint_url: str, stream_factory: Any, tmp_path: Path
) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = AgentConfig.model_validate(
            {
                "stream": stream_factory(shards=1),
                "checkpoint_path": str(tmp_path / "checkpoints.db"),
                "producer": {"dlq_dir": str(tmp_path / "dlq")},
                "metrics": {"address": f"127.0.0.1:{port}"},
                "sources": [
                    {
                        "type": "file",
                        "name": "web",
                        "paths": [str(tmp_path / "x.log")],
                        "format": "common",
                    }
                ],
            }
        )
        running = InProcessAgent(config, endpoint_url)
        with pytest.raises(Exception, match=re.escape(f"cannot serve metrics on 127.0.0.1:{port}")):
            running.stop()


def test_tail_serves_metrics_and_logs_json(
    agents: Callable[[list[str], Path], AgentProcess],
    endpoint_url: str,
    stream_factory: Any,
    tmp_path: Path,
) -> None:
    stream = stream_factory(shards=1)
    log = tmp_path / "access.log"
    log.write_text(
        "".join(
            f'10.0.0.1 - - [26/May/2024:10:30:00 +0000] "GET /{i} HTTP/1.1" 200 1\n'
            for i in range(25)
        )
    )
    port = free_port()
    agent = agents(
        [
            "--log-style",
            "json",
            "--log-level",
            "INFO",
            "tail",
            "--path",
            str(log),
            "--format",
            "common",
            "--from",
            "beginning",
            "--stream",
            stream,
            "--endpoint-url",
            endpoint_url,
            "--metrics-address",
            f"127.0.0.1:{port}",
        ],
        tmp_path,
    )

    def accepted() -> float | None:
        try:
            return scrape(port).get('kingest_producer_accepted_records_total{source="web_logs"}')
        except OSError:
            return None

    wait_until(lambda: accepted() == 25 or agent.process.poll() is not None, 60, "25 accepted")
    assert agent.stop() == 0, agent.stderr
    documents = [json.loads(line) for line in agent.stderr.splitlines() if line.startswith("{")]
    running = [d for d in documents if d["message"] == "The agent is running."]
    assert running and running[0]["sources"] == ["web_logs"], agent.stderr
    assert all({"ts", "level", "logger", "message"} <= set(d) for d in documents)


def test_time_spent_waiting_for_buffer_room_is_counted(
    endpoint_url: str, stream_factory: Any, tmp_path: Path
) -> None:
    stream = stream_factory(shards=1)
    run_id = uuid.uuid4().hex
    with Producer(
        stream,
        endpoint_url=endpoint_url,
        dlq_dir=str(tmp_path),
        max_buffer_records=5,
        linger_ms=50,
    ) as producer:
        for i in range(40):
            producer.put(make_payload(run_id, i), "k", source="slow")
        producer.flush(timeout=30)
        families = by_name(producer.metrics())
    assert families["kingest_producer_accepted_records_total"].value(source="slow") == 40
    # Five records fit; later puts waited for requests to end.
    assert families["kingest_producer_blocked_seconds_total"].value(source="slow") > 0
