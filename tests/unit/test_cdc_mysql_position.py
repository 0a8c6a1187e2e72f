"""The MySQL source's position type and GTID arithmetic (no server)."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kingest.sources.cdc.mysql.position import (
    BinlogPosition,
    MariaDbGtidState,
    MySqlGtidSet,
    gtid_flavor,
)

UUID_A = "3e11fa47-71ca-11e1-9e33-c80aa9429562"
UUID_B = "2174b383-5441-11e8-b90a-c80aa9429562"


@pytest.mark.parametrize(
    "text",
    [
        # The examples of BinlogPosition's docstring.
        '{"file": "mysql-bin.000003", "pos": 4567, "gtid": "0-1-42"}',
        '{"file": "binlog.000012", "pos": 157, "gtid": "' + UUID_A + ':1-42"}',
        '{"file": "mysql-bin.000003", "pos": 4567, "gtid": null}',
    ],
)
def test_position_json_examples_round_trip(text: str) -> None:
    value = orjson.loads(text)
    position = BinlogPosition.from_json(value)
    assert position.to_json() == value
    assert BinlogPosition.from_json(orjson.loads(orjson.dumps(position.to_json()))) == position


@given(
    file=st.from_regex(r"[a-z][a-z0-9_.-]{0,20}\.[0-9]{6}", fullmatch=True),
    pos=st.integers(4, (1 << 64) - 1),
    gtid=st.one_of(
        st.none(),
        st.lists(
            st.tuples(st.integers(0, 99), st.integers(1, 9), st.integers(0, 10**12)),
            min_size=1,
            max_size=4,
            unique_by=lambda t: t[0],
        ).map(lambda parts: ",".join(f"{d}-{s}-{n}" for d, s, n in sorted(parts))),
    ),
)
def test_any_position_round_trips_through_json(file: str, pos: int, gtid: str | None) -> None:
    position = BinlogPosition(file, pos, gtid)
    stored = orjson.loads(orjson.dumps(position.to_json()))
    assert BinlogPosition.from_json(stored) == position


@pytest.mark.parametrize(
    "value",
    [
        None,
        [],
        {"pos": 4},
        {"file": "", "pos": 4},
        {"file": "f.000001", "pos": 3},
        {"file": "f.000001", "pos": "4"},
        {"file": "f.000001", "pos": True},
        {"file": "f.000001", "pos": 4, "gtid": 42},
        {"file": "f.000001", "pos": 4, "gtid": "0-1"},
        {"file": "f.000001", "pos": 4, "gtid": UUID_A + ":0"},
    ],
)
def test_bad_positions_are_refused(value: object) -> None:
    with pytest.raises(ValueError):
        BinlogPosition.from_json(value)


def test_position_text_names_the_gtid_when_there_is_one() -> None:
    assert str(BinlogPosition("mysql-bin.000001", 328)) == "mysql-bin.000001:328"
    assert "GTID 0-1-5" in str(BinlogPosition("mysql-bin.000001", 328, "0-1-5"))


def test_gtid_flavor() -> None:
    assert gtid_flavor("0-1-42,1-2-7") == "mariadb"
    assert gtid_flavor(f"{UUID_A}:1-5") == "mysql"


# ------------------------------------------------------------------ MariaDB


def test_mariadb_state_keeps_the_last_gtid_per_domain() -> None:
    state = MariaDbGtidState.parse("1-2-7,0-1-42")
    assert str(state) == "0-1-42,1-2-7"
    state.add("0-3-43")  # another server wrote domain 0's next transaction
    state.add("5-1-1")
    assert str(state) == "0-3-43,1-2-7,5-1-1"
    assert MariaDbGtidState.parse("") == MariaDbGtidState()
    assert str(MariaDbGtidState()) == ""


@pytest.mark.parametrize("text", ["0-1", "a-b-c", "0-1-2-3", "0-1-2,0-1-3", "-1-1-1"])
def test_mariadb_state_refuses_bad_text(text: str) -> None:
    with pytest.raises(ValueError):
        MariaDbGtidState.parse(text)


@given(
    st.lists(st.tuples(st.integers(0, 5), st.integers(1, 5), st.integers(1, 10**6)), max_size=30)
)
def test_mariadb_state_matches_a_dict_model(gtids: list[tuple[int, int, int]]) -> None:
    state = MariaDbGtidState()
    model: dict[int, tuple[int, int]] = {}
    for domain, server, seq in gtids:
        state.add(f"{domain}-{server}-{seq}")
        model[domain] = (server, seq)
    assert state == MariaDbGtidState(model)
    assert MariaDbGtidState.parse(str(state)) == state
    copy = state.copy()
    copy.add("99-1-1")
    assert copy != state


# ------------------------------------------------------------------ MySQL


def test_mysql_set_merges_intervals_and_prints_canonically() -> None:
    text = f"{UUID_A.upper()}:1-5:7,\n{UUID_B}:1-27"
    gtids = MySqlGtidSet.parse(text)
    assert str(gtids) == f"{UUID_B}:1-27,{UUID_A}:1-5:7"
    gtids.add(f"{UUID_A}:6")
    assert str(gtids) == f"{UUID_B}:1-27,{UUID_A}:1-7"
    gtids.add(f"{UUID_A}:10")
    gtids.add(f"{UUID_A}:9")
    assert str(gtids) == f"{UUID_B}:1-27,{UUID_A}:1-7:9-10"


def test_mysql_set_containment() -> None:
    executed = MySqlGtidSet.parse(f"{UUID_A}:1-100,{UUID_B}:1-5")
    assert executed.contains(MySqlGtidSet.parse(f"{UUID_A}:1-50"))
    assert executed.contains(MySqlGtidSet.parse(""))
    assert not executed.contains(MySqlGtidSet.parse(f"{UUID_A}:1-101"))
    assert not executed.contains(MySqlGtidSet.parse(f"{UUID_B}:7"))


@pytest.mark.parametrize(
    "text",
    [
        "not-a-uuid:1",
        f"{UUID_A}",
        f"{UUID_A}:0",
        f"{UUID_A}:5-3",
        f"{UUID_A}:x",
        f"{UUID_A}:tag:1-5",
    ],
)
def test_mysql_set_refuses_bad_text(text: str) -> None:
    with pytest.raises(ValueError):
        MySqlGtidSet.parse(text)


@pytest.mark.parametrize("gtid", [f"{UUID_A}", f"{UUID_A}:0", "x:1", f"{UUID_A}:1-2"])
def test_mysql_set_refuses_bad_single_gtids(gtid: str) -> None:
    with pytest.raises(ValueError):
        MySqlGtidSet().add(gtid)


@given(
    st.lists(st.tuples(st.sampled_from([UUID_A, UUID_B]), st.integers(1, 60)), max_size=80),
    st.lists(st.tuples(st.sampled_from([UUID_A, UUID_B]), st.integers(1, 60)), max_size=20),
)
def test_mysql_set_matches_a_set_model(
    added: list[tuple[str, int]], other: list[tuple[str, int]]
) -> None:
    gtids = MySqlGtidSet()
    for uuid, number in added:
        gtids.add(f"{uuid}:{number}")
    # The printed form round-trips and lists exactly the transactions added.
    assert MySqlGtidSet.parse(str(gtids)) == gtids
    listed: set[tuple[str, int]] = set()
    for part in str(gtids).split(","):
        if not part:
            continue
        uuid, *ranges = part.split(":")
        for interval in ranges:
            low, _, high = interval.partition("-")
            listed.update((uuid, n) for n in range(int(low), int(high or low) + 1))
    assert listed == set(added)
    subset = MySqlGtidSet()
    for uuid, number in other:
        subset.add(f"{uuid}:{number}")
    assert gtids.contains(subset) == set(other).issubset(set(added))
