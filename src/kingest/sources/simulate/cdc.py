"""Simulated change data capture (CDC) events of a small e-commerce database.

This module's one job is the seed's ``DatabaseChangeCapture`` source: :class:`CdcSimulator`
runs transactions (sign-ups, orders placed, paid, shipped, cancelled, profiles edited, rows
purged) against an in-memory copy of the seed's ``users`` and ``orders`` tables and emits one
change event per row changed. Every UPDATE and DELETE refers to a row that exists at that point,
its ``before`` is that row exactly, and the events of one transaction share its id (the seed drew
a fresh UUID per event, so no two events ever appeared to belong together).

Each event has the seed's fields plus a Debezium-style subset and the row's key::

    {"timestamp", "database", "table", "operation": "INSERT" | "UPDATE" | "DELETE",
     "transaction_id", "primary_key": {"order_id": 50001}, "before", "after", "change_type",
     "op": "c" | "u" | "d", "ts_ms", "source": {"db", "table", "txId"}}
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Generic, TypeVar

__all__ = [
    "CRITICAL_FIELDS",
    "TABLES",
    "CdcSimulator",
    "TableSchema",
    "change_type",
    "primary_key_of",
]

DEFAULT_START: Final = datetime(2024, 5, 26, 10, 30, 45, tzinfo=UTC)
DEFAULT_DATABASE: Final = "ecommerce_db"


@dataclass(frozen=True, slots=True)
class TableSchema:
    """A table's primary key columns and its columns."""

    primary_key: tuple[str, ...]
    fields: tuple[str, ...]


# The seed's tables, as its DatabaseChangeCapture describes them.
TABLES: Final[dict[str, TableSchema]] = {
    "users": TableSchema(("user_id",), ("user_id", "username", "email", "created_at", "status")),
    "orders": TableSchema(
        ("order_id",), ("order_id", "user_id", "total_amount", "status", "created_at")
    ),
}

# A change to one of these makes an UPDATE a critical_update (the seed's list).
CRITICAL_FIELDS: Final = ("status", "email", "total_amount")

_OPS: Final = {"INSERT": "c", "UPDATE": "u", "DELETE": "d"}
_NEXT_ORDER_STATUS: Final = {"pending": "paid", "paid": "shipped", "shipped": "completed"}

_FIRST_NAMES: Final = (
    "minji", "jiho", "seoyeon", "hyun", "emma", "liam", "olivia", "noah", "ava", "lucas",
    "mia", "leo", "sofia", "yuki", "ren", "aarav", "diya", "mateo", "zoe", "ivan",
)  # fmt: skip
_EMAIL_DOMAINS: Final = ("example.com", "mail.example.org", "example.net", "corp.example.com")


def change_type(
    operation: str, before: Mapping[str, Any] | None, after: Mapping[str, Any] | None
) -> str:
    """Classify a change as the seed does.

    Returns:
        ``new_record`` for INSERT, ``record_deletion`` for DELETE; for UPDATE
        ``critical_update`` when a field of :data:`CRITICAL_FIELDS` present on both sides
        changed, else ``standard_update``; ``unknown`` for any other operation.
    """
    if operation == "INSERT":
        return "new_record"
    if operation == "DELETE":
        return "record_deletion"
    if operation == "UPDATE":
        if before and after:
            for field in CRITICAL_FIELDS:
                if field in before and field in after and before[field] != after[field]:
                    return "critical_update"
        return "standard_update"
    return "unknown"


def primary_key_of(event: Mapping[str, Any]) -> dict[str, Any]:
    """The primary key of the row a change event is about.

    Args:
        event: a change event: the simulator's (with ``primary_key``) or the seed's (``table``
            one of :data:`TABLES`, the key columns in ``after`` or, for a DELETE, ``before``).

    Returns:
        Key column to value, in the key's column order.

    Raises:
        ValueError: the event names no key and its table is unknown, or the key columns are
            missing from the row images.
    """
    given = event.get("primary_key")
    if isinstance(given, Mapping) and given:
        return dict(given)
    table = event.get("table")
    schema = TABLES.get(table) if isinstance(table, str) else None
    if schema is None:
        raise ValueError(f"change event of table {table!r} carries no primary_key")
    row = event.get("after") or event.get("before") or {}
    missing = [column for column in schema.primary_key if column not in row]
    if missing:
        raise ValueError(f"change event of table {table!r} lacks key column(s) {missing}")
    return {column: row[column] for column in schema.primary_key}


_K = TypeVar("_K")


