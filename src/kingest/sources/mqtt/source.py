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
import threading
from collections import deque
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from paho.mqtt import client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from kingest.addresses import parse_host_port
from kingest.checkpoint import CheckpointStore
from kingest.errors import ConfigError, SourceError
from kingest.keys import KeyTemplate, key_with_fallback
from kingest.record import DlqReason
from kingest.sources.base import Source, SourceContext
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
# Messages handed from the network thread and not yet taken by the event loop, at most; past
# it the network thread waits (the broker then holds what follows).
_MAX_INBOX = 50_000
_CONNECT_TIMEOUT_S = 15.0
_COALESCE_S = 0.002


def parse_broker(text: str) -> tuple[str, int]:
    """``HOST:PORT`` of a broker (port 1883 when only a host is given).

    Raises:
        ValueError: not a host and port.
    """
    return parse_host_port(text, default_port=1883)


class MqttSourceConfig(BaseModel):
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


class _Message:
    """A message as the network thread hands it over."""

    __slots__ = ("generation", "mid", "payload", "qos", "topic")

    def __init__(self, generation: int, mid: int, qos: int, topic: str, payload: bytes) -> None:
        self.generation = generation
        self.mid = mid
        self.qos = qos
        self.topic = topic
        self.payload = payload


class MqttSource(Source):
    """Reads one broker's topics (see the module docstring)."""

    reads_in_thread = True

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
        self._client: mqtt.Client | None = None
        self._inbox: deque[_Message] = deque()
        self._inbox_room = threading.Condition()
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._generation = 0  # counts connections: a message id is only valid in its own
        self._connected = threading.Event()
        self._connect_error: str | None = None
        self._sequence = 0
        self._unacked: deque[tuple[int, int, int, int]] = deque()  # seq, generation, mid, qos
        self._closing = False
        # Set while a wake-up of the event loop is on its way: one per batch, not per message.
        self._wake_pending = False

    # --- connection (network thread callbacks) ------------------------------------------------

    def _new_client(self) -> mqtt.Client:
        config = self.config
        v5 = config.protocol == "5"
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=None if v5 else not config.persistent_session,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            manual_ack=True,
        )
        if config.username is not None:
            password = config.password.get_secret_value() if config.password else None
            client.username_pw_set(config.username, password)
        if config.tls:
            try:
                client.tls_set(
                    ca_certs=config.ca_file,
                    certfile=config.cert_file,
                    keyfile=config.key_file,
                    tls_version=ssl.PROTOCOL_TLS_CLIENT,
                )
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise ConfigError(f"source {self.name}: TLS files unusable: {exc}") from exc
        client.reconnect_delay_set(config.reconnect_min_delay_s, config.reconnect_max_delay_s)
        client.max_inflight_messages_set(config.receive_maximum)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def _on_connect(
        self, client: mqtt.Client, _userdata: Any, flags: Any, reason: Any, _props: Any
    ) -> None:
        if reason.is_failure:
            self._connect_error = str(reason)
            self._connected.set()
            return
        self._generation += 1
        qos: int = self.config.qos
        if self.config.protocol == "5":
            # Retained messages only for a new subscription, not again on every reconnection.
            options = SubscribeOptions(
                qos=qos, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB
            )
            client.subscribe([(topic, options) for topic in self.config.topics])
        else:
            client.subscribe([(topic, qos) for topic in self.config.topics])
        log.info(
            "Connected to the broker.",
            extra={
                "source": self.name,
                "broker": self.config.broker,
                "session_present": bool(getattr(flags, "session_present", False)),
            },
        )
        self._connect_error = None
        self._connected.set()

    def _on_disconnect(
        self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        if not self._closing:
            # Messages not yet acknowledged come again after the reconnection (the session
            # keeps them); their old ids are not acknowledged on the new connection.
            log.warning(
                "Lost the broker; reconnecting.",
                extra={"source": self.name, "reason": str(reason)},
            )

    def _on_message(self, _client: mqtt.Client, _userdata: Any, message: Any) -> None:
        item = _Message(self._generation, message.mid, message.qos, message.topic, message.payload)
        with self._inbox_room:
            while len(self._inbox) >= _MAX_INBOX and not self._closing:
                self._inbox_room.wait(0.5)
            self._inbox.append(item)
            wake = not self._wake_pending
            self._wake_pending = True
        if wake and self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    # --- life cycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and subscribe; a broker that refuses or cannot be reached stops the agent."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        client = self._client = self._new_client()
        properties = None
        if self.config.protocol == "5":
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = (
                self.config.session_expiry_s if self.config.persistent_session else 0
            )
            properties.ReceiveMaximum = self.config.receive_maximum
        clean_start: bool | Literal[3] = (
            not self.config.persistent_session
            if self.config.protocol == "5"
            else mqtt.MQTT_CLEAN_START_FIRST_ONLY
        )
        try:
            await self._loop.run_in_executor(
                None,
                lambda: client.connect(
                    self.host,
                    self.port,
                    keepalive=self.config.keepalive_s,
                    clean_start=clean_start,
                    properties=properties,
                ),
            )
        except (OSError, ValueError) as exc:
            raise SourceError(
                f"cannot connect to MQTT broker {self.config.broker}: {exc}", retriable=True
            ) from exc
        client.loop_start()
        connected = await self._loop.run_in_executor(None, self._connected.wait, _CONNECT_TIMEOUT_S)
        if not connected or self._connect_error is not None:
            self.close()
            reason = self._connect_error or f"no answer within {_CONNECT_TIMEOUT_S:g} s"
            raise SourceError(f"MQTT broker {self.config.broker} refused the connection: {reason}")

    async def run(self, ctx: SourceContext, stop: asyncio.Event) -> None:
        """Hand every message to ``ctx`` until ``stop`` is set; acknowledge as they are safe."""
        assert self._wake is not None, "start() first"
        wake = self._wake
        acks = asyncio.create_task(self._ack_loop(ctx, stop), name=f"kingest-{self.name}-acks")
        stop_waiter = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                waiter = asyncio.create_task(wake.wait())
                await asyncio.wait({waiter, stop_waiter}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                # Let a few more messages come: each wake-up of the loop costs more than one.
                await asyncio.sleep(_COALESCE_S)
                with self._inbox_room:
                    self._wake_pending = False
                wake.clear()
                await self._drain(ctx)
        finally:
            stop_waiter.cancel()
            acks.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await acks
            # What is already here is sent; what the broker sends from now on stays
            # unacknowledged in the session (never unsubscribed) and comes again next time.
            await self._drain(ctx)

    async def _drain(self, ctx: SourceContext) -> None:
        """Turn every message waiting into a record (or a dead letter)."""
        producer = ctx.producer
        put_nowait = producer.put_nowait
        stats = ctx.stats
        name = self.name
        template = self.template
        rules = self.config.rules
        flag = self.config.on_violation == "flag"
        keys = self.keys
        inbox = self._inbox
        while inbox:
            with self._inbox_room:
                batch = list(inbox)
                inbox.clear()
                self._inbox_room.notify_all()
            ingested = datetime.now(UTC).isoformat(timespec="milliseconds")
            stats.received += len(batch)
            for message in batch:
                self._sequence += 1
                self._unacked.append((self._sequence, message.generation, message.mid, message.qos))
                try:
                    reading = reading_from_message(message.topic, message.payload, template)
                except PayloadError as exc:
                    ctx.reject(
                        message.payload,
                        DlqReason.INVALID_INPUT,
                        f"topic {message.topic}: {exc}",
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
                stats.parsed += 1
                reading["source"] = name
                reading["ingestion_timestamp"] = ingested
                try:
                    key: str | None = key_with_fallback(keys, reading)
                except KeyError:
                    key = None
                if put_nowait(reading, key, None, name) is None:
                    await producer.put(reading, key, None, name)
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
        client = self._client
        if upto is None or client is None:
            return
        generation = self._generation
        unacked = self._unacked
        while unacked and unacked[0][0] <= upto:
            _, message_generation, mid, qos = unacked.popleft()
            if qos == 1 and message_generation == generation:
                client.ack(mid, qos)

    def close(self) -> None:
        """Disconnect (after the last acknowledgements) and stop the network thread."""
        self._closing = True
        with self._inbox_room:
            self._inbox_room.notify_all()
        client = self._client
        if client is not None:
            with contextlib.suppress(Exception):
                client.disconnect()
            client.loop_stop()

    def status(self) -> dict[str, Any]:
        """The broker, the connection count and the messages not yet acknowledged."""
        return {
            "broker": self.config.broker,
            "connections": self._generation,
            "unacknowledged": len(self._unacked),
        }
