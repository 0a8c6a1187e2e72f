"""Records as read back: one Kinesis record unpacked into user records, and their JSON envelopes.

This module's one job is the per-record side of reading a stream, with no I/O:
:func:`unpack_record` turns one Kinesis record of a GetRecords answer into :class:`ReadRecord`
objects (the user records of a KPL aggregate, or a plain record as itself), and
:func:`envelope` / :func:`envelope_line` describe a record as the JSON object
``kingest read --envelope`` prints, its data as exact JSON, text or base64
(:func:`encode_data`). Reading the stream itself is :mod:`kingest.reader`'s job.

A Kinesis record whose data starts with the KPL magic but is damaged (bad MD5, malformed body)
is never dropped: it is passed on as one :class:`ReadRecord` with ``corrupt=True`` and its raw
data, and a warning naming its shard and sequence number is logged.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

from kingest.errors import AggregationFormatError, KinesisError
from kingest.producer.deaggregate import deaggregate

__all__ = [
    "ReadRecord",
    "encode_data",
    "envelope",
    "envelope_line",
    "unpack_record",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ReadRecord:
    """One user record as read back from the stream.

    Attributes:
        shard_id: the shard that stored it.
        sequence_number: sequence number of the Kinesis record that carried it.
        sub_sequence_number: its index inside that Kinesis record when aggregated, else 0.
        partition_key: the user record's own partition key.
        explicit_hash_key: its explicit hash key; None when it had none (plain records never
            show one: GetRecords does not return it).
        arrival: the Kinesis record's ApproximateArrivalTimestamp in epoch seconds, if given.
        data: the user record's data (for a corrupt aggregate: the whole undecoded data).
        corrupt: True when the Kinesis record starts with the KPL magic but could not be
            decoded; it is then passed on whole instead of as its user records.
    """

    shard_id: str
    sequence_number: str
    sub_sequence_number: int
    partition_key: str
    explicit_hash_key: str | None
    arrival: float | None
    data: bytes
    corrupt: bool = False


def unpack_record(shard_id: str, record: dict[str, Any]) -> list[ReadRecord]:
    """Turn one Kinesis record of a GetRecords answer into its user records.

    Args:
        shard_id: the shard the record was read from.
        record: one element of the answer's ``Records`` (``Data`` in base64).

    Returns:
        The user records of an aggregate in order; a plain record as itself; a damaged
        aggregate as one record with ``corrupt=True`` (a warning is logged). An aggregate of
        zero user records yields nothing.

    Raises:
        KinesisError: the record lacks a field GetRecords always sends, or its data is not
            base64 (the answer itself is broken, not the record).
    """
    try:
        sequence_number = str(record["SequenceNumber"])
        partition_key = str(record["PartitionKey"])
        data = base64.b64decode(record["Data"], validate=True)
    except (KeyError, TypeError, binascii.Error) as exc:
        raise KinesisError(
            f"GetRecords answered a malformed record in shard {shard_id}: {exc!r}",
            code="MalformedAnswer",
            retriable=False,
        ) from exc
    raw_arrival = record.get("ApproximateArrivalTimestamp")
    arrival = float(raw_arrival) if isinstance(raw_arrival, int | float) else None
    try:
        users = deaggregate(data, partition_key)
    except AggregationFormatError as exc:
        log.warning(
            "Corrupt aggregated record in shard %s at sequence number %s (%s); "
            "it is passed on undecoded.",
            shard_id,
            sequence_number,
            exc,
        )
        return [ReadRecord(shard_id, sequence_number, 0, partition_key, None, arrival, data, True)]
    return [
        ReadRecord(
            shard_id,
            sequence_number,
            user.sub_sequence_number,
            user.partition_key,
            user.explicit_hash_key,
            arrival,
            user.data,
        )
        for user in users
    ]


# --- envelope ----------------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _exact_int(text: str) -> int:
    value = int(text)
    # orjson reads integers beyond 64 bits as doubles, which would change the number.
    if not -(2**63) <= value < 2**64:
        raise ValueError("integer beyond 64 bits")
    return value


def _exact_float(text: str) -> float:
    value = float(text)
    try:
        # The double must print as the same number the text denotes ("1.10" and "1.1e0" pass;
        # "0.1000000000000000000001" would come out as 0.1 and fails).
        same = Decimal(repr(value)) == Decimal(text)
    except InvalidOperation:
        same = False
    if not same:
        raise ValueError("number not representable as a double")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) != len(pairs):
        raise ValueError("duplicate object key")
    return value


def _json_value(data: bytes) -> tuple[bool, Any]:
    """Return (True, value) when ``data`` is UTF-8 JSON whose value says exactly what it does."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return False, None
    try:
        if orjson.dumps(value) == data:
            return True, value  # compact canonical JSON (what the producer writes): exact
    except orjson.JSONEncodeError:
        return False, None  # nested deeper than orjson writes
    # JSON with whitespace, or with something orjson reads loosely: accept it only if the
    # parsed value means the same (no number rounded, no duplicate key silently dropped).
    try:
        json.loads(
            data.decode("utf-8"),
            parse_int=_exact_int,
            parse_float=_exact_float,
            parse_constant=_reject_constant,
            object_pairs_hook=_unique_keys,
        )
    except (ValueError, RecursionError):
        return False, None
    return True, value


def encode_data(data: bytes) -> tuple[str, Any]:
    """Choose how a payload appears in an envelope.

    Args:
        data: the user record's data.

    Returns:
        ``("json", value)`` when the data is UTF-8 JSON that parses without loss (the value,
        not the bytes: insignificant whitespace is not kept); ``("text", str)`` for other valid
        UTF-8; ``("base64", {"base64": "..."})`` for anything else. The exact bytes are always
        recoverable from "text" and "base64"; from "json" up to whitespace.
    """
    is_json, value = _json_value(data)
    if is_json:
        return "json", value
    try:
        return "text", data.decode("utf-8")
    except UnicodeDecodeError:
        return "base64", {"base64": base64.b64encode(data).decode("ascii")}


def envelope(record: ReadRecord) -> dict[str, Any]:
    """Describe a record as the JSON object ``kingest read --envelope`` prints.

    Args:
        record: the record read.

    Returns:
        ``shard_id``, ``sequence_number``, ``sub_sequence_number``, ``partition_key``,
        ``explicit_hash_key`` (only when the record has one), ``approximate_arrival_timestamp``
        (epoch seconds or null), ``data_encoding`` ("json", "text" or "base64") and ``data``
        (see :func:`encode_data`). A corrupt aggregate always has ``data_encoding`` "base64"
        and ``corrupt_aggregate: true``.
    """
    obj: dict[str, Any] = {
        "shard_id": record.shard_id,
        "sequence_number": record.sequence_number,
        "sub_sequence_number": record.sub_sequence_number,
        "partition_key": record.partition_key,
    }
    if record.explicit_hash_key is not None:
        obj["explicit_hash_key"] = record.explicit_hash_key
    obj["approximate_arrival_timestamp"] = record.arrival
    if record.corrupt:
        # Damaged bytes shown as text or JSON would invite reading them as a record.
        obj["data_encoding"] = "base64"
        obj["data"] = {"base64": base64.b64encode(record.data).decode("ascii")}
        obj["corrupt_aggregate"] = True
    else:
        obj["data_encoding"], obj["data"] = encode_data(record.data)
    return obj


def envelope_line(record: ReadRecord) -> bytes:
    """The envelope of a record as one line of compact JSON, newline included."""
    return orjson.dumps(envelope(record), option=orjson.OPT_APPEND_NEWLINE)
