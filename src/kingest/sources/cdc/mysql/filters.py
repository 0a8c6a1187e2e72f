"""Which tables the MySQL source captures: fnmatch patterns on ``database.table``.

``shop.orders`` names one table, ``shop.*`` a database, ``*.audit_*`` a name in every database.
Matching is case-sensitive, as table names are on Linux servers. The server's own schemas
(``mysql``, ``information_schema``, ``performance_schema``, ``sys``) are never captured.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from typing import Final

__all__ = ["SYSTEM_SCHEMAS", "TableFilter", "check_pattern"]

SYSTEM_SCHEMAS: Final = frozenset({"mysql", "information_schema", "performance_schema", "sys"})


def check_pattern(pattern: str) -> str:
    """Validate a ``database.table`` pattern.

    Returns:
        The pattern, stripped.

    Raises:
        ValueError: it is empty or does not name a database and a table.
    """
    text = pattern.strip()
    database, dot, table = text.partition(".")
    if not dot or not database or not table:
        raise ValueError(f"{pattern!r} is not DATABASE.TABLE (wildcards allowed, e.g. shop.*)")
    return text


class TableFilter:
    """Decides, once per table, whether its rows are captured.

    Args:
        include: patterns of captured tables; none means every table.
        exclude: patterns of tables never captured (they win over ``include``).
    """

    def __init__(self, include: Iterable[str] = (), exclude: Iterable[str] = ()) -> None:
        self.include = tuple(include)
        self.exclude = tuple(exclude)
        self._decided: dict[tuple[str, str], bool] = {}

    def __call__(self, database: str, table: str) -> bool:
        """True when ``database.table`` is captured."""
        key = (database, table)
        decided = self._decided.get(key)
        if decided is None:
            decided = self._decided[key] = self._decide(database, table)
        return decided

    def _decide(self, database: str, table: str) -> bool:
        if database.lower() in SYSTEM_SCHEMAS:
            return False
        name = f"{database}.{table}"
        if self.include and not any(fnmatch.fnmatchcase(name, p) for p in self.include):
            return False
        return not any(fnmatch.fnmatchcase(name, p) for p in self.exclude)

    def exact_tables(self) -> list[tuple[str, str]]:
        """Include patterns that name one table each (no wildcard), as (database, table)."""
        exact = []
        for pattern in self.include:
            if not any(char in pattern for char in "*?["):
                database, _, table = pattern.partition(".")
                exact.append((database, table))
        return exact
