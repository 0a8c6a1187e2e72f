"""The KPL aggregation format: pack many user records into one Kinesis record, and unpack them.

This module's one job is the byte format the Kinesis Producer Library (KPL) uses to carry many
user records in the data of a single Kinesis record, so that readers using the KCL, Lambda or
``aws_kinesis_agg`` see the original records again. An aggregated record's data is::

    MAGIC (F3 89 9A C2) | protobuf AggregatedRecord | MD5 of the protobuf bytes (16 bytes)

with (proto2)::

    message AggregatedRecord {
      repeated string partition_key_table = 1;
      repeated string explicit_hash_key_table = 2;
      repeated Record records = 3;
    }
    message Record {
      required uint64 partition_key_index = 1;
      optional uint64 explicit_hash_key_index = 2;
      required bytes data = 3;
      repeated Tag tags = 4;
    }
    message Tag { required string key = 1; optional string value = 2; }

The protobuf wire encoding is written and read by hand: the messages are tiny, and doing it here
keeps the hot path (:meth:`Aggregator.add`) free of any per-record message objects. The output is
byte-for-byte what protobuf's canonical serializer produces for the same message.

Nothing here enforces Kinesis limits (record size, key length); :class:`Aggregator` reports exact
sizes so the caller can.

Decoding accepts what protobuf accepts (fields in any order, unknown fields of every wire type,
tags) and refuses the rest with :class:`~kingest.errors.AggregationFormatError`, plus what
protobuf would let through but no producer can mean: a missing required field, a key index
outside its table, a key that is not UTF-8.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from kingest.errors import AggregationFormatError

__all__ = [
    "AGGREGATION_OVERHEAD",
    "MAGIC",
    "Aggregator",
    "UserRecord",
    "deaggregate",
    "encode_aggregate",
    "is_aggregated",
]

MAGIC: Final = b"\xf3\x89\x9a\xc2"
_DIGEST_SIZE: Final = 16  # MD5
AGGREGATION_OVERHEAD: Final = len(MAGIC) + _DIGEST_SIZE

# Wire tags (field_number << 3 | wire_type) of the fields this module writes and reads.
_TAG_PK_TABLE: Final = 0x0A  # AggregatedRecord.partition_key_table: field 1, length-delimited
_TAG_EHK_TABLE: Final = 0x12  # AggregatedRecord.explicit_hash_key_table: field 2, length-delim.
_TAG_RECORDS: Final = 0x1A  # AggregatedRecord.records: field 3, length-delimited
_TAG_PK_INDEX: Final = 0x08  # Record.partition_key_index: field 1, varint
_TAG_EHK_INDEX: Final = 0x10  # Record.explicit_hash_key_index: field 2, varint
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


def _encode_varint(value: int) -> bytes:
    """Encode a non-negative int as a protobuf base-128 varint."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _varint_size(value: int) -> int:
    """Bytes a non-negative int takes as a varint."""
    if value < 0x80:
        return 1
    return (value.bit_length() + 6) // 7


# Both length-delimited fields written per record (AggregatedRecord.records and Record.data) are
# field 3, so one "tag 0x1A + varint length" prefix serves both. Building a bytes object from
# parts costs several times a list lookup, so prefixes for lengths below 2**14 (every record up
# to 16 KiB) and partition key index fields are memoized lazily in fixed tables.
_CACHE_SIZE: Final = 1 << 14
_len_prefix_cache: list[bytes | None] = [None] * _CACHE_SIZE
_pk_index_cache: list[bytes | None] = [None] * _CACHE_SIZE

# How many encoded partition key table entries an Aggregator keeps across clear(). The same keys
# recur from one aggregate to the next, and most keys of a typical aggregate are new to it (with
# 5,000 keys and 3,000 records per aggregate, three in four), so reusing their encoding matters.
_KEY_CACHE_LIMIT: Final = 1 << 14


def _len_prefix(length: int) -> bytes:
    """Tag 0x1A followed by ``length`` as a varint (memoized for small lengths)."""
    prefix = bytes((_TAG_RECORDS,)) + _encode_varint(length)
    if length < _CACHE_SIZE:
        _len_prefix_cache[length] = prefix
    return prefix


