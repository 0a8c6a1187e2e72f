"""MySQL's and MariaDB's position types: a place in the binlog, and the GTID state at it.

A :class:`BinlogPosition` always sits between two transactions. It carries both ways of finding
that place again: the binlog file and byte offset (valid on this server only), and the GTID state
executed up to it (valid on any server of the replication topology):

- MariaDB: one ``domain-server-sequence`` per replication domain, e.g. ``0-1-42,1-2-7``
  (:class:`MariaDbGtidState`).
- MySQL: a GTID set, per source UUID the intervals of transaction numbers executed, e.g.
  ``3e11fa47-71ca-11e1-9e33-c80aa9429562:1-42:50-51`` (:class:`MySqlGtidSet`).

A transaction's own GTID (``0-1-42``, ``3e11fa47-...:42``) is what change events carry in
``source.gtid``; the state is what the checkpoint stores to resume after it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["BinlogPosition", "MariaDbGtidState", "MySqlGtidSet", "gtid_flavor"]

_MAX_POS = (1 << 64) - 1
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_MARIADB_GTID = re.compile(r"^(\d+)-(\d+)-(\d+)$")


@dataclass(frozen=True, slots=True)
class BinlogPosition:
    """A place between two transactions of a server's binlog.

    As JSON (the checkpoint store's value)::

        {"file": "mysql-bin.000003", "pos": 4567, "gtid": "0-1-42"}
        {"file": "binlog.000012", "pos": 157,
         "gtid": "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-42"}
        {"file": "mysql-bin.000003", "pos": 4567, "gtid": null}

    Attributes:
        file: the binlog file name.
        pos: the byte offset in it where the next transaction starts.
        gtid: the GTID state executed up to here (MariaDB state or MySQL GTID set), or None
            when the server logs no GTIDs.
    """

    file: str
    pos: int
    gtid: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The position as a JSON-ready dict (see the class docstring)."""
        return {"file": self.file, "pos": self.pos, "gtid": self.gtid}

    @classmethod
    def from_json(cls, value: Any) -> BinlogPosition:
        """Read a position written by :meth:`to_json`.

        Raises:
            ValueError: ``value`` is not such a position.
        """
        if not isinstance(value, Mapping):
            raise ValueError(f"a binlog position is an object, not {type(value).__name__}")
        file = value.get("file")
        pos = value.get("pos")
        gtid = value.get("gtid")
        if not isinstance(file, str) or not file:
            raise ValueError("a binlog position needs a file name")
        if isinstance(pos, bool) or not isinstance(pos, int) or not 4 <= pos <= _MAX_POS:
            raise ValueError(f"binlog offset {pos!r} is not a whole number of at least 4")
        if gtid is not None and not isinstance(gtid, str):
            raise ValueError(f"GTID state {gtid!r} is not text")
        if gtid:
            if gtid_flavor(gtid) == "mariadb":
                MariaDbGtidState.parse(gtid)
            else:
                MySqlGtidSet.parse(gtid)
        return cls(file, pos, gtid or None)

    def __str__(self) -> str:
        where = f"{self.file}:{self.pos}"
        return f"{where} (GTID {self.gtid})" if self.gtid else where


def gtid_flavor(text: str) -> str:
    """``mysql`` for a GTID set (it has UUIDs and colons), ``mariadb`` for a domain state."""
    return "mysql" if ":" in text else "mariadb"


class MariaDbGtidState:
    """MariaDB's GTID position: the last GTID executed in each replication domain.

    ``0-1-42,1-2-7`` means domain 0 executed up to sequence 42 (written by server 1) and domain 1
    up to 7. MariaDB resumes a replica from it with ``@slave_connect_state``.
    """

    __slots__ = ("_domains",)

    def __init__(self, domains: Mapping[int, tuple[int, int]] | None = None) -> None:
        self._domains: dict[int, tuple[int, int]] = dict(domains or {})

    @classmethod
    def parse(cls, text: str) -> MariaDbGtidState:
        """Read ``domain-server-seq[,...]`` (empty text: no domain yet).

        Raises:
            ValueError: the text is not a MariaDB GTID state, or names a domain twice.
        """
        state = cls()
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            domain, server, seq = _split_mariadb_gtid(part)
            if domain in state._domains:
                raise ValueError(f"GTID state {text!r} names domain {domain} twice")
            state._domains[domain] = (server, seq)
        return state

    def add(self, gtid: str) -> None:
        """Record that the transaction ``domain-server-seq`` executed.

        Raises:
            ValueError: ``gtid`` is not a MariaDB GTID.
        """
        domain, server, seq = _split_mariadb_gtid(gtid)
        self._domains[domain] = (server, seq)

    def copy(self) -> MariaDbGtidState:
        """An independent copy."""
        return MariaDbGtidState(self._domains)

    def __str__(self) -> str:
        return ",".join(
            f"{domain}-{server}-{seq}" for domain, (server, seq) in sorted(self._domains.items())
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MariaDbGtidState) and self._domains == other._domains

    def __hash__(self) -> int:
        return hash(frozenset(self._domains.items()))

    def __repr__(self) -> str:
        return f"MariaDbGtidState({str(self)!r})"


def _split_mariadb_gtid(text: str) -> tuple[int, int, int]:
    match = _MARIADB_GTID.match(text.strip())
    if match is None:
        raise ValueError(f"not a MariaDB GTID (domain-server-sequence): {text!r}")
    domain, server, seq = (int(group) for group in match.groups())
    if domain >= 1 << 32 or server >= 1 << 32 or seq >= 1 << 64:
        raise ValueError(f"MariaDB GTID out of range: {text!r}")
    return domain, server, seq


class MySqlGtidSet:
    """A MySQL GTID set: per source UUID, the transaction numbers executed, as intervals.

    ``3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5:7,2174b383-5441-11e8-b90a-c80aa9429562:1-27``.
    Intervals are kept sorted and merged, so equal sets print the same way. (MySQL 8.3's tagged
    GTIDs, ``uuid:tag:n``, are not supported.)
    """

    __slots__ = ("_sets",)

    def __init__(self) -> None:
        self._sets: dict[str, list[list[int]]] = {}  # uuid -> sorted, disjoint [start, end]

    @classmethod
    def parse(cls, text: str) -> MySqlGtidSet:
        """Read a GTID set as MySQL prints it (whitespace and newlines allowed).

        Raises:
            ValueError: the text is not a GTID set.
        """
        gtids = cls()
        for part in "".join(text.split()).split(","):
            if not part:
                continue
            uuid, *ranges = part.split(":")
            uuid = uuid.lower()
            if not _UUID.match(uuid):
                raise ValueError(f"not a GTID set (bad source UUID): {part!r}")
            if not ranges:
                raise ValueError(f"not a GTID set (no transaction numbers): {part!r}")
            for interval in ranges:
                start_text, _, end_text = interval.partition("-")
                if not start_text.isdigit() or (end_text and not end_text.isdigit()):
                    raise ValueError(
                        f"not a GTID set (bad interval {interval!r}; tagged GTIDs are not "
                        f"supported): {part!r}"
                    )
                start = int(start_text)
                end = int(end_text) if end_text else start
                if not 1 <= start <= end < 1 << 63:
                    raise ValueError(f"not a GTID set (bad interval {interval!r}): {part!r}")
                gtids._add_interval(uuid, start, end)
        return gtids

    def add(self, gtid: str) -> None:
        """Record that the transaction ``uuid:number`` executed.

        Raises:
            ValueError: ``gtid`` is not a single MySQL GTID.
        """
        uuid, sep, number = gtid.rpartition(":")
        uuid = uuid.lower()
        if not sep or not _UUID.match(uuid) or not number.isdigit() or int(number) < 1:
            raise ValueError(f"not a MySQL GTID (uuid:number): {gtid!r}")
        value = int(number)
        self._add_interval(uuid, value, value)

    def _add_interval(self, uuid: str, start: int, end: int) -> None:
        intervals = self._sets.setdefault(uuid, [])
        if intervals and intervals[-1][0] <= start and intervals[-1][1] + 1 >= start:
            # The usual case: the next transaction of the newest interval.
            intervals[-1][1] = max(intervals[-1][1], end)
            return
        intervals.append([start, end])
        intervals.sort()
        merged = [intervals[0]]
        for low, high in intervals[1:]:
            if low <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], high)
            else:
                merged.append([low, high])
        self._sets[uuid] = merged

    def contains(self, other: MySqlGtidSet) -> bool:
        """True when every transaction of ``other`` is in this set."""
        for uuid, intervals in other._sets.items():
            mine = self._sets.get(uuid, [])
            for low, high in intervals:
                if not any(m_low <= low and high <= m_high for m_low, m_high in mine):
                    return False
        return True

    def copy(self) -> MySqlGtidSet:
        """An independent copy."""
        twin = MySqlGtidSet()
        twin._sets = {uuid: [list(i) for i in intervals] for uuid, intervals in self._sets.items()}
        return twin

    def __str__(self) -> str:
        parts = []
        for uuid in sorted(self._sets):
            ranges = ":".join(
                str(low) if low == high else f"{low}-{high}" for low, high in self._sets[uuid]
            )
            parts.append(f"{uuid}:{ranges}")
        return ",".join(parts)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MySqlGtidSet) and self._sets == other._sets

    def __hash__(self) -> int:
        return hash(str(self))

    def __repr__(self) -> str:
        return f"MySqlGtidSet({str(self)!r})"
