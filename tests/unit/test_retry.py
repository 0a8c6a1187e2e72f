"""Backoff delays and the choice of what to retry."""

from __future__ import annotations

import random

import pytest

from kingest.errors import (
    KinesisError,
    StreamNotFoundError,
    TransportError,
    is_retriable_code,
    root_cause_retriable,
)
from kingest.producer.retry import Backoff


def test_caps_double_up_to_the_maximum() -> None:
    backoff = Backoff(0.1, 1.0)
    assert [backoff.cap(n) for n in range(1, 7)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert backoff.cap(0) == pytest.approx(0.1)
    assert backoff.cap(10_000) == 1.0  # no overflow on long outages


def test_delays_are_full_jitter_within_the_cap() -> None:
    backoff = Backoff(0.1, 1.0, rng=random.Random(42))
    for failures in (1, 2, 3, 4, 8):
        cap = backoff.cap(failures)
        delays = [backoff.delay(failures) for _ in range(2000)]
        assert all(0.0 <= d <= cap for d in delays)
        # Full jitter: spread over the whole range, not bunched near the cap.
        assert min(delays) < cap * 0.05
        assert max(delays) > cap * 0.95
        assert sum(delays) / len(delays) == pytest.approx(cap / 2, rel=0.1)


def test_seeded_backoff_is_reproducible() -> None:
    a = Backoff(0.05, 2.0, rng=random.Random(7))
    b = Backoff(0.05, 2.0, rng=random.Random(7))
    assert [a.delay(n) for n in range(1, 20)] == [b.delay(n) for n in range(1, 20)]


@pytest.mark.parametrize(
    "code",
    [
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "LimitExceededException",
        "InternalFailure",
        "InternalFailureException",
        "ServiceUnavailable",
        "KMSThrottlingException",
        "RequestTimeout",
    ],
)
def test_throttling_and_internal_failures_are_retried(code: str) -> None:
    assert is_retriable_code(code)
    assert is_retriable_code(code, 400)


@pytest.mark.parametrize("status", [500, 502, 503, 504, 429])
def test_5xx_and_429_are_retried_whatever_the_code(status: int) -> None:
    assert is_retriable_code(None, status)
    assert is_retriable_code("SomethingNew", status)


@pytest.mark.parametrize(
    "code",
    [
        "ValidationException",
        "InvalidArgumentException",
        "AccessDeniedException",
        "KMSAccessDeniedException",
        "KMSDisabledException",
        "KMSInvalidStateException",
        "KMSNotFoundException",
        "KMSOptInRequired",
        "ResourceNotFoundException",
        "UnrecognizedClientException",
    ],
)
def test_refusals_are_not_retried(code: str) -> None:
    assert not is_retriable_code(code)
    assert not is_retriable_code(code, 400)
    assert not KinesisError("refused", code=code, http_status=400).retriable


def test_unknown_4xx_is_not_retried() -> None:
    assert not is_retriable_code(None, 400)
    assert not is_retriable_code(None, 403)
    assert not is_retriable_code(None)


def test_error_classes() -> None:
    assert TransportError("reset").retriable
    assert TransportError("reset").code == "TransportError"
    missing = StreamNotFoundError("no stream")
    assert not missing.retriable
    assert missing.code == "ResourceNotFoundException"
    assert KinesisError("busy", code="ThrottlingException", http_status=400).retriable
    assert KinesisError("down", code="HTTP500", http_status=500).retriable
    assert KinesisError("no", code="X", http_status=503, retriable=False).retriable is False


def test_root_cause_retriable() -> None:
    try:
        try:
            raise TransportError("reset")
        except TransportError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        assert root_cause_retriable(outer)
    assert not root_cause_retriable(ValueError("plain"))
