"""The MQTT source end to end: the machine's Mosquitto in, the embedded Kinesis endpoint out.

Each test publishes under its own topic prefix and subscribes with its own client id. The
no-loss tests crash the agent (SIGKILL) or restart the broker while readings flow, then check
that every reading the broker accepted reached the stream.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from kingest.agent.config import AgentConfig
from tests.agents import AgentProcess, InProcessAgent
from tests.helpers import dlq_entries, read_stream, wait_until
from tests.servers import MQTT_BROKER, Publisher, require_mqtt

pytestmark = pytest.mark.integration


@pytest.fixture
def broker() -> tuple[str, int]:
    return require_mqtt()


@pytest.fixture
def publisher(broker: tuple[str, int]) -> Iterator[Publisher]:
    found = Publisher(*broker)
    try:
        yield found
    finally:
        found.close()


@pytest.fixture
def prefix() -> str:
    return f"kt-{uuid.uuid4().hex[:10]}"


def reading(i: int, **extra: Any) -> bytes:
    return orjson.dumps({"seq": i, "value": 20 + i % 10, "unit": "C", **extra})


def seqs(endpoint_url: str, stream: str) -> list[int]:
    return [orjson.loads(r.data)["seq"] for r in read_stream(endpoint_url, stream)]


def agent_config(prefix: str, stream: str, tmp_path: Path, **fields: Any) -> AgentConfig:
    return AgentConfig.model_validate(
        {
            "stream": stream,
            "checkpoint_path": str(tmp_path / "checkpoints.db"),
            "producer": {"linger_ms": 20, "dlq_dir": str(tmp_path / "dlq")},
            "sources": [
                {
                    "type": "mqtt",
                    "broker": MQTT_BROKER,
                    "topics": [f"{prefix}/#"],
                    "client_id": f"{prefix}-agent",
                    "topic_template": f"{prefix}/{{device_type}}/{{device_id}}",
                    **fields,
                }
            ],
        }
    )


def test_readings_rules_and_dead_letters(
    broker: tuple[str, int], publisher: Publisher, prefix: str, tmp_path: Path,
    stream_factory: Callable[..., str], endpoint_url: str,
) -> None:  # fmt: skip
    stream = stream_factory(shards=2)
    rules = {"temperature": {"min": -40, "max": 85, "units": ["C"]}}
    schema = {"name": "iot_sensors", "stamp": True}  # the built-in schema: every reading fits
    config = agent_config(prefix, stream, tmp_path, rules=rules, schema=schema)
    agent = InProcessAgent(config, endpoint_url)
    try:
        for i in range(50):
            publisher.publish(f"{prefix}/temperature/t{i % 5}", reading(i))
        publisher.publish(f"{prefix}/temperature/t0", reading(50, value=300))  # breaks the rule
        publisher.publish(f"{prefix}/temperature/t0", b"not json")
        publisher.publish(f"{prefix}/humidity/h1", b"55")  # no rule for humidity
        wait_until(lambda: len(read_stream(endpoint_url, stream)) >= 51, 30, "the readings")
    finally:
        agent.stop()
    records = read_stream(endpoint_url, stream)
    objects = [orjson.loads(r.data) for r in records]
    temperatures = [o for o in objects if o.get("device_type") == "temperature"]
    assert sorted(o["seq"] for o in temperatures) == list(range(50))
    for record, obj in zip(records, objects, strict=True):
        assert record.partition_key == obj["device_id"]
        assert obj["source"] == "iot_sensors" and obj["ingestion_timestamp"].endswith("+00:00")
        assert obj["schema_id"] == "iot_sensors/v1"
    assert {"value": 55, "device_type": "humidity", "device_id": "h1"}.items() <= next(
        o for o in objects if o.get("device_type") == "humidity"
    ).items()
    by_device: dict[str, list[int]] = {}
    for obj in temperatures:
        by_device.setdefault(obj["device_id"], []).append(obj["seq"])
    assert all(sequence == sorted(sequence) for sequence in by_device.values())
    reasons = sorted((e.reason, e.error_message or "") for e in dlq_entries(tmp_path / "dlq"))
    assert [reason for reason, _ in reasons] == ["invalid_input", "invalid_record"]
    assert "not JSON" in reasons[0][1] and "above max 85" in reasons[1][1]


def test_flagged_readings_and_qos0(
    broker: tuple[str, int], publisher: Publisher, prefix: str, tmp_path: Path,
    stream_factory: Callable[..., str], endpoint_url: str,
) -> None:  # fmt: skip
    stream = stream_factory()
    config = agent_config(
        prefix, stream, tmp_path, qos=0, on_violation="flag",
        rules={"co2": {"max": 5000}},
    )  # fmt: skip
    agent = InProcessAgent(config, endpoint_url)
    try:
        publisher.publish(f"{prefix}/co2/c1", reading(1, value=9000), qos=0)
        publisher.publish(f"{prefix}/co2/c1", reading(2, value=420), qos=0)
        wait_until(lambda: len(read_stream(endpoint_url, stream)) >= 2, 30, "the readings")
    finally:
        agent.stop()
    objects = [orjson.loads(r.data) for r in read_stream(endpoint_url, stream)]
    assert objects[0]["quality_violations"] == ["value 9000 above max 5000"]
    assert "quality_violations" not in objects[1]


def test_mqtt_3_1_1_with_a_persistent_session(
    broker: tuple[str, int], publisher: Publisher, prefix: str, tmp_path: Path,
    stream_factory: Callable[..., str], endpoint_url: str,
) -> None:  # fmt: skip
    stream = stream_factory()
    first = InProcessAgent(agent_config(prefix, stream, tmp_path, protocol="3.1.1"), endpoint_url)
    try:
        publisher.publish(f"{prefix}/temperature/t1", reading(1))
        wait_until(lambda: len(read_stream(endpoint_url, stream)) >= 1, 30, "the first reading")
    finally:
        first.stop()
    publisher.publish(f"{prefix}/temperature/t1", reading(2))  # while the agent is away
    second = InProcessAgent(agent_config(prefix, stream, tmp_path, protocol="3.1.1"), endpoint_url)
    try:
        wait_until(lambda: sorted(seqs(endpoint_url, stream)) == [1, 2], 30, "the kept reading")
    finally:
        second.stop()


def mqtt_args(prefix: str, stream: str, endpoint_url: str, *, verbose: bool = True) -> list[str]:
    # At INFO the agent says when it is connected and running.
    return [
        *(["--log-level", "INFO"] if verbose else []),
        "mqtt", "--broker", MQTT_BROKER, "--topic", f"{prefix}/#", "--stream", stream,
        "--client-id", f"{prefix}-agent", "--topic-template",
        f"{prefix}/{{device_type}}/{{device_id}}", "--endpoint-url", endpoint_url,
        "--linger-ms", "20",
    ]  # fmt: skip


def publish_in_background(
    publisher: Publisher, prefix: str, count: int, pause_s: float = 0.002
) -> tuple[threading.Thread, list[int]]:
    published: list[int] = []

    def run() -> None:
        for i in range(count):
            publisher.publish(f"{prefix}/temperature/t{i % 7}", reading(i))
            published.append(i)
            time.sleep(pause_s)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, published


def test_sigkill_and_restart_with_the_persistent_session_lose_nothing(
    broker: tuple[str, int], publisher: Publisher, prefix: str, tmp_path: Path,
    stream_factory: Callable[..., str], endpoint_url: str,
    agents: Callable[[list[str], Path], AgentProcess],
) -> None:  # fmt: skip
    stream = stream_factory(shards=2)
    agent = agents(mqtt_args(prefix, stream, endpoint_url), tmp_path)
    wait_until(
        lambda: "is running" in agent.stderr or agent.process.poll() is not None, 30, "start"
    )
    thread, published = publish_in_background(publisher, prefix, 1500)
    wait_until(lambda: len(read_stream(endpoint_url, stream)) >= 400, 60, "readings before")
    agent.process.kill()
    agent.process.wait(10)
    # Readings keep coming while the agent is away: the session holds them.
    away_from = len(published)
    wait_until(lambda: len(published) >= min(away_from + 100, 1500), 60, "readings while away")
    agent = agents(mqtt_args(prefix, stream, endpoint_url), tmp_path)
    thread.join(120)
    assert len(published) == 1500
    wait_until(lambda: set(seqs(endpoint_url, stream)) >= set(range(1500)), 60, "every reading")
    assert agent.stop(signal.SIGTERM) == 0, agent.stderr


def restart_broker() -> None:
    subprocess.run(["pkill", "-x", "mosquitto"], check=False)
    wait_until(
        lambda: subprocess.run(["pgrep", "-x", "mosquitto"], capture_output=True).returncode != 0,
        30,
        "the broker to stop",
    )
    subprocess.run(["mosquitto", "-d", "-c", "/etc/mosquitto/mosquitto.conf"], check=True)
    wait_until(lambda: _reachable(), 30, "the broker to start")


def _reachable() -> bool:
    import socket

    host, _, port = MQTT_BROKER.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


def test_a_broker_restart_mid_stream_loses_nothing(
    broker: tuple[str, int], publisher: Publisher, prefix: str, tmp_path: Path,
    stream_factory: Callable[..., str], endpoint_url: str,
    agents: Callable[[list[str], Path], AgentProcess],
) -> None:  # fmt: skip
    if broker[0] not in ("127.0.0.1", "localhost"):
        pytest.skip("restarts the broker: only a local one")
    stream = stream_factory()
    agent = agents(mqtt_args(prefix, stream, endpoint_url), tmp_path)
    wait_until(
        lambda: "is running" in agent.stderr or agent.process.poll() is not None, 30, "start"
    )
    thread, published = publish_in_background(publisher, prefix, 1200)
    wait_until(lambda: len(published) >= 400, 60, "readings before the restart")
    restart_broker()
    thread.join(120)
    assert len(published) == 1200
    wait_until(lambda: set(seqs(endpoint_url, stream)) >= set(range(1200)), 90, "every reading")
    assert agent.stop(signal.SIGTERM) == 0, agent.stderr


def test_an_unreachable_broker_is_one_line(
    tmp_path: Path, stream_factory: Callable[..., str], endpoint_url: str,
    agents: Callable[[list[str], Path], AgentProcess],
) -> None:  # fmt: skip
    args = mqtt_args("kt-none", stream_factory(), endpoint_url, verbose=False)
    args[args.index("--broker") + 1] = "127.0.0.1:1"
    agent = agents(args, tmp_path)
    assert agent.process.wait(60) == 1
    assert "cannot connect to MQTT broker" in agent.stderr
    assert "Traceback" not in agent.stderr
    assert len(agent.stderr.strip().splitlines()) == 1, agent.stderr


def test_a_refused_connection_is_one_line(
    tmp_path: Path, stream_factory: Callable[..., str], endpoint_url: str,
    agents: Callable[[list[str], Path], AgentProcess],
) -> None:  # fmt: skip
    """A broker answering CONNACK 0x86 (bad user name or password), played by a socket."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def refuse() -> None:
        connection, _ = server.accept()
        with connection:
            connection.recv(1024)
            connection.sendall(b"\x20\x03\x00\x86\x00")
            connection.recv(1024)

    thread = threading.Thread(target=refuse, daemon=True)
    thread.start()
    try:
        args = mqtt_args("kt-refused", stream_factory(), endpoint_url, verbose=False)
        args[args.index("--broker") + 1] = f"127.0.0.1:{port}"
        agent = agents(args, tmp_path)
        assert agent.process.wait(60) == 1
        assert "refused the connection: bad user name or password" in agent.stderr
        assert len(agent.stderr.strip().splitlines()) == 1, agent.stderr
    finally:
        server.close()
