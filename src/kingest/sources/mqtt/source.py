"""The MQTT source: sensor readings from a broker, acknowledged only once they are safe.

Subscribes with a persistent session (MQTT 5 by default, 3.1.1 on request) and acknowledges
each QoS 1 message by hand: its PUBACK goes out only after its record is accepted by Kinesis or
written to the dead-letter queue, in the order the messages came (as MQTT requires). A crash
before that leaves the message unacknowledged, and the broker sends it again to the session when
the agent comes back: nothing is lost, a few readings may arrive twice.

Each message becomes one reading (see :mod:`kingest.sources.mqtt.readings`) plus ``source``
and ``ingestion_timestamp``, keyed by ``device_id`` so that each device's readings stay in order
on one shard (and aggregate together). A payload that is not a reading, or a reading that breaks
its device type's data-quality rule, goes to the dead-letter queue with the reason, or, with
``on_violation: flag``, is sent with ``quality_violations`` listing what it broke.

Flow control: with MQTT 5, ``receive_maximum`` bounds the unacknowledged messages the broker
sends; past it the broker holds the rest. Mosquitto gives an MQTT 3.1.1 session only 20 in
flight (``max_inflight_messages``), which makes manual acknowledgement slow: prefer MQTT 5.
Mosquitto also drops QoS 1 messages for a session past ``max_queued_messages`` (1,000 by
default): raise it on brokers that must hold readings while the agent is away.

Example (in ``kingest.yaml``)::

    sources:
      - type: mqtt
        name: iot_sensors
        broker: mqtt.internal:1883
        topics: ["sensors/#"]
        qos: 1
        client_id: kingest-iot-1
        rules:
          temperature: {min: -40, max: 85, units: ["°C"]}
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections import deque
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import ConfigDict, Field, SecretStr, field_validator

from kingest.addresses import parse_host_port
from kingest.checkpoint import CheckpointStore
from kingest.errors import ConfigError, SourceError
from kingest.keys import KeyTemplate, key_with_fallback
from kingest.record import DlqReason
from kingest.schemas.validate import SchemaField
from kingest.sources.base import Source, SourceContext
from kingest.sources.mqtt.client import ConnectRefusedError, Message, MqttConnection, MqttError
from kingest.sources.mqtt.readings import (
    PayloadError,
    QualityRule,
    TopicTemplate,
    check_reading,
    reading_from_message,
)

log = logging.getLogger(__name__)

__all__ = ["MqttSource", "MqttSourceConfig", "parse_broker"]

_LANE = "mqtt"


def parse_broker(text: str) -> tuple[str, int]:
    """``HOST:PORT`` of a broker (port 1883 when only a host is given).

    Raises:
        ValueError: not a host and port.
    """
    return parse_host_port(text, default_port=1883)


class MqttSourceConfig(SchemaField):
    """A ``type: mqtt`` source: readings from MQTT topics."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["mqtt"] = Field(description="Subscribe to an MQTT broker.")
    name: str = Field(
        "iot_sensors",
        min_length=1,
        description="Source name: the records' `source` field and statistics.",
    )
    broker: str = Field(description="HOST:PORT of the broker.")
    topics: list[str] = Field(min_length=1, description="Topic filters (+ and # wildcards).")
    qos: Literal[0, 1] = Field(
        1, description="1: acknowledged after delivery (nothing lost); 0: at most once."
    )
    client_id: str | None = Field(
        None,
        description=(
            "Client id; the persistent session is the broker's memory of it. Default: "
            "kingest-<source name>-<host name>."
        ),
    )
    protocol: Literal["5", "3.1.1"] = Field("5", description="MQTT protocol version.")
    persistent_session: bool = Field(
        True,
        description="Keep the session (subscriptions, unacknowledged messages) across restarts.",
    )
    session_expiry_s: int = Field(
        86_400,
        ge=0,
        description="MQTT 5: how long the broker keeps the session while the agent is away.",
    )
    receive_maximum: int = Field(
        10_000,
        ge=1,
        le=65_535,
        description="MQTT 5: unacknowledged QoS 1 messages the broker may send at once.",
    )
    keepalive_s: int = Field(60, ge=5, description="MQTT keepalive interval.")
    username: str | None = Field(None, description="User name.")
    password: SecretStr | None = Field(None, description="Password.")
    tls: bool = Field(False, description="Connect with TLS.")
    ca_file: str | None = Field(None, description="CA certificates (PEM) to trust with TLS.")
    cert_file: str | None = Field(None, description="Client certificate (PEM) for TLS.")
    key_file: str | None = Field(None, description="Client key (PEM) for TLS.")
    reconnect_min_delay_s: int = Field(1, ge=1, description="First delay before reconnecting.")
    reconnect_max_delay_s: int = Field(60, ge=1, description="Longest delay between attempts.")
    topic_template: str = Field(
        "sensors/{device_type}/{device_id}",
        description="Fields taken from the topic's levels where the payload lacks them.",
    )
    rules: dict[str, QualityRule] = Field(
        default_factory=dict, description="Data-quality rules per device_type."
    )
    on_violation: Literal["dlq", "flag"] = Field(
        "dlq",
        description="A reading breaking its rule: to the dead-letter queue, or sent flagged.",
    )
    partition_key: str = Field("{device_id}", description="Partition key template.")
    partition_key_fallback: str | None = Field(
        "{topic}", description="Template used when partition_key cannot be built."
    )
    ack_interval_ms: int = Field(
        20, ge=1, description="How often delivered messages are acknowledged to the broker."
    )
    stream: str | None = Field(None, description="Stream of this source (default: the agent's).")

    @field_validator("broker")
    @classmethod
    def _broker(cls, value: str) -> str:
        parse_broker(value)
        return value

    @field_validator("topic_template")
    @classmethod
    def _template(cls, value: str) -> str:
        TopicTemplate(value)
        return value

    def build(self, store: CheckpointStore) -> MqttSource:
        """The running source for this config (``store`` is unused: the broker keeps state)."""
        return MqttSource(self)


