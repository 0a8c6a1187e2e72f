"""Simulators driven into the real inputs of the sources, at a chosen rate.

Each driver takes a simulator's output to where a real source would find it:

- :func:`append_weblog`: combined-format lines appended to a file (for the file source);
- :func:`publish_iot`: readings published to an MQTT broker, one topic per device
  (``sensors/{device_type}/{device_id}``, for the MQTT source);
- :func:`write_cdc`: the simulated shop's transactions applied to real tables of PostgreSQL or
  MariaDB/MySQL (for the CDC sources), or, with no database, the change events themselves;
- :func:`post_events`: application events POSTed in NDJSON batches (for the HTTP source).

Each runs until its duration is over or ``stop`` is set, paced in 10 ms slices, and returns
how many items it produced. An optional ``tag`` is added to each item (a query parameter of the
logged request, a payload field, a column) so that a reader can tell them apart and count them.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import orjson

from kingest.sources.simulate.cdc import CdcSimulator
from kingest.sources.simulate.iot import IoTSimulator
from kingest.sources.simulate.weblog import WebLogSimulator

__all__ = [
    "EVENT_TYPES",
    "Pacer",
    "append_weblog",
    "post_events",
    "prepare_tables",
    "publish_iot",
    "sim_tables",
    "write_cdc",
]

EVENT_TYPES: Final = ("page_view", "search", "add_to_cart", "purchase", "login")
_SLICE_S: Final = 0.01


class Pacer:
    """How many items are due, slice by slice, to keep ``rate`` per second.

    Args:
        rate: items per second.
        duration_s: how long to run; None: until ``stop``.
        stop: ends the run early when set.
    """

    def __init__(
        self, rate: float, duration_s: float | None, stop: threading.Event | None = None
    ) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be positive, not {rate}")
        self.rate = rate
        self.duration_s = duration_s
        self.stop = stop or threading.Event()

    def slices(self) -> Iterator[int]:
        """Counts of items due now, until the time is up (late slices catch up)."""
        started = time.monotonic()
        done = 0
        while not self.stop.is_set():
            elapsed = time.monotonic() - started
            if self.duration_s is not None and elapsed >= self.duration_s:
                total = int(self.rate * self.duration_s)
                if total > done:
                    yield total - done
                return
            due = int(elapsed * self.rate) + 1 - done
            if due > 0:
                yield due
                done += due
            self.stop.wait(_SLICE_S)


def append_weblog(path: Path, pacer: Pacer, *, seed: int | None = None, tag: str = "") -> int:
    """Append combined-format lines to ``path`` (created if missing); the count.

    With ``tag``, each request's target gets ``?rid=<tag>-<n>`` (or ``&rid=``), so that every
    line can be found again after parsing.
    """
    simulator = WebLogSimulator(seed, clock=lambda: datetime.now(UTC))
    count = 0
    with path.open("a", encoding="utf-8") as handle:
        for due in pacer.slices():
            lines = simulator.lines(due)
            if tag:
                lines = [_tag_request(line, f"{tag}-{count + i}") for i, line in enumerate(lines)]
            handle.write("\n".join(lines) + "\n")
            handle.flush()
            count += due
    return count


def _tag_request(line: str, rid: str) -> str:
    # The request line is the first quoted field; its target is its second word.
    start = line.index('"') + 1
    method_end = line.index(" ", start)
    target_end = line.index(" ", method_end + 1)
    target = line[method_end + 1 : target_end]
    joiner = "&" if "?" in target else "?"
    return f"{line[:target_end]}{joiner}rid={rid}{line[target_end:]}"


def publish_iot(
    publish: Callable[[str, bytes], None],
    pacer: Pacer,
    *,
    prefix: str = "sensors",
    seed: int | None = None,
    devices: int = 200,
    tag: str = "",
) -> int:
    """Publish readings through ``publish(topic, payload)``; the count.

    Topics are ``{prefix}/{device_type}/{device_id}``; the payload is the reading's JSON (with
    ``event_id`` when tagged).
    """
    simulator = IoTSimulator(seed, devices=devices, clock=lambda: datetime.now(UTC))
    count = 0
    for due in pacer.slices():
        for reading in simulator.readings(due):
            if tag:
                reading["event_id"] = f"{tag}-{count}"
            publish(f"{prefix}/{reading['device_type']}/{reading['device_id']}",
                    orjson.dumps(reading))  # fmt: skip
            count += 1
    return count


def sim_tables(prefix: str) -> dict[str, str]:
    """The simulator's table of each of the seed's tables (``users`` -> ``{prefix}users``)."""
    return {"users": f"{prefix}users", "orders": f"{prefix}orders"}


_COLUMNS: Final = {
    "users": "user_id integer primary key, username text, email text, created_at text, "
    "status text, tag text",
    "orders": "order_id integer primary key, user_id integer, total_amount numeric(12, 2), "
    "status text, created_at text, tag text",
}


def prepare_tables(connection: Any, dialect: str, tables: dict[str, str]) -> None:
    """Create the simulator's tables if missing and empty them (they are its own: name them
    with ``tables``)."""
    quote = '"' if dialect == "postgres" else "`"
    with connection.cursor() as cursor:
        for name, table in tables.items():
            cursor.execute(f"create table if not exists {quote}{table}{quote} ({_COLUMNS[name]})")
            cursor.execute(f"delete from {quote}{table}{quote}")
    connection.commit()


def write_cdc(
    connection: Any,
    dialect: str,
    pacer: Pacer,
    *,
    tables: dict[str, str],
    seed: int | None = None,
    tag: str = "",
    prepare: bool = True,
) -> int:
    """Apply the simulated shop's transactions to real tables; the number of rows changed.

    With ``prepare``, the tables are first made ready with :func:`prepare_tables`. Each
    simulated transaction is one database transaction. With ``tag``, inserted and updated rows
    carry ``tag = '<tag>-<n>'``, n counting changes.

    Args:
        connection: a DB-API connection (psycopg2 or PyMySQL), not in autocommit.
        dialect: ``postgres`` or ``mysql``.
    """
    if prepare:
        prepare_tables(connection, dialect, tables)
    quote = '"' if dialect == "postgres" else "`"
    simulator = CdcSimulator(seed, clock=lambda: datetime.now(UTC))
    count = 0
    open_tx: Any = None
    with connection.cursor() as cursor:
        for due in pacer.slices():
            for event in simulator.events(due):
                if open_tx is not None and event["transaction_id"] != open_tx:
                    connection.commit()
                open_tx = event["transaction_id"]
                table = f"{quote}{tables[event['table']]}{quote}"
                key = event["primary_key"]
                where = " and ".join(f"{column} = %s" for column in key)
                row = dict(event["after"] or {})
                if tag:
                    row["tag"] = f"{tag}-{count}"
                if event["operation"] == "INSERT":
                    columns = ", ".join(row)
                    marks = ", ".join(["%s"] * len(row))
                    cursor.execute(
                        f"insert into {table} ({columns}) values ({marks})", list(row.values())
                    )
                elif event["operation"] == "UPDATE":
                    changes = ", ".join(f"{column} = %s" for column in row)
                    cursor.execute(
                        f"update {table} set {changes} where {where}",
                        [*row.values(), *key.values()],
                    )
                else:
                    cursor.execute(f"delete from {table} where {where}", list(key.values()))
                count += 1
        connection.commit()
    return count


def post_events(
    post: Callable[[bytes], None],
    pacer: Pacer,
    *,
    batch: int = 100,
    seed: int | None = None,
    tag: str = "",
) -> int:
    """POST application events through ``post(ndjson_body)`` in batches; the count."""
    rng = random.Random(seed)
    users = [f"user_{n:04d}" for n in range(1, 1001)]
    sessions = {user: uuid.UUID(int=rng.getrandbits(128)).hex[:16] for user in users}
    count = 0
    pending: list[bytes] = []
    for due in pacer.slices():
        now = datetime.now(UTC).isoformat(timespec="milliseconds")
        for _ in range(due):
            user = rng.choice(users)
            event: dict[str, Any] = {
                "event_id": f"{tag}-{count}" if tag else uuid.UUID(int=rng.getrandbits(128)).hex,
                "event_type": rng.choice(EVENT_TYPES),
                "user_id": user,
                "session_id": sessions[user],
                "timestamp": now,
                "properties": {"page": f"/products/{rng.randint(1, 500)}"},
            }
            pending.append(orjson.dumps(event))
            count += 1
            if len(pending) >= batch:
                post(b"\n".join(pending))
                pending.clear()
        if pending:
            post(b"\n".join(pending))
            pending.clear()
    return count
