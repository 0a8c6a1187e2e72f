"""kingest: collect events from many sources and deliver them into Amazon Kinesis Data Streams.

The public API::

    from kingest import Producer
    with Producer("my-stream") as producer:
        producer.put({"event": "signup"}, partition_key="user-42", source="app_events")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kingest.config import ProducerConfig
    from kingest.dlq import DeadLetterQueue, DlqEntry
    from kingest.errors import (
        BufferFullError,
        ConfigError,
        CredentialsError,
        KinesisError,
        KingestError,
        ProducerClosedError,
        StreamNotFoundError,
        TransportError,
    )
    from kingest.producer.producer import AsyncProducer, Producer
    from kingest.record import DlqReason, Outcome, Record, RecordFuture, RecordResult

# Where each public name lives. They are imported on first use: `import kingest` stays cheap
# for commands that need none of the producer stack (botocore, aiohttp, pydantic).
_EXPORTS = {
    "AsyncProducer": "kingest.producer.producer",
    "Producer": "kingest.producer.producer",
    "ProducerConfig": "kingest.config",
    "DeadLetterQueue": "kingest.dlq",
    "DlqEntry": "kingest.dlq",
    "DlqReason": "kingest.record",
    "Outcome": "kingest.record",
    "Record": "kingest.record",
    "RecordFuture": "kingest.record",
    "RecordResult": "kingest.record",
    "BufferFullError": "kingest.errors",
    "ConfigError": "kingest.errors",
    "CredentialsError": "kingest.errors",
    "KinesisError": "kingest.errors",
    "KingestError": "kingest.errors",
    "ProducerClosedError": "kingest.errors",
    "StreamNotFoundError": "kingest.errors",
    "TransportError": "kingest.errors",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kingest' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "AsyncProducer",
    "BufferFullError",
    "ConfigError",
    "CredentialsError",
    "DeadLetterQueue",
    "DlqEntry",
    "DlqReason",
    "KinesisError",
    "KingestError",
    "Outcome",
    "Producer",
    "ProducerClosedError",
    "ProducerConfig",
    "Record",
    "RecordFuture",
    "RecordResult",
    "StreamNotFoundError",
    "TransportError",
]

__version__ = "0.1.0"
