"""``kingest demo``: four real sources into a stream, and every record read back.

The demo runs as the README's first command does, in a short mode: its exit status and its
report (every source: sent = read back, 0 lost) are the test. Where the machine's PostgreSQL
and Mosquitto answer (always under CI), the demo captures real changes and real MQTT messages;
the fallbacks (simulated changes, a private broker) are tested too.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from kingest.demo import run as demo_run
from kingest.demo.run import DemoInputs
from tests.servers import require_mqtt, require_postgres

pytestmark = pytest.mark.integration

SOURCES = {"web_logs", "iot_sensors", "database_cdc", "app_events"}


def demo(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kingest", "demo", *args],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def test_demo_on_the_embedded_endpoint() -> None:
    require_postgres().close()
    require_mqtt()
    done = demo("--duration", "3", "--rate", "300")
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "0 lost: every one of" in out
    for name in SOURCES:
        row = next(line for line in out.splitlines() if line.startswith(name))
        cells = [cell.strip() for cell in row.split("|")]
        assert cells[2] == cells[3] and cells[4] == "0", row  # sent = read back, 0 lost
    assert "PostgreSQL logical replication" in out
    assert "every row's changes came back in commit order" in out


def test_demo_json_on_an_existing_stream(
    endpoint_url: str, stream_factory: Callable[..., str]
) -> None:
    stream = stream_factory(shards=2)
    done = demo("--endpoint-url", endpoint_url, "--stream", stream, "--duration", "2",
                "--rate", "200", "--json")  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    report: dict[str, Any] = orjson.loads(done.stdout)
    assert report["ok"] and report["lost"] == 0
    assert all(row["sent"] == row["read_back"] > 0 for row in report["sources"].values())


def test_without_postgres_the_changes_are_simulated_and_said_so(
    endpoint_url: str, stream_factory: Callable[..., str]
) -> None:
    stream = stream_factory()
    unreachable = "postgresql://postgres@127.0.0.1:1/x"
    done = demo("--endpoint-url", endpoint_url, "--stream", stream, "--duration", "2",
                "--rate", "200", "--json", "--postgres", unreachable)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    report = orjson.loads(done.stdout)
    cdc = report["sources"]["database_cdc"]
    assert cdc["input"].startswith("simulated: PostgreSQL not reachable")
    assert cdc["sent"] == cdc["read_back"] > 0


def test_without_a_broker_a_private_mosquitto_is_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if demo_run.shutil.which("mosquitto") is None:
        pytest.skip("no mosquitto executable")
    reachable = demo_run._reachable
    monkeypatch.setattr(demo_run, "_reachable", lambda h, p: p != 1883 and reachable(h, p))
    inputs = DemoInputs(broker=None, private_broker=False, postgres_dsn=None)
    with demo_run._broker(tmp_path, inputs):
        assert inputs.private_broker and inputs.broker is not None
        host, _, port = inputs.broker.rpartition(":")
        socket.create_connection((host, int(port)), timeout=5).close()
        assert "private Mosquitto" in inputs.notes["iot_sensors"]


def test_demo_refuses_conflicting_options() -> None:
    done = demo("--endpoint-url", "http://127.0.0.1:1")
    assert done.returncode == 1 and "go together" in done.stderr
