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

Reading aggregates back is :mod:`kingest.producer.deaggregate`.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Sequence
from itertools import islice
from typing import Any, Final

__all__ = [
    "AGGREGATION_OVERHEAD",
    "MAGIC",
    "Aggregator",
    "encode_aggregate",
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
# to 16 KiB) and partition key index fields are memoized in tables that grow on demand: the fill
# loop indexes them directly and takes the general path on the rare IndexError.
_CACHE_SIZE: Final = 1 << 14
_len_prefix_cache: list[bytes] = []
_pk_index_cache: list[bytes] = []

# How many encoded partition key table entries an Aggregator keeps across clear(). The same keys
# recur from one aggregate to the next, and most keys of a typical aggregate are new to it (with
# 5,000 keys and 3,000 records per aggregate, three in four), so reusing their encoding matters.
_KEY_CACHE_LIMIT: Final = 1 << 14


def _grow(table: list[bytes], tag: int, value: int) -> bytes:
    """``tag`` and ``value`` as a varint, from ``table`` (grown to hold it when it is small)."""
    if value < len(table):
        return table[value]
    if value >= _CACHE_SIZE:
        return bytes((tag,)) + _encode_varint(value)
    # Powers of two: a table grows a few times, up to the largest value in use.
    end = min(max(64, 1 << value.bit_length()), _CACHE_SIZE)
    table.extend(bytes((tag,)) + _encode_varint(n) for n in range(len(table), end))
    return table[value]


def _len_prefix(length: int) -> bytes:
    """Tag 0x1A followed by ``length`` as a varint (memoized for small lengths)."""
    return _grow(_len_prefix_cache, _TAG_RECORDS, length)


def _pk_index_field(index: int) -> bytes:
    """Record.partition_key_index with value ``index``, encoded (memoized for small indexes)."""
    return _grow(_pk_index_cache, _TAG_PK_INDEX, index)


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
                try:
                    pk_field = _pk_index_cache[index]
                except IndexError:
                    pk_field = _pk_index_field(index)
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
        try:
            data_prefix = _len_prefix_cache[n]
        except IndexError:
            data_prefix = _len_prefix(n)
        inner = len(pk_field) + len(data_prefix) + n
        try:
            record_prefix = _len_prefix_cache[inner]
        except IndexError:
            record_prefix = _len_prefix(inner)
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
                try:
                    pk_field = _pk_index_cache[index]
                except IndexError:
                    pk_field = _pk_index_field(index)
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
        try:
            data_prefix = _len_prefix_cache[n]
        except IndexError:
            data_prefix = _len_prefix(n)
        inner = len(pk_field) + len(data_prefix) + n
        try:
            record_prefix = _len_prefix_cache[inner]
        except IndexError:
            record_prefix = _len_prefix(inner)
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

    def fill(self, queue: deque[Any], taken: list[Any], max_size: int) -> bool:
        """Move records from the head of ``queue`` into the aggregate while they fit.

        The producer's fill loop in one call: :meth:`add_if_fits` for each record, with the
        per-call work (attribute and method lookups, popping each record) done once per
        aggregate instead.

        Args:
            queue: records with ``partition_key``, ``explicit_hash_key`` and ``data``
                attributes; those added are popped from its head.
            taken: where the added records are appended, in order.
            max_size: the largest acceptable :attr:`size`.

        Returns:
            True when it stopped at a record that did not fit (it stays in ``queue``); False
            when ``queue`` ran empty.

        Raises:
            TypeError, UnicodeEncodeError: as :meth:`add_if_fits`; the records before the one
                refused are added and taken.
        """
        pk_fields = self._pk_fields
        entry_cache = self._pk_entry_cache
        add_pk_chunk = self._pk_chunks.append
        extend = self._extend
        prefixes = _len_prefix_cache
        index_fields = _pk_index_cache
        budget = max_size - AGGREGATION_OVERHEAD
        body = self._body_size
        stopped = False
        count = 0
        try:
            # Iterated, not popped one by one: the records added leave the queue at the end.
            for count, record in enumerate(queue):  # noqa: B007 - count is read after the loop
                data = record.data
                key = record.partition_key
                if record.explicit_hash_key is None and type(data) is bytes:
                    n = len(data)
                    pk_field = pk_fields.get(key)
                    try:
                        data_prefix = prefixes[n]
                        if pk_field is None:
                            # A new key is the common case (most keys of an aggregate are new
                            # to it): stage the entry and commit it only if the record fits.
                            pk_entry = entry_cache.get(key) or self._pk_entry(key)
                            pk_field = index_fields[len(pk_fields)]
                            inner = len(pk_field) + len(data_prefix) + n
                            record_prefix = prefixes[inner]
                            added = len(record_prefix) + inner + len(pk_entry)
                            if body + added > budget:
                                stopped = True
                                break
                            pk_fields[key] = pk_field
                            add_pk_chunk(pk_entry)
                        else:
                            inner = len(pk_field) + len(data_prefix) + n
                            record_prefix = prefixes[inner]
                            added = len(record_prefix) + inner
                            if body + added > budget:
                                stopped = True
                                break
                        extend((record_prefix, pk_field, data_prefix, data))
                        body += added
                        continue
                    except IndexError:
                        pass  # a length or index past the tables: the general path grows them
                # The rare kinds (an explicit hash key, data that is not bytes) too.
                self._body_size = body
                if not self.add_if_fits(key, record.explicit_hash_key, data, max_size):
                    stopped = True
                    break
                body = self._body_size
            else:
                count = len(queue)
        finally:
            self._body_size = body
            if count == len(queue):
                taken += queue
                queue.clear()
            elif count:
                taken += islice(iter(queue.popleft, None), count)
        return stopped

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