class MqttSource(Source):
    """Reads one broker's topics (see the module docstring)."""

    def __init__(self, config: MqttSourceConfig) -> None:
        super().__init__(config.name)
        self.config = config
        self.host, self.port = parse_broker(config.broker)
        self.client_id = config.client_id or f"kingest-{config.name}-{socket.gethostname()}"
        self.template = TopicTemplate(config.topic_template)
        self.keys = [
            KeyTemplate(None, template)
            for template in (config.partition_key, config.partition_key_fallback)
            if template
        ]
        self._ssl = self._ssl_context()
        self._connection: MqttConnection | None = None
        # Counts connections: a packet id is only valid on the connection it came on. After
        # a reconnection the broker sends the unacknowledged messages again, with their ids.
        self._generation = 0
        self._sequence = 0
        self._unacked: deque[tuple[int, int, int | None]] = deque()  # seq, generation, id

    def _ssl_context(self) -> ssl.SSLContext | None:
        config = self.config
        if not config.tls:
            return None
        try:
            context = ssl.create_default_context(cafile=config.ca_file)
            if config.cert_file is not None:
                context.load_cert_chain(config.cert_file, config.key_file)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise ConfigError(f"source {self.name}: TLS files unusable: {exc}") from exc
        return context

    async def _connect(self) -> MqttConnection:
        config = self.config
        connection = await MqttConnection.open(
            self.host,
            self.port,
            client_id=self.client_id,
            version=5 if config.protocol == "5" else 4,
            clean_start=not config.persistent_session,
            session_expiry_s=config.session_expiry_s if config.persistent_session else 0,
            receive_maximum=config.receive_maximum,
            keepalive_s=config.keepalive_s,
            username=config.username,
            password=config.password.get_secret_value() if config.password else None,
            ssl_context=self._ssl,
        )
        try:
            await connection.subscribe(list(config.topics), config.qos)
        except BaseException:
            await connection.close(disconnect=False)
            raise
        self._generation += 1
        log.info(
            "Connected to the broker.",
            extra={
                "source": self.name,
                "broker": config.broker,
                "session_present": connection.session_present,
            },
        )
        return connection

    async def start(self) -> None:
        """Connect and subscribe; a broker that refuses or cannot be reached stops the agent."""
        try:
            self._connection = await self._connect()
        except ConnectRefusedError as exc:
            raise SourceError(
                f"MQTT broker {self.config.broker} refused the connection: {exc}"
            ) from exc
        except (OSError, TimeoutError, MqttError) as exc:
            raise SourceError(
                f"cannot connect to MQTT broker {self.config.broker}: {exc or type(exc).__name__}",
                retriable=True,
            ) from exc

    async def run(self, ctx: SourceContext, stop: asyncio.Event) -> None:
        """Hand every message to ``ctx`` until ``stop`` is set, reconnecting with backoff."""
        config = self.config
        acks = asyncio.create_task(self._ack_loop(ctx, stop), name=f"kingest-{self.name}-acks")
        stop_waiter = asyncio.create_task(stop.wait())
        delay = float(config.reconnect_min_delay_s)
        try:
            while not stop.is_set():
                connection = self._connection
                if connection is None:
                    try:
                        connection = self._connection = await self._connect()
                        delay = float(config.reconnect_min_delay_s)
                    except ConnectRefusedError as exc:
                        raise SourceError(
                            f"MQTT broker {config.broker} refused the connection: {exc}"
                        ) from exc
                    except (OSError, TimeoutError, MqttError) as exc:
                        log.warning(
                            "Cannot reach the broker yet.",
                            extra={"source": self.name, "error": str(exc), "retry_in_s": delay},
                        )
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), delay)
                        delay = min(delay * 2, float(config.reconnect_max_delay_s))
                        continue
                reader = asyncio.create_task(self._read(ctx, connection))
                await asyncio.wait({reader, stop_waiter}, return_when=asyncio.FIRST_COMPLETED)
                if not reader.done():
                    # Stopping: what the broker sends from now on stays unacknowledged in the
                    # session (never unsubscribed) and comes again next time.
                    reader.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await reader
                    break
                error = reader.exception()
                if error is not None and not isinstance(error, MqttError | OSError):
                    raise error
                log.warning(
                    "Lost the broker; reconnecting.",
                    extra={"source": self.name, "error": str(error)},
                )
                await connection.close(disconnect=False)
                self._connection = None
        finally:
            stop_waiter.cancel()
            acks.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await acks

    async def _read(self, ctx: SourceContext, connection: MqttConnection) -> None:
        async for batch in connection.batches():
            await self._take(ctx, batch)

    async def _take(self, ctx: SourceContext, batch: list[Message]) -> None:
        """Turn a batch of messages into records (or dead letters)."""
        producer = ctx.producer
        stats = ctx.stats
        name = self.name
        template = self.template
        rules = self.config.rules
        flag = self.config.on_violation == "flag"
        keys = self.keys
        generation = self._generation
        unacked = self._unacked
        ingested = datetime.now(UTC).isoformat(timespec="milliseconds")
        stats.received += len(batch)
        records: list[tuple[dict[str, Any], str | None]] = []
        for message in batch:
            self._sequence += 1
            unacked.append((self._sequence, generation, message.packet_id))
            try:
                reading = reading_from_message(message.topic, message.payload, template)
            except PayloadError as exc:
                ctx.reject(
                    message.payload, DlqReason.INVALID_INPUT, f"topic {message.topic}: {exc}"
                )
                continue
            problems = check_reading(reading, rules) if rules else []
            if problems:
                if not flag:
                    ctx.reject(
                        reading,
                        DlqReason.INVALID_RECORD,
                        f"topic {message.topic}: breaks the {reading.get('device_type')} "
                        f"rule: {'; '.join(problems)}",
                    )
                    continue
                reading["quality_violations"] = problems
            reading["source"] = name
            reading["ingestion_timestamp"] = ingested
            try:
                key: str | None = key_with_fallback(keys, reading)
            except KeyError:
                key = None
            records.append((reading, key))
        records = ctx.validate(records)
        stats.parsed += len(records)
        await producer.put_many(records, name)
        ctx.acks.add(_LANE, self._sequence, producer.mark())

    async def _ack_loop(self, ctx: SourceContext, stop: asyncio.Event) -> None:
        """Acknowledge delivered messages promptly, not at the agent's commit interval: the
        broker sends no more than ``receive_maximum`` unacknowledged ones."""
        interval = self.config.ack_interval_ms / 1000
        while not stop.is_set():
            await asyncio.sleep(interval)
            ready = ctx.acks.collect()
            if ready:
                self.commit(ready)
                ctx.acks.committed(ready)

    def commit(self, positions: Mapping[str, Any]) -> None:
        """Send the PUBACKs of every message up to the committable one, in arrival order."""
        upto = positions.get(_LANE)
        if upto is None:
            return
        connection = self._connection
        generation = self._generation
        unacked = self._unacked
        packet_ids = []
        while unacked and unacked[0][0] <= upto:
            _, message_generation, packet_id = unacked.popleft()
            if packet_id is not None and message_generation == generation:
                packet_ids.append(packet_id)
        if connection is not None:
            connection.acknowledge(packet_ids)

    def close(self) -> None:
        """Disconnect, after the last acknowledgements."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close_now()

    def status(self) -> dict[str, Any]:
        """The broker, the connection count and the messages not yet acknowledged."""
        return {
            "broker": self.config.broker,
            "connections": self._generation,
            "unacknowledged": len(self._unacked),
        }
