"""Readings from MQTT messages: topic templates, payloads, data-quality rules."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kingest.sources.mqtt.readings import (
    PayloadError,
    QualityRule,
    TopicTemplate,
    check_reading,
    reading_from_message,
)
from kingest.sources.mqtt.source import MqttSourceConfig, parse_broker

DEFAULT = TopicTemplate("sensors/{device_type}/{device_id}")


def test_topic_fields_fill_what_the_payload_lacks() -> None:
    reading = reading_from_message(
        "sensors/temperature/sensor_001", b'{"value": 22.5, "unit": "C"}', DEFAULT
    )
    assert reading == {
        "value": 22.5,
        "unit": "C",
        "device_type": "temperature",
        "device_id": "sensor_001",
        "topic": "sensors/temperature/sensor_001",
    }
    own = reading_from_message(
        "sensors/temperature/gw", b'{"device_id": "d9", "value": 1}', DEFAULT
    )
    assert own["device_id"] == "d9", "the payload's own field wins"


def test_a_bare_number_is_the_value_and_other_topics_give_no_fields() -> None:
    assert reading_from_message("sensors/co2/c1", b"415", DEFAULT)["value"] == 415
    assert reading_from_message("other/x", b'{"value": 1}', DEFAULT) == {
        "value": 1,
        "topic": "other/x",
    }


@pytest.mark.parametrize("payload", [b"", b"garbage", b"[1, 2]", b'"text"', b"true", b"null"])
def test_payloads_that_are_not_readings(payload: bytes) -> None:
    with pytest.raises(PayloadError):
        reading_from_message("sensors/a/b", payload, DEFAULT)


@given(st.binary(max_size=64), st.text(max_size=20))
def test_garbage_raises_only_payload_error(payload: bytes, topic: str) -> None:
    with contextlib.suppress(PayloadError):
        reading_from_message(topic, payload, DEFAULT)


@pytest.mark.parametrize("template", ["a/{x}{y}", "a/b{x}", "{x}/{x}"])
def test_bad_templates(template: str) -> None:
    with pytest.raises(ValueError):
        TopicTemplate(template)


def test_quality_rules_list_every_violation() -> None:
    rules = {"temperature": QualityRule(min=-40, max=85, units=["C"])}
    good = {"device_type": "temperature", "device_id": "d", "value": 20, "unit": "C"}
    assert check_reading(good, rules) == []
    bad = {"device_type": "temperature", "value": 150, "unit": "F"}
    assert check_reading(bad, rules) == [
        "missing required field 'device_id'",
        "value 150 above max 85",
        "unit 'F' not in ['C']",
    ]
    assert check_reading({"device_type": "temperature", "device_id": "d", "value": "hot",
                          "unit": "C"}, rules) == ["value 'hot' is not a number"]  # fmt: skip
    assert check_reading({"device_type": "light", "value": -5}, rules) == []


def test_broker_addresses() -> None:
    assert parse_broker("127.0.0.1:1883") == ("127.0.0.1", 1883)
    assert parse_broker("mqtt.internal") == ("mqtt.internal", 1883)
    assert parse_broker("[::1]:8883") == ("::1", 8883)
    for bad in ("host:0", "host:x", ":1883"):
        with pytest.raises(ValueError):
            parse_broker(bad)
    with pytest.raises(ValueError):
        MqttSourceConfig.model_validate({"type": "mqtt", "broker": "h:99999", "topics": ["#"]})