def _pk_index_field(index: int) -> bytes:
    """Record.partition_key_index with value ``index``, encoded (memoized for small indexes)."""
    field = bytes((_TAG_PK_INDEX,)) + _encode_varint(index)
    if index < _CACHE_SIZE:
        _pk_index_cache[index] = field
    return field


def _table_entry(tag: int, key: object, what: str) -> bytes:
    """Encode a key table entry (tag, varint length, UTF-8); refuse a key that is not a str."""
    if not isinstance(key, str):
        raise TypeError(f"{what} must be str, not {type(key).__name__}")
    raw = key.encode("utf-8")
    return bytes((tag,)) + _encode_varint(len(raw)) + raw


def _utf8_len(text: str) -> int:
    """Length of ``text`` encoded as UTF-8, without encoding it when it is ASCII."""
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def _as_bytes(data: object) -> bytes:
    """Turn a bytes-like object into bytes; refuse anything else (str included)."""
    if isinstance(data, bytes):
        return data
    if isinstance(data, bytearray | memoryview):
        return bytes(data)
    raise TypeError(f"data must be bytes, not {type(data).__name__}")


class Aggregator:
    """Builds one aggregated record incrementally; cheap per added record.

    The protobuf body is kept as three lists of already-encoded chunks (partition key table,
    explicit hash key table, records) plus a running byte count, so :attr:`size` and
    :meth:`size_if_added` are O(1) arithmetic and :meth:`encode` is one join and one MD5.

    Partition keys and explicit hash keys are deduplicated: each distinct key is written once in
    its table and records refer to it by index. Keys are not validated against Kinesis rules
    (length, hash key range); that is the caller's job. Not thread-safe.
    """

    __slots__ = (
        "_body_size",
        "_ehk_chunks",
        "_ehk_fields",
        "_extend",
        "_pk_chunks",
        "_pk_entry_cache",
        "_pk_fields",
        "_records",
    )

    def __init__(self) -> None:
        # key -> its encoded index field ("tag + varint index"), which records refer to it by.
        self._pk_fields: dict[str, bytes] = {}
        self._ehk_fields: dict[str, bytes] = {}
        self._pk_chunks: list[bytes] = []
        self._ehk_chunks: list[bytes] = []
        # Four chunks per record: length prefix, key index field(s), data prefix, data. Handing
        # them to encode()'s single join is cheaper than concatenating them here, and the data is
        # copied only once.
        self._records: list[bytes] = []
        self._extend = self._records.extend  # bound once; clear() empties the list in place
        self._body_size = 0  # bytes of protobuf so far
        # partition key -> encoded table entry; survives clear() (see _KEY_CACHE_LIMIT).
        self._pk_entry_cache: dict[str, bytes] = {}

    def __len__(self) -> int:
        """Number of user records added."""
        return len(self._records) >> 2

    @property
    def size(self) -> int:
        """Exact size in bytes of :meth:`encode`'s result (AGGREGATION_OVERHEAD when empty)."""
        return self._body_size + AGGREGATION_OVERHEAD

    def size_if_added(self, partition_key: str, explicit_hash_key: str | None, data: bytes) -> int:
        """Exact size of the encoded aggregate if this record were added; changes nothing.

        Args:
            partition_key: the record's partition key.
            explicit_hash_key: its explicit hash key (decimal string), or None.
            data: its data.

        Returns:
            The byte length :meth:`encode` would return after ``add(partition_key,
            explicit_hash_key, data)``: magic, protobuf and digest.

        Raises:
            TypeError: a key is not a str or data is not bytes-like.
        """
        if type(data) is not bytes:
            data = _as_bytes(data)
        size = self._body_size + AGGREGATION_OVERHEAD
        pk_field = self._pk_fields.get(partition_key)
        if pk_field is None:
            entry = self._pk_entry_cache.get(partition_key)
            if entry is None:
                size += self._new_entry_size(partition_key, "partition_key")
            else:
                size += len(entry)
            fields_len = 1 + _varint_size(len(self._pk_fields))
        else:
            fields_len = len(pk_field)
        if explicit_hash_key is not None:
            ehk_field = self._ehk_fields.get(explicit_hash_key)
            if ehk_field is None:
                size += self._new_entry_size(explicit_hash_key, "explicit_hash_key")
                fields_len += 1 + _varint_size(len(self._ehk_fields))
            else:
                fields_len += len(ehk_field)
        n = len(data)
        inner = fields_len + 1 + (1 if n < 0x80 else _varint_size(n)) + n
        return size + 1 + (1 if inner < 0x80 else _varint_size(inner)) + inner

    @staticmethod
    def _new_entry_size(key: object, what: str) -> int:
        if not isinstance(key, str):
            raise TypeError(f"{what} must be str, not {type(key).__name__}")
        key_len = _utf8_len(key)
        return 1 + _varint_size(key_len) + key_len

    def add(self, partition_key: str, explicit_hash_key: str | None, data: bytes) -> None:
        """Append one user record.

        Args:
            partition_key: the record's partition key (any str; Kinesis limits are the caller's).
            explicit_hash_key: its explicit hash key (decimal string), or None to omit it.
            data: its data; bytearray and memoryview are copied to bytes.

        Raises:
            TypeError: a key is not a str or data is not bytes-like (nothing is added).
            UnicodeEncodeError: a key holds lone surrogates (nothing is added).
        """
        if type(data) is not bytes:
            data = _as_bytes(data)
        pk_field = self._pk_fields.get(partition_key)
        if explicit_hash_key is None:
            if pk_field is None:
                # Inlined rather than a helper call: most keys of an aggregate are new to it.
                pk_entry = self._pk_entry_cache.get(partition_key) or self._pk_entry(partition_key)
                index = len(self._pk_fields)
                pk_field = (
                    (_pk_index_cache[index] or _pk_index_field(index))
                    if index < _CACHE_SIZE
                    else _pk_index_field(index)
                )
                self._pk_fields[partition_key] = pk_field
                self._pk_chunks.append(pk_entry)
                self._body_size += len(pk_entry)
        else:
            ehk_field = self._ehk_fields.get(explicit_hash_key)
            if pk_field is None or ehk_field is None:
                pk_field, ehk_field = self._register_keys(partition_key, explicit_hash_key)
            # Rare enough to pay a concatenation, which keeps every record at four chunks.
            pk_field += ehk_field
        n = len(data)
        data_prefix = (
            (_len_prefix_cache[n] or _len_prefix(n)) if n < _CACHE_SIZE else _len_prefix(n)
        )
        inner = len(pk_field) + len(data_prefix) + n
        record_prefix = (
            (_len_prefix_cache[inner] or _len_prefix(inner))
            if inner < _CACHE_SIZE
            else _len_prefix(inner)
        )
        self._extend((record_prefix, pk_field, data_prefix, data))
        self._body_size += len(record_prefix) + inner

    def add_if_fits(
        self, partition_key: str, explicit_hash_key: str | None, data: bytes, max_size: int
    ) -> bool:
        """Append one user record only if the encoded aggregate stays within ``max_size``.

        The same as ``size_if_added(...) <= max_size`` followed by ``add(...)``, in one call
        that looks each key up and encodes it once: the producer's fill loop.

        Args:
            partition_key: the record's partition key.
            explicit_hash_key: its explicit hash key (decimal string), or None.
            data: its data.
            max_size: the largest acceptable :attr:`size` after adding.

        Returns:
            True if the record was added, False (and nothing changed) if it would not fit.

        Raises:
            TypeError: a key is not a str or data is not bytes-like (nothing is added).
            UnicodeEncodeError: a key holds lone surrogates (nothing is added).
        """
        if type(data) is not bytes:
            data = _as_bytes(data)
        pk_field = self._pk_fields.get(partition_key)
        pk_entry = None
        if explicit_hash_key is None:
            if pk_field is None:
                # A new key is the common case (most keys of an aggregate are new to it), so it
                # gets its own fast path: stage the entry and commit it only if the record fits.
                pk_entry = self._pk_entry_cache.get(partition_key) or self._pk_entry(partition_key)
                index = len(self._pk_fields)
                pk_field = (
                    (_pk_index_cache[index] or _pk_index_field(index))
                    if index < _CACHE_SIZE
                    else _pk_index_field(index)
                )
        else:
            ehk_field = self._ehk_fields.get(explicit_hash_key)
            if pk_field is None or ehk_field is None:
                # New keys with an explicit hash key: rare, so the plain two-step path.
                if self.size_if_added(partition_key, explicit_hash_key, data) > max_size:
                    return False
                self.add(partition_key, explicit_hash_key, data)
                return True
            pk_field += ehk_field
        n = len(data)
        data_prefix = (
            (_len_prefix_cache[n] or _len_prefix(n)) if n < _CACHE_SIZE else _len_prefix(n)
        )
        inner = len(pk_field) + len(data_prefix) + n
        record_prefix = (
            (_len_prefix_cache[inner] or _len_prefix(inner))
            if inner < _CACHE_SIZE
            else _len_prefix(inner)
        )
        added = len(record_prefix) + inner
        if pk_entry is not None:
            added += len(pk_entry)
        if self._body_size + added + AGGREGATION_OVERHEAD > max_size:
            return False
        if pk_entry is not None:
            self._pk_fields[partition_key] = pk_field
            self._pk_chunks.append(pk_entry)
        self._extend((record_prefix, pk_field, data_prefix, data))
        self._body_size += added
        return True

    def _pk_entry(self, partition_key: str) -> bytes:
        """The partition key's encoded table entry, from the cache or freshly encoded."""
        cache = self._pk_entry_cache
        entry = cache.get(partition_key)
        if entry is None:
            entry = _table_entry(_TAG_PK_TABLE, partition_key, "partition_key")
            if len(cache) >= _KEY_CACHE_LIMIT:
                cache.clear()  # crude, but cheap and bounded; hot keys come straight back
            cache[partition_key] = entry
        return entry

    def _register_keys(self, partition_key: str, explicit_hash_key: str) -> tuple[bytes, bytes]:
        """Put whichever of the two keys are new in their tables; return both index fields.

        Both keys are encoded before either table changes, so a bad key leaves no trace.
        """
        pk_field = self._pk_fields.get(partition_key)
        pk_entry = None if pk_field is not None else self._pk_entry(partition_key)
        ehk_field = self._ehk_fields.get(explicit_hash_key)
        if ehk_field is None:
            ehk_entry = _table_entry(_TAG_EHK_TABLE, explicit_hash_key, "explicit_hash_key")
            ehk_field = bytes((_TAG_EHK_INDEX,)) + _encode_varint(len(self._ehk_fields))
            self._ehk_fields[explicit_hash_key] = ehk_field
            self._ehk_chunks.append(ehk_entry)
            self._body_size += len(ehk_entry)
        if pk_entry is not None:
            pk_field = _pk_index_field(len(self._pk_fields))
            self._pk_fields[partition_key] = pk_field
            self._pk_chunks.append(pk_entry)
            self._body_size += len(pk_entry)
        assert pk_field is not None
        return pk_field, ehk_field

    def encode(self) -> bytes:
        """The aggregated record's data: magic, protobuf body, MD5 of the body.

        Returns:
            Exactly :attr:`size` bytes; the aggregator is left unchanged. An empty aggregator
            gives the 20-byte aggregate of zero records: never send it, because the KCL and
            ``aws_kinesis_agg`` take an aggregate with an empty body for a plain record.
        """
        # Tables first, then records: field-number order, as protobuf's own serializer writes it.
        parts = [MAGIC]
        parts += self._pk_chunks
        parts += self._ehk_chunks
        parts += self._records
        blob = b"".join(parts)
        # usedforsecurity=False: MD5 is a checksum here, and FIPS-mode OpenSSL refuses it otherwise.
        digest = hashlib.md5(memoryview(blob)[len(MAGIC) :], usedforsecurity=False).digest()
        return blob + digest

    def clear(self) -> None:
        """Forget every record and key, as if newly created (a private encoding cache stays)."""
        self._pk_fields.clear()
        self._ehk_fields.clear()
        self._pk_chunks.clear()
        self._ehk_chunks.clear()
        self._records.clear()  # in place: keeps self._extend bound to it
        self._body_size = 0


def encode_aggregate(records: Sequence[tuple[str, str | None, bytes]]) -> bytes:
    """Encode user records as one aggregated record's data.

    Args:
        records: ``(partition_key, explicit_hash_key or None, data)`` triples, in order.

    Returns:
        The aggregated data blob (magic, protobuf, MD5), whatever its size.

    Raises:
        TypeError: a key is not a str or data is not bytes-like.
    """
    aggregator = Aggregator()
    add = aggregator.add
    for partition_key, explicit_hash_key, data in records:
        add(partition_key, explicit_hash_key, data)
    return aggregator.encode()


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
