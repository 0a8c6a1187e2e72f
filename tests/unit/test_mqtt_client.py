"""The MQTT client's wire format: lengths, properties, packets split across reads."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kingest.sources.mqtt import client as c


def connection(version: int = 5) -> c.MqttConnection:
    return c.MqttConnection(None, None, version, 60)  # type: ignore[arg-type]


def publish(topic: str, payload: bytes, qos: int, packet_id: int, version: int,
            properties: bytes = b"") -> bytes:  # fmt: skip
    body = c._string(topic)
    if qos:
        body += struct.pack(">H", packet_id)
    if version == 5:
        body += c._varint(len(properties)) + properties
    body += payload
    return bytes(((3 << 4) | (qos << 1),)) + c._varint(len(body)) + body


@given(st.integers(min_value=0, max_value=268_435_455))
def test_variable_length_round_trip(value: int) -> None:
    encoded = c._varint(value)
    assert c._read_varint(encoded, 0) == (value, len(encoded))
    assert c._read_varint(encoded[:-1], 0)[0] == -1  # cut short: not yet


def test_a_length_of_five_bytes_is_malformed() -> None:
    with pytest.raises(c.MqttError):
        c._read_varint(b"\xff\xff\xff\xff\x01", 0)


@pytest.mark.parametrize("version", [4, 5])
@given(
    st.text(min_size=1, max_size=30),
    st.binary(max_size=300),
    st.sampled_from([0, 1]),
    st.integers(1, 65535),
    st.integers(1, 40),
)
def test_publishes_split_anywhere_come_out_whole(
    version: int, topic: str, payload: bytes, qos: int, packet_id: int, cut: int
) -> None:
    properties = b"\x01\x01\x23\x00\x05" if version == 5 else b""  # format indicator, alias
    data = publish(topic, payload, qos, packet_id, version, properties) * 3
    reader = connection(version)
    messages: list[c.Message] = []
    for start in range(0, len(data), cut):
        reader._buffer += data[start : start + cut]
        messages.extend(reader._dispatch(reader._packets()))
    assert len(messages) == 3
    for message in messages:
        assert (message.topic, message.payload, message.qos) == (topic, payload, qos)
        assert message.packet_id == (packet_id if qos else None)
    assert not reader._buffer


def test_properties_are_read_or_refused() -> None:
    found, end = c._properties(b"\x08\x13\x00\x1e\x1f\x00\x02ok", 0)
    assert found == {0x13: 30, 0x1F: "ok"} and end == 9
    with pytest.raises(c.MqttError):
        c._properties(b"\x02\x7f\x00", 0)


def test_connect_packet_carries_session_and_flow_control() -> None:
    packet = connection(5)._connect_packet("id-1", False, 3600, 10_000, "user", "secret")
    assert packet[0] == 0x10
    _, start = c._read_varint(packet, 1)
    body = packet[start:]
    assert body[:6] == b"\x00\x04MQTT" and body[6] == 5
    assert body[7] == 0xC0  # user name and password, no clean start
    assert b"\x11\x00\x00\x0e\x10" in body and b"\x21\x27\x10" in body
    assert body.endswith(c._string("user") + c._string("secret"))


def test_a_broker_disconnect_is_an_error() -> None:
    reader = connection(5)
    reader._buffer += b"\xe0\x01\x8b"
    with pytest.raises(c.MqttError, match="0x8b"):
        reader._dispatch(reader._packets())
