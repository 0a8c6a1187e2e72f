"""Partition keys, hash keys and the shard map: what Kinesis computes, and lookups against it."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kingest.partition import (
    Shard,
    ShardMap,
    default_partition_key,
    hash_key_of,
    parse_explicit_hash_key,
    partition_key_problem,
)
from kingest.producer.limits import MAX_HASH_KEY

HALF = 2**127


def _md5_big_endian(key: str) -> int:
    return int.from_bytes(hashlib.md5(key.encode("utf-8")).digest(), "big")


def even_map(n: int, prefix: str = "shardId-") -> ShardMap:
    """n shards splitting the hash space evenly, the way CreateStream does."""
    step = (MAX_HASH_KEY + 1) // n
    shards = []
    for i in range(n):
        end = MAX_HASH_KEY if i == n - 1 else (i + 1) * step - 1
        shards.append(Shard(f"{prefix}{i:012d}", i * step, end))
    return ShardMap(shards)


# ------------------------------------------------------------------------ hash keys


def test_hash_key_known_value() -> None:
    assert hash_key_of("a") == int("0cc175b9c0f1b6a831c399e269772661", 16)
    assert hash_key_of("") == int("d41d8cd98f00b204e9800998ecf8427e", 16)


@given(st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=256))
def test_hash_key_is_md5_read_big_endian(key: str) -> None:
    assert hash_key_of(key) == _md5_big_endian(key)
    assert hash_key_of(key) == _md5_big_endian(key)  # the cached answer is the same
    assert 0 <= hash_key_of(key) <= MAX_HASH_KEY


def test_hash_key_cache_stays_correct_past_its_size() -> None:
    keys = [f"key-{i}" for i in range(70_000)]
    for key in keys:
        hash_key_of(key)
    assert all(hash_key_of(k) == _md5_big_endian(k) for k in keys[::997])


def test_non_ascii_keys_hash_their_utf8_bytes() -> None:
    assert hash_key_of("clé-\u00e9\U0001f600") == _md5_big_endian("clé-\u00e9\U0001f600")


# ------------------------------------------------------------------------ default keys


def test_default_partition_key_is_stable_across_processes() -> None:
    # A fixed value: keys must not move on restart (Python's hash() would).
    assert default_partition_key(b"hello") == "a7b6eda801e5347d"
    assert default_partition_key(b"hello") == hashlib.blake2b(b"hello", digest_size=8).hexdigest()


@given(st.binary(max_size=200), st.binary(max_size=200))
def test_default_partition_key_is_a_valid_key_depending_on_data(a: bytes, b: bytes) -> None:
    key = default_partition_key(a)
    assert key == default_partition_key(a)
    assert partition_key_problem(key) is None
    assert len(key) == 16
    if a != b:
        assert key != default_partition_key(b)


def test_default_keys_spread_over_shards() -> None:
    shard_map = even_map(4)
    counts = [0, 0, 0, 0]
    for i in range(4000):
        shard = shard_map.shard_for(hash_key_of(default_partition_key(f"{i}".encode())))
        counts[int(shard.shard_id[-1])] += 1
    assert min(counts) > 800, counts


# ------------------------------------------------------------------------ key checks


@pytest.mark.parametrize(
    ("key", "ok"),
    [("", False), ("k", True), ("k" * 256, True), ("k" * 257, False), ("é" * 256, True)],
)
def test_partition_key_problem(key: str, ok: bool) -> None:
    assert (partition_key_problem(key) is None) is ok


@pytest.mark.parametrize(
    ("text", "value"),
    [("0", 0), ("1", 1), (str(HALF), HALF), (str(MAX_HASH_KEY), MAX_HASH_KEY)],
)
def test_parse_explicit_hash_key_accepts_the_range(text: str, value: int) -> None:
    assert parse_explicit_hash_key(text) == value


@pytest.mark.parametrize(
    "text",
    [
        str(MAX_HASH_KEY + 1),
        str(10**40),
        "-1",
        "+1",
        "1.0",
        "1e5",
        "",
        " 1",
        "1 ",
        "12a",
        "0x10",
        "\u0661\u0662",  # Arabic-Indic digits: isdigit() but not what Kinesis takes
        "\u00b2",  # superscript two
    ],
)
def test_parse_explicit_hash_key_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_explicit_hash_key(text)


@pytest.mark.parametrize("text", ["007", "00", "0" * 39 + "1"])
def test_parse_explicit_hash_key_refuses_what_kinesis_refuses(text: str) -> None:
    """Kinesis' pattern for ExplicitHashKey is ``0|([1-9]\\d{0,38})``: leading zeros make it
    refuse the whole PutRecords request (ValidationException), sinking every other record of
    the request with it. Such a key must be caught at put()."""
    with pytest.raises(ValueError):
        parse_explicit_hash_key(text)


# ------------------------------------------------------------------------ shard map


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7])
def test_lookup_at_range_boundaries(n: int) -> None:
    shard_map = even_map(n)
    assert len(shard_map) == n
    for index, shard in enumerate(shard_map.shards):
        assert shard_map.shard_for(shard.starting_hash_key) == shard
        assert shard_map.shard_for(shard.ending_hash_key) == shard
        if index + 1 < n:
            assert shard_map.shard_for(shard.ending_hash_key + 1) == shard_map.shards[index + 1]
        if index:
            assert shard_map.shard_for(shard.starting_hash_key - 1) == shard_map.shards[index - 1]
    assert shard_map.shard_for(0) == shard_map.shards[0]
    assert shard_map.shard_for(MAX_HASH_KEY) == shard_map.shards[-1]


def test_lookup_does_not_depend_on_input_order() -> None:
    shards = list(even_map(5).shards)
    shuffled = ShardMap([shards[3], shards[0], shards[4], shards[2], shards[1]])
    assert shuffled.shards == shards
    for shard in shards:
        assert shuffled.shard_for(shard.starting_hash_key) == shard


@st.composite
def shard_maps(draw: st.DrawFn) -> list[Shard]:
    cuts = draw(st.sets(st.integers(1, MAX_HASH_KEY), max_size=12))
    starts = [0, *sorted(cuts)]
    ends = [s - 1 for s in starts[1:]] + [MAX_HASH_KEY]
    return [Shard(f"s{i}", a, b) for i, (a, b) in enumerate(zip(starts, ends, strict=True))]


@settings(max_examples=300)
@given(shard_maps(), st.lists(st.integers(0, MAX_HASH_KEY), min_size=1, max_size=20))
def test_lookup_matches_brute_force(shards: list[Shard], hash_keys: list[int]) -> None:
    shard_map = ShardMap(shards)
    probes = list(hash_keys)
    for shard in shards:  # every boundary, both sides
        probes += [shard.starting_hash_key, shard.ending_hash_key]
    for hash_key in probes:
        owners = [s for s in shards if s.owns(hash_key)]
        assert len(owners) == 1
        assert shard_map.shard_for(hash_key) == owners[0]


def test_empty_map_lookup_fails() -> None:
    with pytest.raises(LookupError):
        ShardMap([]).shard_for(0)


def _listed(shard_id: str, start: int, end: int, closed: bool = False) -> dict[str, object]:
    sequence = {"StartingSequenceNumber": "1"}
    if closed:
        sequence["EndingSequenceNumber"] = "99"
    return {
        "ShardId": shard_id,
        "HashKeyRange": {"StartingHashKey": str(start), "EndingHashKey": str(end)},
        "SequenceNumberRange": sequence,
    }


def test_from_list_shards_keeps_open_shards_only() -> None:
    listed = [
        _listed("shardId-000000000000", 0, HALF - 1, closed=True),  # split into 2 and 3
        _listed("shardId-000000000001", HALF, MAX_HASH_KEY),
        _listed("shardId-000000000002", 0, HALF // 2 - 1),
        _listed("shardId-000000000003", HALF // 2, HALF - 1),
    ]
    shard_map = ShardMap.from_list_shards(listed)
    assert [s.shard_id for s in shard_map.shards] == [
        "shardId-000000000002",
        "shardId-000000000003",
        "shardId-000000000001",
    ]
    assert shard_map.get("shardId-000000000000") is None
    assert shard_map.get("shardId-000000000003") == Shard(
        "shardId-000000000003", HALF // 2, HALF - 1
    )
    assert shard_map.shard_for(0).shard_id == "shardId-000000000002"
    assert shard_map.shard_for(HALF - 1).shard_id == "shardId-000000000003"
    assert shard_map.shard_for(HALF).shard_id == "shardId-000000000001"


def test_from_list_shards_after_a_merge() -> None:
    listed = [
        _listed("shardId-000000000000", 0, HALF - 1, closed=True),
        _listed("shardId-000000000001", HALF, MAX_HASH_KEY, closed=True),
        _listed("shardId-000000000002", 0, MAX_HASH_KEY),
    ]
    shard_map = ShardMap.from_list_shards(listed)
    assert len(shard_map) == 1
    assert shard_map.shard_for(MAX_HASH_KEY).shard_id == "shardId-000000000002"


def test_shard_owns_both_ends() -> None:
    shard = Shard("s", 10, 20)
    assert shard.owns(10)
    assert shard.owns(20)
    assert not shard.owns(9)
    assert not shard.owns(21)
