"""The integrated collection of the specification, run for real on one machine.

One agent runs four sources into one stream while simulators feed their real inputs:

- ``web_logs``: access log lines appended to a file, which the file source tails;
- ``iot_sensors``: readings published to an MQTT broker, to which the MQTT source subscribes
  (the broker at 127.0.0.1:1883 when one runs; otherwise a private Mosquitto started for the
  demo: the broker production fleets use, rather than a Python stand-in that would measure
  something else; without either, this source is left out and the demo says so);
- ``database_cdc``: a shop's transactions written to two tables of the local PostgreSQL, which
  the PostgreSQL source captures through a replication slot (when PostgreSQL answers with
  ``wal_level=logical``; otherwise simulated change events go through a JSON-lines file, and
  the demo says so);
- ``app_events``: application events POSTed to the HTTP source.

Every item carries a tag of the run, so that the read-back counts exactly this run's records.
:func:`run_demo` returns what was produced and the agent's statistics; the caller reads the
stream back (:mod:`kingest.demo.report`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson

from kingest.agent.config import AgentConfig
from kingest.agent.runner import Agent
from kingest.sources.simulate.cdc import CdcSimulator
from kingest.sources.simulate.drivers import (
    Pacer,
    append_weblog,
    post_events,
    prepare_tables,
    publish_iot,
    write_cdc,
)

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_BROKER", "DEFAULT_POSTGRES", "DemoInputs", "DemoRun", "run_demo"]

DEFAULT_BROKER: Final = "127.0.0.1:1883"
DEFAULT_POSTGRES: Final = "postgresql://postgres@127.0.0.1:5432/postgres"
# Shares of the rate: the specification's run sends web logs, readings and changes 2 : 6 : 1;
# application events come on top, as often as the web logs.
SHARES: Final = {"web_logs": 2, "iot_sensors": 6, "database_cdc": 1, "app_events": 2}
# The most the demo waits for the sources to take in what was produced before stopping.
CATCH_UP_S: Final = 60.0


@dataclass(slots=True)
class DemoInputs:
    """Where each source's input comes from in this run, and why."""

    broker: str | None
    private_broker: bool
    postgres_dsn: str | None
    notes: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class DemoRun:
    """What a run produced, per source, and how."""

    run_id: str
    inputs: DemoInputs
    produced: dict[str, int]
    cdc_tables: list[str]
    seconds: float
    stats: dict[str, Any]
    dlq_dir: Path


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.contextmanager
def _broker(work: Path, inputs: DemoInputs) -> Iterator[None]:
    """Use the running broker, or start a private Mosquitto for the run."""
    if _reachable("127.0.0.1", 1883):
        inputs.broker = DEFAULT_BROKER
        inputs.notes["iot_sensors"] = f"MQTT broker at {DEFAULT_BROKER}"
        yield
        return
    executable = shutil.which("mosquitto")
    if executable is None:
        inputs.notes["iot_sensors"] = (
            "left out: no MQTT broker at 127.0.0.1:1883 and no mosquitto to start one"
        )
        yield
        return
    port = _free_port()
    config = work / "mosquitto.conf"
    config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    process = subprocess.Popen(
        [executable, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 10
        while not _reachable("127.0.0.1", port):
            if time.monotonic() > deadline or process.poll() is not None:
                inputs.notes["iot_sensors"] = "left out: the private Mosquitto did not start"
                yield
                return
            time.sleep(0.05)
        inputs.broker = f"127.0.0.1:{port}"
        inputs.private_broker = True
        inputs.notes["iot_sensors"] = f"private Mosquitto at {inputs.broker} (none was running)"
        yield
    finally:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(10)


def _postgres(dsn: str, inputs: DemoInputs) -> Any:
    """A connection to PostgreSQL when it can be captured, else None (with the reason noted)."""
    import psycopg2

    try:
        connection = psycopg2.connect(dsn, connect_timeout=3)
    except psycopg2.Error as exc:
        inputs.notes["database_cdc"] = (
            f"simulated: PostgreSQL not reachable ({str(exc).strip().splitlines()[0]})"
        )
        return None
    with connection.cursor() as cursor:
        cursor.execute("show wal_level")
        (level,) = cursor.fetchone() or ("?",)
    connection.commit()
    if level != "logical":
        connection.close()
        inputs.notes["database_cdc"] = f"simulated: PostgreSQL has wal_level={level}, not logical"
        return None
    inputs.postgres_dsn = dsn
    inputs.notes["database_cdc"] = "PostgreSQL logical replication (pgoutput) from two tables"
    return connection


def run_demo(
    endpoint_url: str,
    stream: str,
    *,
    duration_s: float,
    rate: float,
    seed: int,
    run_id: str,
    work: Path,
    show: Callable[[str], None],
    postgres_dsn: str = DEFAULT_POSTGRES,
    metrics_address: str | None = None,
) -> DemoRun:
    """Run the agent and the simulators for ``duration_s``, then stop cleanly.

    Args:
        endpoint_url: the Kinesis endpoint.
        stream: the stream every source sends to.
        duration_s: how long the simulators produce.
        rate: items per second over all sources (shared as :data:`SHARES`).
        seed: seed of the simulators.
        run_id: tag of this run's items.
        work: a directory for the log file, the checkpoints and the dead-letter queue.
        show: receives a one-line live view every half second.
        postgres_dsn: the PostgreSQL to capture when it can be.
        metrics_address: HOST:PORT where the agent serves /metrics (for ``kingest top``).
    """
    inputs = DemoInputs(broker=None, private_broker=False, postgres_dsn=None)
    with _broker(work, inputs):
        postgres = _postgres(postgres_dsn, inputs)
        try:
            return asyncio.run(
                _run(
                    endpoint_url,
                    stream,
                    inputs,
                    postgres,
                    duration_s,
                    rate,
                    seed,
                    run_id,
                    work,
                    show,
                    metrics_address,
                )
            )
        finally:
            if postgres is not None:
                _drop_capture(postgres, run_id)


def _tables(run_id: str) -> dict[str, str]:
    return {"users": f"kdemo_{run_id}_users", "orders": f"kdemo_{run_id}_orders"}


def _drop_capture(connection: Any, run_id: str) -> None:
    """Remove what the demo made in PostgreSQL: its slot, publication and tables."""
    connection.rollback()
    connection.autocommit = True
    name = f"kdemo_{run_id}"
    with connection.cursor() as cursor:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            cursor.execute("select active from pg_replication_slots where slot_name = %s", (name,))
            row = cursor.fetchone()
            if row is None:
                break
            if not row[0]:
                cursor.execute("select pg_drop_replication_slot(%s)", (name,))
                break
            time.sleep(0.1)
        cursor.execute(f'drop publication if exists "{name}"')
        for table in _tables(run_id).values():
            cursor.execute(f'drop table if exists "{table}"')
    connection.close()


def _config(
    stream: str, inputs: DemoInputs, run_id: str, work: Path, metrics_address: str | None
) -> tuple[AgentConfig, Path | None]:
    # Every source checks its records against its built-in schema, as the seed's did; but
    # simulated changes come through a file source, which names itself in `source` (the change
    # event's own block moves to `origin`), so they are not held to the CDC schema.
    sources: list[dict[str, Any]] = [
        {"type": "file", "name": "web_logs", "paths": [str(work / "access.log")],
         "format": "combined", "from": "beginning", "schema": {"name": "web_logs"}},
        {"type": "http", "name": "app_events", "listen": "127.0.0.1:0",
         "partition_key": "{user_id}", "schema": {"name": "app_events"}},
    ]  # fmt: skip
    if inputs.broker is not None:
        sources.append(
            {"type": "mqtt", "name": "iot_sensors", "broker": inputs.broker,
             "topics": [f"kdemo/{run_id}/#"], "client_id": f"kingest-demo-{run_id}",
             "schema": {"name": "iot_sensors"},
             "persistent_session": False,
             "topic_template": f"kdemo/{run_id}/{{device_type}}/{{device_id}}"}
        )  # fmt: skip
    simulated_cdc: Path | None = None
    if inputs.postgres_dsn is not None:
        sources.append(
            {"type": "postgres", "name": "database_cdc", "dsn": inputs.postgres_dsn,
             "slot": f"kdemo_{run_id}", "publication": f"kdemo_{run_id}",
             "tables": [f"public.{t}" for t in _tables(run_id).values()],
             "heartbeat_interval_s": 1, "schema": {"name": "database_cdc"}}
        )  # fmt: skip
    else:
        simulated_cdc = work / "changes.jsonl"
        sources.append(
            {"type": "file", "name": "database_cdc", "paths": [str(simulated_cdc)],
             "format": "json", "from": "beginning", "partition_key": "{partition_key}"}
        )  # fmt: skip
    config = AgentConfig.model_validate(
        {
            "stream": stream,
            "checkpoint_path": str(work / "checkpoints.db"),
            "commit_interval_ms": 200,
            "producer": {"linger_ms": 50, "dlq_dir": str(work / "dlq"), "strict_order": True},
            "metrics": {"address": metrics_address},
            "sources": sources,
        }
    )
    return config, simulated_cdc


async def _run(
    endpoint_url: str,
    stream: str,
    inputs: DemoInputs,
    postgres: Any,
    duration_s: float,
    rate: float,
    seed: int,
    run_id: str,
    work: Path,
    show: Callable[[str], None],
    metrics_address: str | None,
) -> DemoRun:
    tables = _tables(run_id)
    if postgres is not None:
        # The tables exist before the capture starts, so the publication can name them.
        prepare_tables(postgres, "postgres", tables)
    config, simulated_cdc = _config(stream, inputs, run_id, work, metrics_address)
    (work / "access.log").touch()
    if simulated_cdc is not None:
        simulated_cdc.touch()
    agent = Agent(config, endpoint_url=endpoint_url)
    stop = asyncio.Event()
    agent_task = asyncio.create_task(agent.run(stop))
    http_port = await _started(agent, agent_task)
    inputs.notes["web_logs"] = "combined-format log file, tailed"
    inputs.notes["app_events"] = f"POST /v1/events to 127.0.0.1:{http_port}"
    share = sum(SHARES[name] for name in _running(inputs))
    rates = {name: max(rate * SHARES[name] / share, 1.0) for name in _running(inputs)}
    produced: dict[str, int] = {name: 0 for name in rates}
    halt = threading.Event()
    loop = asyncio.get_running_loop()
    drivers = {
        "web_logs": lambda: append_weblog(
            work / "access.log", Pacer(rates["web_logs"], duration_s, halt), seed=seed,
            tag=f"{run_id}-w",
        ),
        "app_events": lambda: post_events(
            _poster(f"http://127.0.0.1:{http_port}/v1/events"),
            Pacer(rates["app_events"], duration_s, halt), batch=50, seed=seed, tag=f"{run_id}-e",
        ),
    }  # fmt: skip
    if inputs.broker is not None:
        drivers["iot_sensors"] = lambda: _publish(inputs.broker or "", run_id, rates, duration_s,
                                                  halt, seed)  # fmt: skip
    if postgres is not None:
        drivers["database_cdc"] = lambda: write_cdc(
            postgres, "postgres", Pacer(rates["database_cdc"], duration_s, halt),
            tables=tables, seed=seed, tag=f"{run_id}-c", prepare=False,
        )  # fmt: skip
    else:
        assert simulated_cdc is not None
        drivers["database_cdc"] = lambda: _simulated_changes(
            simulated_cdc, Pacer(rates["database_cdc"], duration_s, halt), seed, run_id
        )
    started = time.monotonic()
    futures = {name: loop.run_in_executor(None, driver) for name, driver in drivers.items()}
    try:
        while not all(future.done() for future in futures.values()):
            await asyncio.wait(list(futures.values()), timeout=0.5)
            if agent_task.done():
                break
            show(_live(agent, produced, futures, time.monotonic() - started))
        for name, future in futures.items():
            produced[name] = future.result()
        seconds = time.monotonic() - started
        deadline = time.monotonic() + CATCH_UP_S
        while not agent_task.done() and time.monotonic() < deadline:
            if _caught_up(agent, produced):
                break
            show(_live(agent, produced, futures, time.monotonic() - started))
            await asyncio.sleep(0.2)
    finally:
        halt.set()
        stop.set()
        await asyncio.gather(*futures.values(), return_exceptions=True)
        await agent_task
    return DemoRun(
        run_id=run_id,
        inputs=inputs,
        produced=produced,
        cdc_tables=list(tables.values()),
        seconds=seconds,
        stats=agent.stats(),
        dlq_dir=work / "dlq",
    )


def _running(inputs: DemoInputs) -> list[str]:
    names = ["web_logs", "database_cdc", "app_events"]
    if inputs.broker is not None:
        names.insert(1, "iot_sensors")
    return names


async def _started(agent: Agent, task: asyncio.Task[None]) -> int:
    """Wait until every source has started (the capture's slot exists before the first write);
    the HTTP source's port."""
    ready = asyncio.create_task(agent.started.wait())
    done, _ = await asyncio.wait({ready, task}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        ready.cancel()
        task.result()  # raises what stopped the agent
        raise RuntimeError("the agent stopped before it started")
    if ready not in done:
        ready.cancel()
        raise TimeoutError("the agent's sources did not start within 60 s")
    for source, _ in agent.sources:
        port = getattr(source, "bound_port", None)
        if port is not None:
            return int(port)
    raise RuntimeError("the HTTP source has no port")


def _caught_up(agent: Agent, produced: dict[str, int]) -> bool:
    stats = agent.stats()["sources"]
    return all(stats.get(name, {}).get("received", 0) >= count for name, count in produced.items())


def _live(agent: Agent, produced: dict[str, int], futures: dict[str, Any], elapsed: float) -> str:
    stats = agent.stats()
    sources = stats["sources"]
    parts = []
    for name in futures:
        received = sources.get(name, {}).get("received", 0)
        parts.append(f"{name} {received:,} ({received / max(elapsed, 0.1):,.0f}/s)")
    producer: dict[str, Any] = next(iter(stats["streams"].values()), {})
    return (
        f"{elapsed:5.1f} s | " + " | ".join(parts)
        + f" | buffered {producer.get('queue_size', 0):,} | retried "
        f"{producer.get('total_retried', 0):,} | DLQ {producer.get('total_failed', 0):,}"
    )  # fmt: skip


def _poster(url: str) -> Callable[[bytes], None]:
    def post(body: bytes) -> None:
        request = urllib.request.Request(
            url, data=body, headers={"Content-Type": "application/x-ndjson"}, method="POST"
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = orjson.loads(response.read())
            if answer.get("failed"):
                log.warning("Events were not accepted.", extra={"answer": answer})

    return post


def _publish(
    broker: str,
    run_id: str,
    rates: dict[str, float],
    duration_s: float,
    halt: threading.Event,
    seed: int,
) -> int:
    from paho.mqtt import client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from kingest.sources.mqtt.source import parse_broker

    host, port = parse_broker(broker)
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    client.max_inflight_messages_set(1000)
    client.connect(host, port)
    client.loop_start()
    pending: list[Any] = []

    def publish(topic: str, payload: bytes) -> None:
        pending.append(client.publish(topic, payload, qos=1))
        if len(pending) >= 500:
            for info in pending:
                info.wait_for_publish(30)
            pending.clear()

    try:
        return publish_iot(
            publish, Pacer(rates["iot_sensors"], duration_s, halt), prefix=f"kdemo/{run_id}",
            seed=seed, tag=f"{run_id}-i",
        )  # fmt: skip
    finally:
        for info in pending:
            info.wait_for_publish(30)
        client.disconnect()
        client.loop_stop()


def _simulated_changes(path: Path, pacer: Pacer, seed: int, run_id: str) -> int:
    """Simulated change events as JSON lines, each with its partition key and a tag."""
    from kingest.sources.simulate import partition_key_for

    simulator = CdcSimulator(seed)
    count = 0
    with path.open("ab") as handle:
        for due in pacer.slices():
            for event in simulator.events(due):
                event["event_id"] = f"{run_id}-c-{count}"
                event["partition_key"] = partition_key_for("database_cdc", event)
                handle.write(orjson.dumps(event) + b"\n")
                count += 1
            handle.flush()
    return count
