"""Request bodies to events: objects, arrays, NDJSON, and bodies that are not JSON."""

from __future__ import annotations

import contextlib

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kingest.addresses import parse_host_port
from kingest.sources.http.events import BodyError, NotAnEvent, parse_body

json_objects = st.dictionaries(
    st.text(max_size=8),
    st.one_of(st.integers(-(2**63), 2**63 - 1), st.text(max_size=8), st.none()),
    max_size=4,
)


def test_one_object_an_array_and_ndjson() -> None:
    assert parse_body(b'{"a": 1}', "application/json") == [{"a": 1}]
    events = parse_body(b'[{"a": 1}, 2, null, {"b": 2}]', "application/json")
    assert events[0] == {"a": 1} and events[3] == {"b": 2}
    assert isinstance(events[1], NotAnEvent) and "element 1 is a JSON number" in events[1].reason
    assert isinstance(events[2], NotAnEvent) and "null" in events[2].reason
    ndjson = parse_body(b'{"a": 1}\n\n"x"\r\n{"b": 2}\n', "application/x-ndjson")
    assert ndjson[0] == {"a": 1} and ndjson[2] == {"b": 2}
    assert isinstance(ndjson[1], NotAnEvent) and "line 3 is a JSON string" in ndjson[1].reason


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (b'{"a": 1}\n{"b": ', "application/x-ndjson", "line 2"),
        (b'[{"a": 1},\n {"b" 2}]', "application/json", "line 2"),
        (b"", "application/json", "line 1"),
        (b"[]", "application/json", "no event"),
        (b"\n\n", "application/x-ndjson", "no event"),
    ],
)
def test_bodies_that_are_refused_name_the_line(
    body: bytes, content_type: str, message: str
) -> None:
    with pytest.raises(BodyError, match=message):
        parse_body(body, content_type)


@given(st.lists(json_objects, min_size=1, max_size=10))
def test_ndjson_and_array_round_trip(events: list[dict[str, object]]) -> None:
    ndjson = b"\n".join(orjson.dumps(event) for event in events)
    assert parse_body(ndjson, "application/x-ndjson") == events
    assert parse_body(orjson.dumps(events), "application/json") == events


@given(st.binary(max_size=80), st.sampled_from(["application/json", "application/x-ndjson"]))
def test_garbage_raises_only_body_error(body: bytes, content_type: str) -> None:
    with contextlib.suppress(BodyError):
        parse_body(body, content_type)


def test_host_and_port() -> None:
    assert parse_host_port("0.0.0.0:8080") == ("0.0.0.0", 8080)
    assert parse_host_port("[::1]:8080") == ("::1", 8080)
    assert parse_host_port("broker", default_port=1883) == ("broker", 1883)
    for bad in ("host", "host:", "host:70000", ":80"):
        with pytest.raises(ValueError):
            parse_host_port(bad)
