"""PutRecords in CBOR and in JSON: both deliver every record, and either reads back the same."""

from __future__ import annotations

import os

import pytest

from kingest import Producer
from kingest.reader import read_all


@pytest.mark.parametrize("wire_protocol", ["cbor", "json"])
@pytest.mark.parametrize("aggregation", [True, False])
def test_every_record_reads_back_byte_for_byte(
    endpoint_url: str, stream_factory, tmp_path, wire_protocol: str, aggregation: bool
) -> None:
    stream = stream_factory(shards=2)
    # Binary payloads, and a full request of plain records (a large answer to decode).
    payloads = [os.urandom(40) + i.to_bytes(4, "big") for i in range(500)]
    with Producer(
        stream,
        endpoint_url=endpoint_url,
        dlq_dir=str(tmp_path / "dlq"),
        wire_protocol=wire_protocol,
        aggregation=aggregation,
        linger_ms=1_000,
    ) as producer:
        futures = [producer.put(p, partition_key=f"k{i % 13}") for i, p in enumerate(payloads)]
        producer.flush()
    assert all(f.result(0).delivered for f in futures)
    assert sorted(r.data for r in read_all(endpoint_url, stream, idle_s=1.0)) == sorted(payloads)
