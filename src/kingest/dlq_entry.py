"""One dead-letter queue entry and its JSON-lines form (the on-disk format of the DLQ).

The writer is :class:`kingest.dlq.DeadLetterQueue`; replay and summary are
:mod:`kingest.dlq_replay`.
"""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from kingest.record import DlqReason

__all__ = ["FORMAT_VERSION", "DlqEntry"]

# Format version written in every line ("v"), so a later reader can tell old lines apart.
FORMAT_VERSION = 1

_STR_FIELDS = (
    "error_code",
    "error_message",
    "source",
    "stream",
    "partition_key",
    "explicit_hash_key",
)
_TIME_FIELDS = ("first_attempt_at", "last_attempt_at", "dead_lettered_at")
_MAX_ATTEMPTS = 2**63 - 1


@dataclass(frozen=True, slots=True)
class DlqEntry:
    """One dead-lettered record with everything needed to understand it and send it again.

    Attributes:
        reason: why the record was dead-lettered.
        error_code: the AWS error code behind the reason, when there is one.
        error_message: a human explanation of the reason.
        attempts: how many PutRecords attempts carried the record.
        source: name of the source that produced it.
        stream: the Kinesis stream it was meant for.
        partition_key: the partition key it was (or would have been) sent with.
        explicit_hash_key: the explicit hash key it was sent with, if any.
        payload: the record's data exactly as it would have been sent.
        first_attempt_at: epoch seconds of the first PutRecords attempt, if any.
        last_attempt_at: epoch seconds of the last PutRecords attempt, if any.
        dead_lettered_at: epoch seconds when the record was dead-lettered.

    Raises:
        TypeError: ``payload`` is not bytes-like or ``attempts`` is not an int.
        ValueError: ``attempts`` is negative (or beyond 64 bits), ``reason`` is not a
            :class:`DlqReason` value, or a time is not a finite number (times become floats).
    """

    reason: DlqReason
    error_code: str | None
    error_message: str | None
    attempts: int
    source: str | None
    stream: str | None
    partition_key: str | None
    explicit_hash_key: str | None
    payload: bytes
    first_attempt_at: float | None
    last_attempt_at: float | None
    dead_lettered_at: float

    def __post_init__(self) -> None:
        # Checked here rather than in to_json: a bad entry should fail where it is built (in
        # the producer, under test), not later when the DLQ must make it durable.
        if not isinstance(self.payload, bytes):
            if not isinstance(self.payload, bytearray | memoryview):
                raise TypeError("DlqEntry.payload must be bytes")
            object.__setattr__(self, "payload", bytes(self.payload))
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int):
            raise TypeError("DlqEntry.attempts must be an int")
        # JSON writers (orjson) stop at 64-bit integers.
        if not 0 <= self.attempts <= _MAX_ATTEMPTS:
            raise ValueError(f"DlqEntry.attempts must be between 0 and {_MAX_ATTEMPTS}")
        if not isinstance(self.reason, DlqReason):
            object.__setattr__(self, "reason", DlqReason(self.reason))
        for name in _TIME_FIELDS:
            value = getattr(self, name)
            if value is None and name != "dead_lettered_at":
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"DlqEntry.{name} must be a number of epoch seconds")
            try:
                seconds = float(value)
            except OverflowError:
                seconds = math.inf
            # NaN and infinities have no JSON form; they would come back as something else.
            if not math.isfinite(seconds):
                raise ValueError(f"DlqEntry.{name} must be a finite number of epoch seconds")
            object.__setattr__(self, name, seconds)

    def to_json(self) -> dict[str, Any]:
        """Describe the entry as one JSON object (a dict ready for ``orjson.dumps``).

        ``payload_b64`` always holds the exact bytes. ``payload`` is a view for humans: the
        parsed value when the bytes are valid UTF-8 JSON (``payload_format: "json"``; numbers
        beyond 64 bits read as floats there), the text when they are other valid UTF-8
        (``"text"``), else null (``"binary"``). Times appear as epoch seconds under their field
        name and as ISO 8601 UTC strings with microseconds under ``<name>_iso``. Strings that
        are not valid Unicode (lone surrogates) are stored with backslash escapes.

        Returns:
            A dict of JSON-serializable values; :meth:`from_json` turns it back into the entry.
        """
        payload_format, payload_view = _payload_view(self.payload)
        obj: dict[str, Any] = {
            "v": FORMAT_VERSION,
            "reason": self.reason.value,
            "error_code": _json_text(self.error_code),
            "error_message": _json_text(self.error_message),
            "attempts": self.attempts,
            "source": _json_text(self.source),
            "stream": _json_text(self.stream),
            "partition_key": _json_text(self.partition_key),
            "explicit_hash_key": _json_text(self.explicit_hash_key),
        }
        for name in _TIME_FIELDS:
            value: float | None = getattr(self, name)
            obj[name] = value
            obj[f"{name}_iso"] = _iso(value)
        obj["payload_format"] = payload_format
        obj["payload_bytes"] = len(self.payload)
        obj["payload_b64"] = base64.b64encode(self.payload).decode("ascii")
        # Last, so a human reading a line sees the metadata before a large payload.
        obj["payload"] = payload_view
        return obj

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> DlqEntry:
        """Rebuild an entry from :meth:`to_json` output (the payload comes from ``payload_b64``).

        Args:
            obj: a decoded JSON object. Unknown keys are ignored (later format versions may add
                some).

        Returns:
            The entry.

        Raises:
            ValueError: the object is not a DLQ entry (missing or mistyped field, unknown
                reason, bad base64). Messages never quote the payload.
        """
        if not isinstance(obj, dict):
            raise ValueError("a DLQ entry must be a JSON object")
        try:
            reason = DlqReason(obj["reason"])
        except KeyError:
            raise ValueError("missing field 'reason'") from None
        except ValueError:
            raise ValueError("unknown reason") from None
        strings: dict[str, str | None] = {}
        for name in _STR_FIELDS:
            value = obj.get(name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"field {name!r} must be a string or null")
            strings[name] = value
        times: dict[str, float | None] = {}
        for name in _TIME_FIELDS:
            value = obj.get(name)
            if value is None and name != "dead_lettered_at":
                times[name] = None
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"field {name!r} must be a number")
            times[name] = value
        attempts = obj.get("attempts")
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 0:
            raise ValueError("field 'attempts' must be a non-negative integer")
        encoded = obj.get("payload_b64")
        if not isinstance(encoded, str):
            raise ValueError("field 'payload_b64' must be a string")
        try:
            payload = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("field 'payload_b64' is not valid base64") from None
        dead_lettered_at = times["dead_lettered_at"]
        assert dead_lettered_at is not None  # checked above
        return cls(
            reason=reason,
            error_code=strings["error_code"],
            error_message=strings["error_message"],
            attempts=attempts,
            source=strings["source"],
            stream=strings["stream"],
            partition_key=strings["partition_key"],
            explicit_hash_key=strings["explicit_hash_key"],
            payload=payload,
            first_attempt_at=times["first_attempt_at"],
            last_attempt_at=times["last_attempt_at"],
            dead_lettered_at=dead_lettered_at,
        )


def _payload_view(payload: bytes) -> tuple[str, Any]:
    """Return (payload_format, human-readable value) for the ``payload`` key."""
    try:
        value = orjson.loads(payload)
        # Parsing is not enough: orjson writes at most 254 levels of nesting.
        orjson.dumps(value)
    except (orjson.JSONDecodeError, orjson.JSONEncodeError):
        pass
    else:
        return "json", value
    try:
        return "text", payload.decode("utf-8")
    except UnicodeDecodeError:
        return "binary", None


def _json_text(value: str | None) -> str | None:
    """Return ``value`` unchanged, or with lone surrogates escaped so JSON can hold it."""
    if value is None:
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        # Refusing the entry would lose the record; an escaped name is still readable.
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def _iso(value: float | None) -> str | None:
    """Format epoch seconds as ``YYYY-mm-ddTHH:MM:SS.ffffffZ`` (None outside datetime's range)."""
    if value is None:
        return None
    try:
        moment = datetime.fromtimestamp(value, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")
