"""Schema validation in a running agent: invalid records dead-lettered with every violation,
or flagged; valid ones stamped; counted in the metrics. (HTTP senders are told per event:
see test_http.py.)"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from kingest.agent.config import AgentConfig
from kingest.errors import ConfigError
from kingest.record import DlqReason
from tests.agents import InProcessAgent
from tests.helpers import dlq_entries, read_stream, wait_until

pytestmark = pytest.mark.integration

ORDERS_V1 = {
    "type": "object",
    "required": ["order_id", "amount"],
    "properties": {
        "order_id": {"type": "integer"},
        "amount": {"type": "number", "minimum": 0},
        "currency": {"enum": ["EUR", "USD", "KRW"]},
    },
}


def agent_config(stream: str, tmp_path: Path, schema: dict[str, Any]) -> AgentConfig:
    schemas = tmp_path / "schemas"
    schemas.mkdir(exist_ok=True)
    (schemas / "orders.v1.json").write_text(json.dumps(ORDERS_V1))
    return AgentConfig.model_validate(
        {
            "stream": stream,
            "checkpoint_path": str(tmp_path / "checkpoints.db"),
            "schema_paths": [str(schemas)],
            "producer": {"linger_ms": 10, "dlq_dir": str(tmp_path / "dlq")},
            "sources": [
                {
                    "type": "file",
                    "name": "orders",
                    "paths": [str(tmp_path / "orders.jsonl")],
                    "format": "json",
                    "from": "beginning",
                    "schema": schema,
                }
            ],
        }
    )


LINES = [
    {"order_id": 1, "amount": 9.5, "currency": "EUR", "source": "checkout"},
    {"order_id": "two", "amount": -1, "currency": "GBP"},  # three violations
    {"amount": 3},  # order_id missing
    {"order_id": 4, "amount": 0},
]


def run_until(
    config: AgentConfig, endpoint_url: str, done: Callable[[InProcessAgent], bool]
) -> InProcessAgent:
    running = InProcessAgent(config, endpoint_url)
    try:
        wait_until(lambda: done(running) or running.error is not None, 30, "the records")
    finally:
        running.stop()
    return running


def test_invalid_records_go_to_the_dlq_with_every_violation(
    endpoint_url: str, stream_factory: Any, tmp_path: Path
) -> None:
    stream = stream_factory(shards=1)
    (tmp_path / "orders.jsonl").write_text("".join(json.dumps(line) + "\n" for line in LINES))
    config = agent_config(stream, tmp_path, {"name": "orders", "stamp": True})

    def settled(running: InProcessAgent) -> bool:
        stats = running.agent.stats()["streams"]
        return bool(stats) and stats[stream]["total_sent"] + stats[stream]["total_failed"] == 4

    running = run_until(config, endpoint_url, settled)
    sent = [orjson.loads(r.data) for r in read_stream(endpoint_url, stream)]
    assert sorted(r["order_id"] for r in sent) == [1, 4]
    assert all(r["schema_id"] == "orders/v1" and r["schema_version"] == 1 for r in sent)
    # The line's own `source` is kept aside; the record names the kingest source.
    first = next(r for r in sent if r["order_id"] == 1)
    assert (first["source"], first["origin"]) == ("orders", "checkout")
    entries = sorted(dlq_entries(tmp_path / "dlq"), key=lambda e: e.error_message or "")
    assert [e.reason for e in entries] == [DlqReason.INVALID_RECORD] * 2
    messages = [e.error_message or "" for e in entries]
    assert messages[0].startswith("breaks schema orders/v1 (1 violation): $:")
    assert "order_id" in messages[0]
    three = messages[1]
    assert three.startswith("breaks schema orders/v1 (3 violations): ")
    for path in ("$.amount", "$.currency", "$.order_id"):
        assert path in three
    assert all(e.source == "orders" for e in entries)
    stats = running.agent.stats()["sources"]["orders"]
    assert stats["invalid_by_reason"] == {"invalid_record": 2}
    assert stats["parsed"] == 2
    families = {f.name: f for f in running.agent.registry.collect()}
    assert (
        families["kingest_dlq_records_total"].value(source="orders", reason="invalid_record") == 2
    )
    invalid = families["kingest_source_invalid_records_total"]
    assert invalid.value(source="orders", reason="invalid_record") == 2


def test_flagged_records_are_sent_with_their_violations(
    endpoint_url: str, stream_factory: Any, tmp_path: Path
) -> None:
    stream = stream_factory(shards=1)
    (tmp_path / "orders.jsonl").write_text("".join(json.dumps(line) + "\n" for line in LINES))
    config = agent_config(stream, tmp_path, {"name": "orders", "version": 1, "on_invalid": "flag"})

    def settled(running: InProcessAgent) -> bool:
        stats = running.agent.stats()["streams"]
        return bool(stats) and stats[stream]["total_sent"] == 4

    run_until(config, endpoint_url, settled)
    sent = {str(r["order_id"]) if "order_id" in r else "none": r for r in (
        orjson.loads(record.data) for record in read_stream(endpoint_url, stream)
    )}  # fmt: skip
    assert "schema_violations" not in sent["1"]
    assert len(sent["two"]["schema_violations"]) == 3
    assert sent["none"]["schema_violations"][0].startswith("$:")
    assert "schema_id" not in sent["1"]
    assert not dlq_entries(tmp_path / "dlq")


def test_an_unknown_schema_stops_the_agent_before_it_reads(
    endpoint_url: str, stream_factory: Any, tmp_path: Path
) -> None:
    config = agent_config(stream_factory(shards=1), tmp_path, {"name": "orders", "version": 7})
    running = InProcessAgent(config, endpoint_url)
    with pytest.raises(ConfigError, match=r"source orders: schema: .*orders.*1"):
        running.stop()
