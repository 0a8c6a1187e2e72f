"""Table definitions from information_schema, and which tables a DDL statement changes.

The binlog names a row's columns only when the server runs with binlog_row_metadata=FULL (and
never says which MariaDB columns hold JSON). Everything else comes from information_schema,
which describes a table as it is *now*. The source therefore loads a table's definition when it
first meets the table and keeps it until the binlog shows a DDL statement naming the table
(:func:`ddl_tables`): rows logged after the definition was loaded and before that statement
match it. A row whose column count or types disagree with the definition goes to the
dead-letter queue rather than being named by guesswork.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "ColumnInfo",
    "SchemaCache",
    "TableSchema",
    "ddl_tables",
    "load_table_schema",
    "parse_enum_values",
    "table_schema_from_rows",
    "truncated_table",
]

_COLUMNS_QUERY: Final = (
    "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, CHARACTER_SET_NAME "
    "FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s "
    "ORDER BY ORDINAL_POSITION"
)
_PRIMARY_KEY_QUERY: Final = (
    "SELECT COLUMN_NAME FROM information_schema.STATISTICS "
    "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s AND INDEX_NAME = 'PRIMARY' "
    "ORDER BY SEQ_IN_INDEX"
)
# MariaDB's JSON is LONGTEXT with a json_valid() check constraint named after the column.
_JSON_CHECKS_QUERY: Final = (
    "SELECT CONSTRAINT_NAME, CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS "
    "WHERE CONSTRAINT_SCHEMA = %s AND TABLE_NAME = %s"
)


@dataclass(frozen=True, slots=True)
class ColumnInfo:
    """One column as information_schema.COLUMNS describes it.

    Attributes:
        name: the column name.
        data_type: ``DATA_TYPE``, lower case (``bigint``, ``varchar``, ``enum``, ...).
        unsigned: an unsigned integer type.
        charset: ``CHARACTER_SET_NAME`` (None for binary and non-text types).
        is_json: holds JSON (MySQL's JSON type, or MariaDB's json_valid()-checked text).
        values: the ENUM or SET members, in definition order (None for other types).
    """

    name: str
    data_type: str
    unsigned: bool = False
    charset: str | None = None
    is_json: bool = False
    values: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class TableSchema:
    """A table's columns in ordinal order and its primary key (empty when it has none)."""

    database: str
    table: str
    columns: tuple[ColumnInfo, ...]
    primary_key: tuple[str, ...]

    def column(self, name: str) -> ColumnInfo | None:
        """The column called ``name``, or None."""
        for column in self.columns:
            if column.name == name:
                return column
        return None


def parse_enum_values(column_type: str) -> tuple[str, ...]:
    """The members of ``enum('a','b')`` / ``set('x','y')`` as information_schema writes them.

    Members are SQL string literals: ``''`` is a quote and a backslash escapes the next
    character (``'it''s'``, ``'a\\\\b'``).

    Raises:
        ValueError: ``column_type`` is not an ENUM or SET definition.
    """
    start = column_type.find("(")
    if start < 0 or not column_type.rstrip().endswith(")"):
        raise ValueError(f"not an ENUM or SET type: {column_type!r}")
    body = column_type[start + 1 : column_type.rstrip().rfind(")")]
    values: list[str] = []
    i = 0
    length = len(body)
    while i < length:
        if body[i] != "'":
            raise ValueError(f"not an ENUM or SET type: {column_type!r}")
        i += 1
        chars: list[str] = []
        while True:
            if i >= length:
                raise ValueError(f"unterminated member in {column_type!r}")
            char = body[i]
            if char == "\\" and i + 1 < length:
                chars.append(_ESCAPES.get(body[i + 1], body[i + 1]))
                i += 2
            elif char == "'":
                if i + 1 < length and body[i + 1] == "'":
                    chars.append("'")
                    i += 2
                else:
                    i += 1
                    break
            else:
                chars.append(char)
                i += 1
        values.append("".join(chars))
        if i < length:
            if body[i] != ",":
                raise ValueError(f"not an ENUM or SET type: {column_type!r}")
            i += 1
    return tuple(values)


_ESCAPES: Final = {"0": "\0", "n": "\n", "r": "\r", "t": "\t", "Z": "\x1a", "b": "\b"}


