"""ProducerConfig: defaults, bounds, and problems reported together."""

from __future__ import annotations

import importlib.util

import pytest
from pydantic import ValidationError

from kingest.config import ProducerConfig
from kingest.errors import ConfigError
from kingest.producer.producer import Producer


def test_defaults_are_safe() -> None:
    config = ProducerConfig()
    assert config.on_buffer_full == "block"
    assert config.aggregation is True
    assert config.max_request_records == 500
    assert config.max_request_bytes == 5 * 1024 * 1024
    assert config.max_record_bytes is None
    assert config.rate_limit is True
    assert config.strict_order is False
    assert config.retry_base_ms <= config.retry_max_ms
    assert config.record_ttl_ms > 0


def test_settings_are_frozen() -> None:
    config = ProducerConfig()
    with pytest.raises(ValidationError):
        config.linger_ms = 5  # type: ignore[misc]


def test_unknown_setting_is_refused() -> None:
    with pytest.raises(ValidationError) as info:
        ProducerConfig(linger=5)  # type: ignore[call-arg]
    assert "linger" in str(info.value)


@pytest.mark.parametrize(
    "settings",
    [
        {"max_buffer_records": 0},
        {"max_buffer_bytes": 10},
        {"max_request_records": 501},
        {"max_request_records": 0},
        {"max_request_bytes": 11 * 1024 * 1024},
        {"max_record_bytes": 100},
        {"max_in_flight_requests": 0},
        {"request_timeout_ms": 10},
        {"connect_timeout_ms": 0},
        {"record_ttl_ms": 0},
        {"linger_ms": -1},
        {"on_buffer_full": "drop_oldest"},
        {"compression": "lz4"},
    ],
)
def test_out_of_bounds_values_are_refused(settings: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        ProducerConfig(**settings)  # type: ignore[arg-type]


def test_problems_between_fields_are_listed_together() -> None:
    with pytest.raises(ValueError) as info:
        ProducerConfig(
            retry_base_ms=500,
            retry_max_ms=100,
            max_record_bytes=6 * 1024 * 1024,
            max_request_bytes=5 * 1024 * 1024,
        )
    message = str(info.value)
    assert "retry_max_ms must be at least retry_base_ms" in message
    assert "max_record_bytes cannot exceed max_request_bytes" in message


def test_field_errors_are_listed_together() -> None:
    with pytest.raises(ValidationError) as info:
        ProducerConfig(max_buffer_records=0, linger_ms=-1, on_buffer_full="nope")  # type: ignore[arg-type]
    fields = {error["loc"][0] for error in info.value.errors()}
    assert fields == {"max_buffer_records", "linger_ms", "on_buffer_full"}


@pytest.mark.skipif(
    importlib.util.find_spec("zstandard") is not None, reason="zstandard is installed"
)
def test_zstd_without_the_package_is_explained_with_the_other_problems() -> None:
    with pytest.raises(ValueError) as info:
        ProducerConfig(compression="zstd", retry_base_ms=500, retry_max_ms=100)
    assert "zstandard" in str(info.value)
    assert "retry_max_ms" in str(info.value)


def test_valid_combinations() -> None:
    config = ProducerConfig(
        max_record_bytes=5 * 1024 * 1024,
        max_request_bytes=5 * 1024 * 1024,
        retry_base_ms=100,
        retry_max_ms=100,
        on_buffer_full="drop_newest",
        compression="gzip",
    )
    assert config.max_record_bytes == config.max_request_bytes


def test_producer_turns_bad_settings_into_config_error() -> None:
    """Checked before anything touches the network (the endpoint here does not exist)."""
    with pytest.raises(ConfigError) as info:
        Producer("events", endpoint_url="http://127.0.0.1:9", retry_base_ms=500, retry_max_ms=1)
    assert "retry_max_ms" in str(info.value)
    with pytest.raises(ConfigError):
        Producer("events", endpoint_url="http://127.0.0.1:9", no_such_setting=True)
    with pytest.raises(ConfigError):
        Producer("", endpoint_url="http://127.0.0.1:9")


def test_config_object_with_overrides() -> None:
    base = ProducerConfig(linger_ms=7)
    copy = base.model_copy(update={"strict_order": True})
    assert copy.linger_ms == 7
    assert copy.strict_order is True
    assert base.strict_order is False
