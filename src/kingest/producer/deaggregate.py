"""Unpack KPL aggregated records: the reading side of :mod:`kingest.producer.aggregate`.

Decoding accepts what protobuf accepts (fields in any order, unknown fields of every wire type,
tags) and refuses the rest with :class:`~kingest.errors.AggregationFormatError`, plus what
protobuf would let through but no producer can mean: a missing required field, a key index
outside its table, a key that is not UTF-8.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Final

from kingest.errors import AggregationFormatError
from kingest.producer.aggregate import (
    _DIGEST_SIZE,
    _TAG_EHK_INDEX,
    _TAG_EHK_TABLE,
    _TAG_PK_INDEX,
    _TAG_PK_TABLE,
    _TAG_RECORDS,
    AGGREGATION_OVERHEAD,
    MAGIC,
)

_TAG_DATA: Final = 0x1A  # Record.data: field 3, length-delimited
_TAG_TAGS: Final = 0x22  # Record.tags: field 4, length-delimited (never written; checked, skipped)

_WIRE_VARINT: Final = 0
_WIRE_FIXED64: Final = 1
_WIRE_LEN: Final = 2
_WIRE_START_GROUP: Final = 3
_WIRE_END_GROUP: Final = 4
_WIRE_FIXED32: Final = 5

_UINT64_MASK: Final = (1 << 64) - 1
_MAX_TAG: Final = (1 << 32) - 1  # tags are uint32 on the wire; protobuf rejects larger ones
_MAX_VARINT_SHIFT: Final = 70  # 10 bytes of 7 bits: the longest varint protobuf accepts
_MAX_VARINT32_BYTES: Final = 5  # ... and the longest it accepts for a tag or a length


@dataclass(frozen=True, slots=True)
class UserRecord:
    """One record as its producer put it, recovered from a Kinesis record.

    Attributes:
        partition_key: the user record's own partition key.
        explicit_hash_key: its explicit hash key, or None when it had none.
        data: its data.
        sub_sequence_number: its index inside the aggregated record (0 for a plain record).
    """

    partition_key: str
    explicit_hash_key: str | None
    data: bytes
    sub_sequence_number: int


def is_aggregated(data: bytes) -> bool:
    """Tell whether a Kinesis record's data is a KPL aggregate with an intact digest.

    Args:
        data: the Kinesis record's data.

    Returns:
        True when it starts with :data:`MAGIC`, is at least :data:`AGGREGATION_OVERHEAD` bytes
        long and its last 16 bytes are the MD5 of the bytes between. The protobuf body is not
        parsed; :func:`deaggregate` does that.
    """
    end = len(data) - _DIGEST_SIZE
    if end < len(MAGIC) or not data.startswith(MAGIC):
        return False
    body = memoryview(data)[len(MAGIC) : end]
    return hashlib.md5(body, usedforsecurity=False).digest() == data[end:]


def deaggregate(
    data: bytes, partition_key: str, explicit_hash_key: str | None = None
) -> list[UserRecord]:
    """Recover the user records carried by one Kinesis record.

    Args:
        data: the Kinesis record's data.
        partition_key: the Kinesis record's partition key (used only for a plain record).
        explicit_hash_key: the Kinesis record's explicit hash key (plain record only).

    Returns:
        For data that does not start with :data:`MAGIC`, one ``UserRecord(partition_key,
        explicit_hash_key, data, 0)``. For an aggregate, its user records in order, each with
        its own keys and ``sub_sequence_number`` equal to its index; an empty list for the
        20-byte aggregate of zero records (which the KCL would hand back as a plain record).

    Raises:
        AggregationFormatError: the data starts with :data:`MAGIC` but is too short, its MD5
            does not match, or its protobuf body is malformed (truncated, bad wire type, invalid
            UTF-8 in a key, missing required field, key index out of range). The KCL and
            ``aws_kinesis_agg`` pass a bad digest or an unparsable body on as one plain record
            (and log and drop what follows a bad key index); this refuses it instead, because
            plain data practically never starts with the magic: such data is damage.
    """
    if not data.startswith(MAGIC):
        return [UserRecord(partition_key, explicit_hash_key, data, 0)]
    if type(data) is not bytes:
        data = bytes(data)  # slices of the data must come out as bytes
    end = len(data) - _DIGEST_SIZE
    if end < len(MAGIC):
        raise AggregationFormatError(
            f"data starts with the KPL aggregation magic but is only {len(data)} bytes long; "
            f"an aggregated record has at least {AGGREGATION_OVERHEAD}"
        )
    body = memoryview(data)[len(MAGIC) : end]
    if hashlib.md5(body, usedforsecurity=False).digest() != data[end:]:
        raise AggregationFormatError(
            f"aggregated record of {len(data)} bytes fails its MD5 check: the data is damaged"
        )
    pk_table, ehk_table, records = _decode_body(data, len(MAGIC), end)
    out: list[UserRecord] = []
    n_pk, n_ehk = len(pk_table), len(ehk_table)
    for index, (pk_index, ehk_index, record_data) in enumerate(records):
        if pk_index >= n_pk:
            raise _corrupt(
                f"user record {index} points at partition key {pk_index}, but the table has {n_pk}"
            )
        if ehk_index is None:
            ehk = None
        elif ehk_index < n_ehk:
            ehk = ehk_table[ehk_index]
        else:
            raise _corrupt(
                f"user record {index} points at explicit hash key {ehk_index}, "
                f"but the table has {n_ehk}"
            )
        out.append(UserRecord(pk_table[pk_index], ehk, record_data, index))
    return out


# --- protobuf wire decoding ---------------------------------------------------------------------
# Offsets in error messages count from the start of the Kinesis record's data (magic included).
# The loops below inline the common case (one-byte tags and varints) and call the general
# helpers for everything else.


def _corrupt(message: str) -> AggregationFormatError:
    return AggregationFormatError(f"aggregated record is malformed: {message}")


def _read_varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """Read a varint at ``pos``; return (value truncated to uint64, position after it)."""
    start = pos
    result = 0
    shift = 0
    while pos < end:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            # Like protobuf, keep the low 64 bits of an over-wide 10-byte varint.
            return result & _UINT64_MASK, pos
        shift += 7
        if shift >= _MAX_VARINT_SHIFT:
            raise _corrupt(f"varint longer than 10 bytes at offset {start}")
    raise _corrupt(f"truncated varint at offset {start}")


def _read_tag(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """Read a field tag at ``pos`` (< end); return (tag, position after it)."""
    start = pos
    tag, pos = _read_varint(buf, pos, end)
    if tag > _MAX_TAG or pos - start > _MAX_VARINT32_BYTES:
        raise _corrupt(f"field tag too large at offset {start}")
    if tag >> 3 == 0:
        raise _corrupt(f"field number 0 at offset {start}")
    return tag, pos


def _read_length(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """Read a length prefix; return (start, stop) of the bytes it delimits."""
    start = pos
    length, pos = _read_varint(buf, pos, end)
    if pos - start > _MAX_VARINT32_BYTES:
        raise _corrupt(f"length prefix longer than 5 bytes at offset {start}")
    stop = pos + length
    if stop > end:
        raise _corrupt(f"field at offset {start} claims {length} bytes, only {end - pos} remain")
    return pos, stop


def _skip_field(buf: bytes, pos: int, end: int, tag: int) -> int:
    """Skip the value of a field nobody reads (unknown, a Tag, or a wire type mismatch).

    Args:
        buf, end: the data and the end of the enclosing message.
        pos: position just after the tag.
        tag: the tag, which may not have been validated yet.

    Returns:
        The position after the field's value.
    """
    if tag >> 3 == 0:
        raise _corrupt(f"field number 0 before offset {pos}")
    wire = tag & 7
    if wire == _WIRE_VARINT:
        return _read_varint(buf, pos, end)[1]
    if wire == _WIRE_LEN:
        return _read_length(buf, pos, end)[1]
    if wire in (_WIRE_FIXED64, _WIRE_FIXED32):
        stop = pos + (8 if wire == _WIRE_FIXED64 else 4)
        if stop > end:
            raise _corrupt(f"truncated fixed-size field at offset {pos}")
        return stop
    if wire == _WIRE_START_GROUP:
        # Deprecated groups still follow the wire rules: skip up to the matching end tag.
        # An explicit stack rather than recursion, so hostile nesting cannot blow the stack.
        open_groups = [tag >> 3]
        while open_groups:
            if pos >= end:
                raise _corrupt(f"unterminated group at offset {pos}")
            inner_tag, pos = _read_tag(buf, pos, end)
            inner_wire = inner_tag & 7
            if inner_wire == _WIRE_END_GROUP:
                if open_groups.pop() != inner_tag >> 3:
                    raise _corrupt(f"mismatched end of group before offset {pos}")
            elif inner_wire == _WIRE_START_GROUP:
                open_groups.append(inner_tag >> 3)
            else:
                pos = _skip_field(buf, pos, end, inner_tag)
        return pos
    # An end-group tag with no group open, or wire types 6 and 7, which do not exist.
    raise _corrupt(f"invalid wire type {wire} for field {tag >> 3} before offset {pos}")


def _check_fields(buf: bytes, pos: int, end: int) -> None:
    """Check that ``buf[pos:end]`` is a well-formed sequence of protobuf fields."""
    while pos < end:
        tag, pos = _read_tag(buf, pos, end)
        pos = _skip_field(buf, pos, end, tag)


def _decode_text(buf: bytes, start: int, stop: int, what: str) -> str:
    try:
        return buf[start:stop].decode("utf-8")
    except UnicodeDecodeError:
        raise _corrupt(f"{what} at offset {start} is not valid UTF-8") from None


def _decode_body(
    buf: bytes, pos: int, end: int
) -> tuple[list[str], list[str], list[tuple[int, int | None, bytes]]]:
    """Parse an AggregatedRecord from ``buf[pos:end]``.

    Returns:
        (partition key table, explicit hash key table, [(pk index, ehk index or None, data)]).
        Indexes are not checked against the tables here: fields may come in any order.
    """
    pk_table: list[str] = []
    ehk_table: list[str] = []
    records: list[tuple[int, int | None, bytes]] = []
    while pos < end:
        tag = buf[pos]
        if tag < 0x80:
            pos += 1
        else:
            tag, pos = _read_tag(buf, pos, end)
        # A known field number with another wire type is an unknown field to protobuf, and
        # is skipped here too.
        if tag == _TAG_RECORDS:
            start, pos = _read_length(buf, pos, end)
            records.append(_decode_record(buf, start, pos, len(records)))
        elif tag == _TAG_PK_TABLE:
            start, pos = _read_length(buf, pos, end)
            pk_table.append(_decode_text(buf, start, pos, "partition key"))
        elif tag == _TAG_EHK_TABLE:
            start, pos = _read_length(buf, pos, end)
            ehk_table.append(_decode_text(buf, start, pos, "explicit hash key"))
        else:
            pos = _skip_field(buf, pos, end, tag)
    return pk_table, ehk_table, records


def _decode_record(buf: bytes, pos: int, end: int, index: int) -> tuple[int, int | None, bytes]:
    """Parse one Record from ``buf[pos:end]``; Tag entries and unknown fields are skipped."""
    start = pos
    pk_index: int | None = None
    ehk_index: int | None = None
    data: bytes | None = None
    # A singular field that occurs twice keeps its last value, as protobuf merges it.
    while pos < end:
        tag = buf[pos]
        if tag < 0x80:
            pos += 1
        else:
            tag, pos = _read_tag(buf, pos, end)
        if tag in (_TAG_PK_INDEX, _TAG_EHK_INDEX):
            if pos < end and buf[pos] < 0x80:
                value = buf[pos]
                pos += 1
            else:
                value, pos = _read_varint(buf, pos, end)
            if tag == _TAG_PK_INDEX:
                pk_index = value
            else:
                ehk_index = value
        elif tag == _TAG_DATA:
            data_start, pos = _read_length(buf, pos, end)
            data = buf[data_start:pos]
        elif tag == _TAG_TAGS:
            # Tag is a message type, so protobuf parses it: check its wire structure the same
            # way, then drop it (the producer's tags mean nothing to a Kinesis consumer).
            tag_start, pos = _read_length(buf, pos, end)
            _check_fields(buf, tag_start, pos)
        else:
            pos = _skip_field(buf, pos, end, tag)
    if pk_index is None or data is None:
        missing = "partition_key_index" if pk_index is None else "data"
        raise _corrupt(f"user record {index} at offset {start} has no {missing}")
    return pk_index, ehk_index, data