def table_schema_from_rows(
    database: str,
    table: str,
    columns: Iterable[Sequence[Any]],
    primary_key: Iterable[str],
    json_columns: Iterable[str] = (),
) -> TableSchema:
    """Build a :class:`TableSchema` from information_schema rows.

    Args:
        database, table: the table.
        columns: ``(COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, CHARACTER_SET_NAME)`` in ordinal order.
        primary_key: the primary key's column names in key order.
        json_columns: MariaDB columns with a ``json_valid()`` check.
    """
    json_names = set(json_columns)
    infos = []
    for name, data_type, column_type, charset in columns:
        data_type = str(data_type).lower()
        column_type = str(column_type)
        values = parse_enum_values(column_type) if data_type in ("enum", "set") else None
        infos.append(
            ColumnInfo(
                name=str(name),
                data_type=data_type,
                unsigned=" unsigned" in column_type.lower(),
                charset=str(charset) if charset else None,
                is_json=data_type == "json" or name in json_names,
                values=values,
            )
        )
    return TableSchema(database, table, tuple(infos), tuple(primary_key))


_JSON_VALID: Final = re.compile(r"^json_valid\(`((?:[^`]|``)+)`\)$", re.IGNORECASE)


def load_table_schema(cursor: Any, database: str, table: str, mariadb: bool) -> TableSchema | None:
    """Read a table's definition from information_schema.

    Args:
        cursor: a PyMySQL cursor (tuples).
        database, table: the table.
        mariadb: look for MariaDB's JSON check constraints.

    Returns:
        The definition, or None when the table does not exist (or is invisible to the user).

    Raises:
        pymysql.err.MySQLError: a query failed.
    """
    cursor.execute(_COLUMNS_QUERY, (database, table))
    columns = cursor.fetchall()
    if not columns:
        return None
    cursor.execute(_PRIMARY_KEY_QUERY, (database, table))
    primary_key = [str(row[0]) for row in cursor.fetchall()]
    json_columns: list[str] = []
    if mariadb:
        cursor.execute(_JSON_CHECKS_QUERY, (database, table))
        for _, clause in cursor.fetchall():
            match = _JSON_VALID.match(str(clause).strip())
            if match:
                json_columns.append(match.group(1).replace("``", "`"))
    return table_schema_from_rows(database, table, columns, primary_key, json_columns)


# --------------------------------------------------------------------------- DDL statements

_COMMENT: Final = re.compile(r"/\*.*?\*/|--[^\n]*|#[^\n]*", re.DOTALL)
_NAME: Final = r"(?:`(?:[^`]|``)+`|\"(?:[^\"]|\"\")+\"|[\w$]+)"
_QUALIFIED: Final = rf"{_NAME}(?:\s*\.\s*{_NAME})?"
_ALTER: Final = re.compile(
    rf"^ALTER\s+(?:ONLINE\s+)?(?:IGNORE\s+)?TABLE\s+(?:IF\s+EXISTS\s+)?({_QUALIFIED})",
    re.IGNORECASE,
)
_CREATE: Final = re.compile(
    rf"^CREATE\s+(?:OR\s+REPLACE\s+)?(?:TEMPORARY\s+)?TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?"
    rf"({_QUALIFIED})",
    re.IGNORECASE,
)
_DROP: Final = re.compile(
    r"^DROP\s+(?:TEMPORARY\s+)?TABLES?\b\s*(?:IF\s+EXISTS\s+)?(.*)$", re.IGNORECASE | re.DOTALL
)
_RENAME: Final = re.compile(r"^RENAME\s+TABLES?\b\s*(.*)$", re.IGNORECASE | re.DOTALL)
_TRUNCATE: Final = re.compile(rf"^TRUNCATE\s+(?:TABLE\s+)?({_QUALIFIED})", re.IGNORECASE)
_ALTER_RENAME: Final = re.compile(
    rf"\bRENAME\s+(?:TO\s+|AS\s+)?(?!(?:COLUMN|INDEX|KEY)\b)({_QUALIFIED})", re.IGNORECASE
)
_INDEX: Final = re.compile(
    rf"^(?:CREATE|DROP)\s+(?:\w+\s+)*?INDEX\s+.*?\bON\s+({_QUALIFIED})",
    re.IGNORECASE | re.DOTALL,
)
_DROP_DATABASE: Final = re.compile(
    rf"^DROP\s+(?:DATABASE|SCHEMA)\s+(?:IF\s+EXISTS\s+)?({_NAME})", re.IGNORECASE
)
_QUALIFIED_ONLY: Final = re.compile(rf"\s*({_QUALIFIED})\s*", re.DOTALL)
_NAME_PART: Final = re.compile(_NAME)

