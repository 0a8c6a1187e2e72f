"""Seedable simulators of the seed's three sources, and the partition key each record gets.

This package's one job is realistic test data for the specification's sources: web access log
lines (:class:`WebLogSimulator`, parsed by :func:`parse_combined`), IoT sensor readings
(:class:`IoTSimulator`) and database change events (:class:`CdcSimulator`). Each simulator is
pure: its output is a function of its seed, so tests and demos are reproducible.

:func:`partition_key_for` replaces the seed's ``_generate_partition_key``, whose CDC keys used
the transaction id (one row's changes scattered over shards, out of order) and whose fallback
used Python's ``hash()`` (salted per process, so keys moved on every restart).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Final

import orjson

from kingest.producer.limits import PARTITION_KEY_MAX_CHARS
from kingest.sources.simulate.cdc import TABLES, CdcSimulator, change_type, primary_key_of
from kingest.sources.simulate.iot import DEVICE_TYPES, IoTSimulator
from kingest.sources.simulate.weblog import WebLogSimulator, parse_combined

__all__ = [
    "DEVICE_TYPES",
    "SOURCES",
    "TABLES",
    "CdcSimulator",
    "IoTSimulator",
    "WebLogSimulator",
    "change_type",
    "parse_combined",
    "partition_key_for",
    "primary_key_of",
]

SOURCES: Final = ("web_logs", "iot_sensors", "database_cdc")


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def _fit(key: str) -> str:
    """Keep a key within Kinesis's limit without losing its grouping: the same long key always
    becomes the same short one."""
    if len(key) <= PARTITION_KEY_MAX_CHARS:
        return key
    return f"{key[:200]}#{_digest(key.encode())}"


def _text(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def partition_key_for(source: str, record: Mapping[str, Any]) -> str:
    """The partition key of a record of one of the seed's sources.

    Records with the same key land on the same shard in order, so the key is whatever must
    stay together and ordered:

    * ``web_logs``: the ``session_id`` when present, else the ``ip_address`` (one visitor's
      requests in order);
    * ``iot_sensors``: the ``device_id`` (one device's readings in order);
    * ``database_cdc``: ``"{database}.{table}:{primary key}"`` (one row's changes in order;
      composite keys are joined with commas in key column order);
    * any other source: ``"{source}:{digest of the record}"``, stable across processes.

    A key longer than Kinesis's 256 characters is shortened with a digest of the whole key.

    Raises:
        ValueError: the record lacks the field its source is keyed by (a constant fallback
            would pile every such record onto one shard, as the seed's ``'default'`` did).
    """
    if source == "web_logs":
        key = record.get("session_id") or record.get("ip_address")
        if not key:
            raise ValueError("web log record has neither session_id nor ip_address")
        return _fit(_text(key))
    if source == "iot_sensors":
        device_id = record.get("device_id")
        if not device_id:
            raise ValueError("IoT record has no device_id")
        return _fit(_text(device_id))
    if source == "database_cdc":
        database = record.get("database")
        table = record.get("table")
        if not database or not table:
            raise ValueError("change event has no database or table")
        values = ",".join(_text(value) for value in primary_key_of(record).values())
        return _fit(f"{database}.{table}:{values}")
    return _fit(f"{source}:{_digest(orjson.dumps(record, option=orjson.OPT_SORT_KEYS))}")
