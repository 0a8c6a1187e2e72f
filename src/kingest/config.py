"""Validated settings of the producer (sources add theirs beside it)."""

from __future__ import annotations

import importlib.util
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from kingest.producer.limits import (
    MAX_RECORD_BYTES,
    PUT_RECORDS_MAX_BYTES,
    PUT_RECORDS_MAX_ENTRIES,
    SHARD_BYTES_PER_S,
    SHARD_RECORDS_PER_S,
)


class ProducerConfig(BaseModel):
    """How the producer buffers, batches, sends and retries. Every field has a safe default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_buffer_records: int = Field(
        100_000, ge=1, description="Records held in memory at most (buffered plus in flight)."
    )
    max_buffer_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024,
        description="Payload bytes held in memory at most (buffered plus in flight).",
    )
    on_buffer_full: Literal["block", "drop_newest"] = Field(
        "block",
        description=(
            "block: put() waits for room (sources slow down); drop_newest: the new record goes "
            "to the dead-letter queue with reason buffer_full and is counted."
        ),
    )
    aggregation: bool = Field(
        True,
        description=(
            "Pack records bound for the same shard into KPL-format aggregated records. "
            "Switched off by itself on streams that ignore partition keys."
        ),
    )
    compression: Literal["none", "gzip", "zstd"] = Field(
        "none", description="Compress each record's data before sending (consumers must know)."
    )
    wire_protocol: Literal["cbor", "json"] = Field(
        "cbor",
        description=(
            "Encoding of PutRecords requests: cbor carries record data as raw bytes, json as "
            "base64 (a third larger and slower to encode). Kinesis accepts both."
        ),
    )
    linger_ms: int = Field(
        100, ge=0, description="Longest a record waits for a fuller batch before it is sent."
    )
    max_request_records: int = Field(
        PUT_RECORDS_MAX_ENTRIES,
        ge=1,
        le=PUT_RECORDS_MAX_ENTRIES,
        description="Entries per PutRecords request.",
    )
    max_request_bytes: int = Field(
        PUT_RECORDS_MAX_BYTES,
        ge=1024,
        le=10 * 1024 * 1024,
        description="Bytes (data + partition keys) per PutRecords request; 10 MiB on new streams.",
    )
    max_record_bytes: int | None = Field(
        None,
        ge=1024,
        le=10 * 1024 * 1024,
        description=(
            "Largest record (data + partition key); None reads it from the stream "
            f"(MaxRecordSizeInKiB), else {MAX_RECORD_BYTES} bytes."
        ),
    )
    max_in_flight_requests: int = Field(
        8, ge=1, le=256, description="PutRecords requests in flight at once."
    )
    rate_limit: bool = Field(
        True, description="Keep each shard under its write limits to avoid throttling."
    )
    shard_bytes_per_s: int = Field(
        SHARD_BYTES_PER_S, ge=1, description="Per-shard write limit in bytes per second."
    )
    shard_records_per_s: int = Field(
        SHARD_RECORDS_PER_S,
        ge=1,
        description="Per-shard write limit in Kinesis records per second.",
    )
    record_ttl_ms: int = Field(
        300_000,
        ge=1,
        description="A record not accepted this long after put() goes to the dead-letter queue.",
    )
    request_timeout_ms: int = Field(
        30_000, ge=100, description="Limit on one PutRecords request, answer included."
    )
    connect_timeout_ms: int = Field(5_000, ge=100, description="Limit on opening a connection.")
    retry_base_ms: int = Field(
        100, ge=1, description="First backoff step; each failure doubles it (full jitter)."
    )
    retry_max_ms: int = Field(10_000, ge=1, description="Longest backoff between attempts.")
    strict_order: bool = Field(
        False,
        description=(
            "Keep per-shard order through retries: one Kinesis record in flight per shard, "
            "retried before anything after it."
        ),
    )
    dlq_dir: str = Field(
        "kingest-dlq", description="Directory of the dead-letter queue's JSON-lines files."
    )
    dlq_max_file_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="Size at which a dead-letter file is rotated."
    )

    @model_validator(mode="after")
    def _check_together(self) -> ProducerConfig:
        problems = []
        if self.retry_max_ms < self.retry_base_ms:
            problems.append("retry_max_ms must be at least retry_base_ms")
        if self.max_record_bytes is not None and self.max_record_bytes > self.max_request_bytes:
            problems.append("max_record_bytes cannot exceed max_request_bytes")
        if self.compression == "zstd" and importlib.util.find_spec("zstandard") is None:
            problems.append("compression zstd needs the zstandard package (pip install zstandard)")
        if problems:
            raise ValueError("; ".join(problems))
        return self