# A table name in a DDL statement: (database, table). The table is None for a whole database.
TableName = tuple[str, str | None]


def _unquote(name: str) -> str:
    if name.startswith("`"):
        return name[1:-1].replace("``", "`")
    if name.startswith('"'):
        return name[1:-1].replace('""', '"')
    return name


def _qualify(text: str, default_db: str) -> TableName:
    parts = [_unquote(part) for part in _NAME_PART.findall(text)]
    if len(parts) >= 2:
        return parts[0], parts[1]
    return default_db, parts[0]


def _name_list(text: str, default_db: str) -> list[TableName]:
    names = []
    for item in text.split(","):
        item = re.split(r"\s+(?:RESTRICT|CASCADE|WAIT\s+\d+|NOWAIT)\b", item, flags=re.I)[0]
        match = _QUALIFIED_ONLY.fullmatch(item)
        if match:
            names.append(_qualify(match.group(1), default_db))
    return names


def ddl_tables(query: str, default_db: str) -> set[TableName] | None:
    """The tables whose definition a statement from a binlog query event changes.

    Args:
        query: the statement text.
        default_db: the database that was current when it ran (the query event's schema).

    Returns:
        ``(database, table)`` pairs (``(database, None)`` for a dropped database); an empty set
        for statements that change no table definition (CREATE INDEX, GRANT, ...); None when the
        statement renames or drops tables in a form not recognized, so that every definition
        should be reloaded.
    """
    text = _COMMENT.sub(" ", query).strip()
    match = _ALTER.match(text)
    if match:
        names = {_qualify(match.group(1), default_db)}
        new_name = _ALTER_RENAME.search(text, match.end())
        if new_name:
            names.add(_qualify(new_name.group(1), default_db))
        return names
    for pattern in (_CREATE, _INDEX):
        match = pattern.match(text)
        if match:
            return {_qualify(match.group(1), default_db)}
    if _TRUNCATE.match(text):
        return set()  # the rows go, the definition stays
    match = _DROP.match(text)
    if match:
        dropped = _name_list(match.group(1), default_db)
        return set(dropped) if dropped else None
    match = _RENAME.match(text)
    if match:
        pairs: list[TableName] = []
        for pair in match.group(1).split(","):
            sides = re.split(r"\s+TO\s+", pair.strip(), flags=re.I)
            if len(sides) != 2:
                return None
            for side in sides:
                found = _QUALIFIED_ONLY.fullmatch(side)
                if not found:
                    return None
                pairs.append(_qualify(found.group(1), default_db))
        return set(pairs)
    match = _DROP_DATABASE.match(text)
    if match:
        return {(_unquote(match.group(1)), None)}
    return set()


def truncated_table(query: str, default_db: str) -> tuple[str, str] | None:
    """The table a ``TRUNCATE [TABLE] name`` statement empties, or None for other statements."""
    match = _TRUNCATE.match(_COMMENT.sub(" ", query).strip())
    if match is None:
        return None
    database, table = _qualify(match.group(1), default_db)
    return database, table or ""


class SchemaCache:
    """Table definitions by ``(database, table)``, loaded on first use, dropped on DDL.

    Args:
        loader: reads one table's definition (None when it does not exist); may raise.
    """

    def __init__(self, loader: Callable[[str, str], TableSchema | None]) -> None:
        self._loader = loader
        self._tables: dict[tuple[str, str], TableSchema | None] = {}
        self.generation = 0  # bumped on every invalidation, so dependants can notice

    def get(self, database: str, table: str) -> TableSchema | None:
        """The table's definition (loaded now if not known)."""
        key = (database, table)
        try:
            return self._tables[key]
        except KeyError:
            schema = self._tables[key] = self._loader(database, table)
            return schema

    def invalidate(self, names: set[TableName] | None) -> None:
        """Forget definitions: the named tables (None: all). Matching ignores letter case."""
        self.generation += 1
        if names is None:
            self._tables.clear()
            return
        wanted = {(db.casefold(), table.casefold() if table else None) for db, table in names}
        for key in list(self._tables):
            db, table = key[0].casefold(), key[1].casefold()
            if (db, table) in wanted or (db, None) in wanted:
                del self._tables[key]

    def known(self) -> Mapping[tuple[str, str], TableSchema | None]:
        """The definitions held now."""
        return dict(self._tables)
