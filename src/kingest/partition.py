"""Partition keys, hash keys and the map from hash key to shard.

Kinesis places a record by the MD5 of its partition key read as a 128-bit big-endian integer
(or by its explicit hash key). Knowing the shard map lets the producer aggregate only records
bound for the same shard, which is what keeps KPL consumers from discarding sub-records.
"""

from __future__ import annotations

import bisect
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from kingest.producer.limits import MAX_HASH_KEY, PARTITION_KEY_MAX_CHARS

_md5 = hashlib.md5
_blake2b = hashlib.blake2b


# Keys repeat (devices, users, tables): remembering their hashes saves an MD5 per record.
_HASH_CACHE_MAX = 65_536
_hash_cache: dict[str, int] = {}


def hash_key_of(partition_key: str) -> int:
    """The 128-bit hash Kinesis computes for a partition key."""
    hash_key = _hash_cache.get(partition_key)
    if hash_key is None:
        hash_key = computed_hash_key(partition_key)
        if len(_hash_cache) >= _HASH_CACHE_MAX:
            _hash_cache.clear()
        _hash_cache[partition_key] = hash_key
    return hash_key


def computed_hash_key(partition_key: str) -> int:
    """:func:`hash_key_of` without its cache, for a caller keeping its own."""
    return int.from_bytes(_md5(partition_key.encode()).digest(), "big")


def default_partition_key(data: bytes) -> str:
    """A key derived from the data itself: stable across restarts and evenly spread.

    Python's ``hash()`` is salted per process, so keys built with it move on every restart;
    a content digest does not.
    """
    return _blake2b(data, digest_size=8).hexdigest()


def partition_key_problem(partition_key: str) -> str | None:
    """Why a partition key is unusable, or None when Kinesis will take it."""
    if not partition_key:
        return "partition key is empty"
    if len(partition_key) > PARTITION_KEY_MAX_CHARS:
        return (
            f"partition key has {len(partition_key)} characters; "
            f"Kinesis takes at most {PARTITION_KEY_MAX_CHARS}"
        )
    return None


# Kinesis' pattern for ExplicitHashKey; anything else fails the whole PutRecords request.
_CANONICAL_HASH_KEY = re.compile(r"0|[1-9][0-9]{0,38}")


def parse_explicit_hash_key(value: str) -> int:
    """Parse an explicit hash key (a decimal 128-bit unsigned integer).

    Raises:
        ValueError: not a decimal integer in [0, 2**128 - 1].
    """
    if not _CANONICAL_HASH_KEY.fullmatch(value):
        raise ValueError(
            f"explicit hash key {value[:50]!r} is not a decimal integer without leading zeros"
        )
    number = int(value)
    if number > MAX_HASH_KEY:
        raise ValueError("explicit hash key is larger than 2**128 - 1")
    return number


@dataclass(frozen=True, slots=True)
class Shard:
    """An open shard and the hash-key range it owns (both ends included)."""

    shard_id: str
    starting_hash_key: int
    ending_hash_key: int

    def owns(self, hash_key: int) -> bool:
        """True when a record with this hash key belongs to this shard."""
        return self.starting_hash_key <= hash_key <= self.ending_hash_key


class ShardMap:
    """Open shards sorted by hash range, with an O(log n) lookup.

    Args:
        shards: the open shards; their ranges must cover the hash space without overlap.
    """

    def __init__(self, shards: Iterable[Shard]) -> None:
        self.shards: list[Shard] = sorted(shards, key=lambda s: s.starting_hash_key)
        self._starts = [s.starting_hash_key for s in self.shards]
        self._by_id = {s.shard_id: s for s in self.shards}

    @classmethod
    def from_list_shards(cls, shards: Sequence[dict[str, Any]]) -> ShardMap:
        """Build from ListShards entries, keeping only open shards.

        A closed shard (one with an EndingSequenceNumber) takes no more writes; after a split or
        merge its range is owned by its children.
        """
        open_shards = [
            Shard(
                shard_id=s["ShardId"],
                starting_hash_key=int(s["HashKeyRange"]["StartingHashKey"]),
                ending_hash_key=int(s["HashKeyRange"]["EndingHashKey"]),
            )
            for s in shards
            if "EndingSequenceNumber" not in s.get("SequenceNumberRange", {})
        ]
        return cls(open_shards)

    def __len__(self) -> int:
        return len(self.shards)

    def shard_for(self, hash_key: int) -> Shard:
        """The open shard owning ``hash_key``.

        Raises:
            LookupError: the map is empty.
        """
        if not self.shards:
            raise LookupError("the stream has no open shard")
        index = bisect.bisect_right(self._starts, hash_key) - 1
        return self.shards[max(index, 0)]

    def get(self, shard_id: str) -> Shard | None:
        """The open shard with this id, or None."""
        return self._by_id.get(shard_id)
