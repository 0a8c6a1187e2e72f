"""kingest: collect events from many sources and deliver them into Amazon Kinesis Data Streams.

The public API::

    from kingest import Producer
    with Producer("my-stream") as producer:
        producer.put({"event": "signup"}, partition_key="user-42", source="app_events")
"""

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
