"""Request bodies of ``POST /v1/events`` to events: one JSON object, a JSON array, or NDJSON.

:func:`parse_body` is pure. A body that is not JSON at all (or an NDJSON line that is not) is a
:class:`BodyError` naming the line, and the whole request is refused: a client that sent broken
JSON should fix it rather than have part of it taken. A well-formed element that is not an
object is one rejected event; the others go on.
"""

from __future__ import annotations

from typing import Any, Final

import orjson

__all__ = ["NDJSON_TYPES", "BodyError", "NotAnEvent", "parse_body"]

NDJSON_TYPES: Final = frozenset({"application/x-ndjson", "application/jsonl", "application/ndjson"})


class BodyError(ValueError):
    """A body that is not the JSON its content type says; the message names the line."""


class NotAnEvent:
    """An element of the body that is valid JSON but not an object."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def parse_body(body: bytes, content_type: str) -> list[dict[str, Any] | NotAnEvent]:
    """The events of a request body, in order.

    Args:
        body: the raw body.
        content_type: the request's media type (without parameters).

    Returns:
        One entry per event: the event object, or a :class:`NotAnEvent` saying why not.

    Raises:
        BodyError: the body (or a line of it) is not valid JSON, or is empty.
    """
    if content_type in NDJSON_TYPES:
        return _ndjson(body)
    try:
        decoded = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BodyError(f"line {_line_of(body, exc.pos)}: not valid JSON: {exc.msg}") from None
    if isinstance(decoded, list):
        if not decoded:
            raise BodyError("the array holds no event")
        return [_event(item, f"element {index}") for index, item in enumerate(decoded)]
    return [_event(decoded, "the body")]


def _ndjson(body: bytes) -> list[dict[str, Any] | NotAnEvent]:
    events: list[dict[str, Any] | NotAnEvent] = []
    for number, line in enumerate(body.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            decoded = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise BodyError(f"line {number}: not valid JSON: {exc.msg}") from None
        events.append(_event(decoded, f"line {number}"))
    if not events:
        raise BodyError("the body holds no event")
    return events


def _event(value: Any, where: str) -> dict[str, Any] | NotAnEvent:
    if isinstance(value, dict):
        return value
    return NotAnEvent(f"{where} is a JSON {_json_type(value)}, not an object")


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array"


def _line_of(body: bytes, position: int) -> int:
    return body.count(b"\n", 0, max(position, 0)) + 1
