"""Simulator drivers with their outputs captured: pacing, tags, payloads."""

from __future__ import annotations

import threading
from pathlib import Path

import orjson

from kingest.sources.simulate.drivers import Pacer, append_weblog, post_events, publish_iot
from kingest.sources.weblog.formats import compile_format


def test_a_pacer_hands_out_exactly_rate_times_duration() -> None:
    assert sum(Pacer(500, 0.2).slices()) == 100
    stop = threading.Event()
    stop.set()
    assert sum(Pacer(500, None, stop).slices()) == 0


def test_weblog_lines_parse_and_carry_their_tag(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    assert append_weblog(path, Pacer(1000, 0.1), seed=3, tag="run") == 100
    parse = compile_format("combined")
    parsed = [parse(line) for line in path.read_bytes().splitlines()]
    rids = [record["path"].rsplit("rid=", 1)[1] for record in parsed]
    assert rids == [f"run-{i}" for i in range(100)]


def test_iot_readings_go_to_per_device_topics() -> None:
    published: list[tuple[str, bytes]] = []
    count = publish_iot(lambda t, p: published.append((t, p)), Pacer(1000, 0.05), seed=1, tag="x")
    assert count == len(published) == 50
    for topic, payload in published:
        reading = orjson.loads(payload)
        assert topic == f"sensors/{reading['device_type']}/{reading['device_id']}"
        assert {"value", "unit", "location", "timestamp", "event_id"} <= reading.keys()


def test_events_are_posted_in_ndjson_batches() -> None:
    bodies: list[bytes] = []
    assert post_events(bodies.append, Pacer(2000, 0.1), batch=50, seed=2, tag="e") == 200
    events = [orjson.loads(line) for body in bodies for line in body.splitlines()]
    assert [e["event_id"] for e in events] == [f"e-{i}" for i in range(200)]
    assert all(len(body.splitlines()) <= 50 for body in bodies)