class _KeyPool(Generic[_K]):
    """A set with O(1) add, remove and uniform random choice, in a deterministic order."""

    def __init__(self) -> None:
        self._items: list[_K] = []
        self._index: dict[_K, int] = {}

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, item: object) -> bool:
        return item in self._index

    def add(self, item: _K) -> None:
        if item not in self._index:
            self._index[item] = len(self._items)
            self._items.append(item)

    def discard(self, item: _K) -> None:
        position = self._index.pop(item, None)
        if position is None:
            return
        last = self._items.pop()
        if position < len(self._items):
            self._items[position] = last
            self._index[last] = position

    def choice(self, rng: random.Random) -> _K:
        return self._items[rng.randrange(len(self._items))]


def _iso_utc(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")


class CdcSimulator:
    """Change events of simulated transactions on the seed's ``users`` and ``orders`` tables.

    The tables start empty, so every row's history begins with its INSERT. Orders always
    belong to an existing user, and a user is deleted only once no order of theirs is left.
    Transaction ids count up from a random starting point, as PostgreSQL's do; a transaction
    changes one to four rows, and its events share one commit time. The output is a function of
    ``seed`` (and ``start``) alone unless ``clock`` is given.

    Args:
        seed: seed of the random generator; None seeds from the system.
        database: database name in the events.
        start: commit time of the first transaction (default: 26 May 2024 10:30:45 UTC).
        clock: when given, each transaction's time is ``clock()`` instead of the simulated time.
        transactions_per_s: mean transaction rate of the simulated time.
        max_rows: rows per table above which the simulator deletes rows before anything else
            it can do, so that a long run's memory stays bounded.
    """

    def __init__(
        self,
        seed: int | None = None,
        *,
        database: str = DEFAULT_DATABASE,
        start: datetime | None = None,
        clock: Callable[[], datetime] | None = None,
        transactions_per_s: float = 5.0,
        max_rows: int = 10_000,
    ) -> None:
        if not transactions_per_s > 0:
            raise ValueError(f"transactions_per_s must be positive, not {transactions_per_s}")
        if max_rows < 1:
            raise ValueError(f"max_rows must be at least 1, not {max_rows}")
        self._max_rows = max_rows
        self.database = database
        self._rng = random.Random(seed)
        self._now = start or DEFAULT_START
        self._clock = clock
        self._mean_gap_s = 1.0 / transactions_per_s
        self._txid = 700_000 + self._rng.randrange(1_000_000)
        self._next_user_id = 1001
        self._next_order_id = 50_001
        self.users: dict[int, dict[str, Any]] = {}
        self.orders: dict[int, dict[str, Any]] = {}
        self._user_pool: _KeyPool[int] = _KeyPool()
        self._orders_by_status: dict[str, _KeyPool[int]] = {}
        self._order_count: dict[int, int] = {}
        self._pending: deque[dict[str, Any]] = deque()
        # Transaction state, set by _begin().
        self._tx_id = 0
        self._tx_time = self._now
        self._tx_events: list[dict[str, Any]] = []

    # --- public --------------------------------------------------------------------------------

    def events(self, n: int) -> list[dict[str, Any]]:
        """The next ``n`` change events.

        A transaction may be split between two calls; its remaining events come first in the
        next call, so the concatenated output never depends on how it was asked for.
        """
        out: list[dict[str, Any]] = []
        while len(out) < n:
            if not self._pending:
                self._pending.extend(self._transaction())
            out.append(self._pending.popleft())
        return out

    def create_change_event(
        self,
        table_name: str,
        operation: str,
        before_data: Mapping[str, Any] | None = None,
        after_data: Mapping[str, Any] | None = None,
        *,
        transaction_id: int | None = None,
    ) -> dict[str, Any]:
        """Build one change event like the seed's ``create_change_event``, outside the tables.

        For events about rows the simulator does not hold (the seed's own examples). The
        transaction id is a new one unless given; ``before`` is kept only for UPDATE and
        DELETE and ``after`` only for INSERT and UPDATE, as in the seed.

        Raises:
            ValueError: unknown operation.
        """
        if operation not in _OPS:
            raise ValueError(f"operation must be one of {', '.join(_OPS)}, not {operation!r}")
        if transaction_id is None:
            self._txid += 1
            transaction_id = self._txid
        moment = self._clock() if self._clock is not None else self._now
        before = dict(before_data) if before_data and operation != "INSERT" else None
        after = dict(after_data) if after_data and operation != "DELETE" else None
        return self._event(table_name, operation, before, after, transaction_id, moment)

    # --- transactions --------------------------------------------------------------------------

    def _transaction(self) -> list[dict[str, Any]]:
        rng = self._rng
        self._txid += 1
        self._tx_id = self._txid
        self._now += timedelta(seconds=rng.expovariate(1.0 / self._mean_gap_s))
        self._tx_time = self._clock() if self._clock is not None else self._now
        self._tx_events = []
        # A full table gets no new rows, and deleting from it becomes much likelier.
        users_full = len(self.users) >= self._max_rows
        orders_full = len(self.orders) >= self._max_rows
        candidates: list[tuple[Callable[[], bool], int, bool]] = [
            (self._sign_up, 14, not users_full),
            (self._sign_up_and_order, 5, not users_full and not orders_full),
            (self._place_order, 24, not orders_full),
            (self._advance_orders, 26, True),
            (self._cancel_order, 8, True),
            (self._purge_orders, 40 if orders_full else 6, True),
            (self._edit_profile, 11, True),
            (self._change_user_status, 4, True),
            (self._delete_user, 30 if users_full else 3, True),
        ]
        scenarios = [(scenario, weight) for scenario, weight, allowed in candidates if allowed]
        scenario = rng.choices([s for s, _ in scenarios], [w for _, w in scenarios])[0]
        # A scenario returns False when the tables do not allow it (no order to ship yet).
        # Editing a profile needs only a user; signing up is always possible.
        if not scenario() and not self._edit_profile():
            self._sign_up()
        return self._tx_events

    def _order_pools(self, *statuses: str) -> list[_KeyPool[int]]:
        """The non-empty pools of orders in these statuses."""
        pools = (self._orders_by_status.get(status) for status in statuses)
        return [pool for pool in pools if pool is not None and len(pool)]

    def _sign_up(self) -> bool:
        self._insert_user()
        return True

    def _sign_up_and_order(self) -> bool:
        user_id = self._insert_user()
        self._insert_order(user_id)
        return True

    def _place_order(self) -> bool:
        if not self._user_pool:
            return False
        user_id = self._user_pool.choice(self._rng)
        if self.users[user_id]["status"] != "active":
            return False
        order_id = self._insert_order(user_id)
        if self._rng.random() < 0.3:
            # A coupon applied in the same transaction: the order's amount drops.
            order = self.orders[order_id]
            discounted = round(order["total_amount"] * self._rng.choice((0.9, 0.85, 0.8)), 2)
            self._update("orders", order_id, {"total_amount": discounted})
        return True

    def _advance_orders(self) -> bool:
        open_orders = self._order_pools(*_NEXT_ORDER_STATUS)
        if not open_orders:
            return False
        moved: set[int] = set()
        for _ in range(self._rng.randint(1, 3)):
            pools = [pool for pool in open_orders if len(pool)]
            if not pools:
                break
            order_id = self._rng.choice(pools).choice(self._rng)
            if order_id in moved:
                continue
            moved.add(order_id)
            status = self.orders[order_id]["status"]
            self._update("orders", order_id, {"status": _NEXT_ORDER_STATUS[status]})
        return True

    def _cancel_order(self) -> bool:
        candidates = self._order_pools("pending", "paid")
        if not candidates:
            return False
        order_id = self._rng.choice(candidates).choice(self._rng)
        self._update("orders", order_id, {"status": "cancelled"})
        if self._rng.random() < 0.4:
            self._delete("orders", order_id)
        return True

    def _purge_orders(self) -> bool:
        candidates = self._order_pools("cancelled", "completed")
        if not candidates:
            return False
        for _ in range(self._rng.randint(1, 2)):
            candidates = [pool for pool in candidates if len(pool)]
            if not candidates:
                break
            self._delete("orders", self._rng.choice(candidates).choice(self._rng))
        return True

    def _edit_profile(self) -> bool:
        if not self._user_pool:
            return False
        user_id = self._user_pool.choice(self._rng)
        user = self.users[user_id]
        if self._rng.random() < 0.6:
            username = f"{user['username'].rstrip('0123456789')}{self._rng.randint(1, 9999)}"
            if username == user["username"]:
                return False
            self._update("users", user_id, {"username": username})  # a standard update
        else:
            local = user["email"].partition("@")[0]
            email = f"{local}@{self._rng.choice(_EMAIL_DOMAINS)}"
            if email == user["email"]:
                email = f"{local}.{user_id}@{self._rng.choice(_EMAIL_DOMAINS)}"
            self._update("users", user_id, {"email": email})
        return True

    def _change_user_status(self) -> bool:
        if not self._user_pool:
            return False
        user_id = self._user_pool.choice(self._rng)
        status = self.users[user_id]["status"]
        others = [s for s in ("active", "inactive", "suspended") if s != status]
        self._update("users", user_id, {"status": self._rng.choice(others)})
        return True

    def _delete_user(self) -> bool:
        # Only a user without orders may go (the orders table references users); try a few.
        for _ in range(5):
            if not self._user_pool:
                return False
            user_id = self._user_pool.choice(self._rng)
            if not self._order_count.get(user_id):
                self._delete("users", user_id)
                return True
        return False

    # --- row changes ---------------------------------------------------------------------------

    def _insert_user(self) -> int:
        rng = self._rng
        user_id = self._next_user_id
        self._next_user_id += 1
        username = f"{rng.choice(_FIRST_NAMES)}{rng.randint(1, 9999)}"
        row = {
            "user_id": user_id,
            "username": username,
            "email": f"{username}@{rng.choice(_EMAIL_DOMAINS)}",
            "created_at": _iso_utc(self._tx_time),
            "status": "active",
        }
        self._insert("users", user_id, row)
        return user_id

    def _insert_order(self, user_id: int) -> int:
        order_id = self._next_order_id
        self._next_order_id += 1
        row = {
            "order_id": order_id,
            "user_id": user_id,
            "total_amount": round(self._rng.lognormvariate(3.8, 0.8), 2),
            "status": "pending",
            "created_at": _iso_utc(self._tx_time),
        }
        self._insert("orders", order_id, row)
        return order_id

    def _table(self, table: str) -> dict[int, dict[str, Any]]:
        return self.users if table == "users" else self.orders

    def _index(
        self, table: str, key: int, row: dict[str, Any] | None, old: dict[str, Any] | None
    ) -> None:
        """Keep the lookup pools in step with one row change."""
        if table == "users":
            if row is None:
                self._user_pool.discard(key)
            else:
                self._user_pool.add(key)
            return
        if old is not None:
            self._orders_by_status[old["status"]].discard(key)
            if row is None:
                self._order_count[old["user_id"]] -= 1
        if row is not None:
            self._orders_by_status.setdefault(row["status"], _KeyPool()).add(key)
            if old is None:
                self._order_count[row["user_id"]] = self._order_count.get(row["user_id"], 0) + 1

    def _insert(self, table: str, key: int, row: dict[str, Any]) -> None:
        self._table(table)[key] = row
        self._index(table, key, row, None)
        self._record(table, "INSERT", None, row)

    def _update(self, table: str, key: int, changes: dict[str, Any]) -> None:
        rows = self._table(table)
        old = rows[key]  # KeyError here would be a simulator bug: updates need a live row.
        # Rows are replaced, never changed in place: an emitted image must not change later.
        new = {**old, **changes}
        rows[key] = new
        self._index(table, key, new, old)
        self._record(table, "UPDATE", old, new)

    def _delete(self, table: str, key: int) -> None:
        old = self._table(table).pop(key)
        self._index(table, key, None, old)
        self._record(table, "DELETE", old, None)

    def _record(
        self,
        table: str,
        operation: str,
        before: dict[str, Any] | None,
        after: dict[str, Any] | None,
    ) -> None:
        self._tx_events.append(
            self._event(table, operation, before, after, self._tx_id, self._tx_time)
        )

    def _event(
        self,
        table: str,
        operation: str,
        before: dict[str, Any] | None,
        after: dict[str, Any] | None,
        transaction_id: int,
        moment: datetime,
    ) -> dict[str, Any]:
        # Copies: a caller changing an event must not reach into the simulated tables.
        before = dict(before) if before is not None else None
        after = dict(after) if after is not None else None
        try:
            key: dict[str, Any] | None = primary_key_of(
                {"table": table, "before": before, "after": after}
            )
        except ValueError:
            key = None  # a seed-style event of a table we do not know: no key to name
        event: dict[str, Any] = {
            "timestamp": _iso_utc(moment),
            "database": self.database,
            "table": table,
            "operation": operation,
            "transaction_id": str(transaction_id),
            "primary_key": key,
            "before": before,
            "after": after,
            "change_type": change_type(operation, before, after),
            "op": _OPS[operation],
            "ts_ms": int(moment.timestamp() * 1000),
            "source": {"db": self.database, "table": table, "txId": transaction_id},
        }
        return event
