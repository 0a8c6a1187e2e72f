"""The per-source schema check: dead-letter, flag, stamp, and the dead-letter message."""

from __future__ import annotations

from typing import Any

import pytest

from kingest.errors import ConfigError
from kingest.record import DlqReason
from kingest.schemas.registry import SchemaRegistry
from kingest.schemas.validate import (
    MAX_QUOTED_VIOLATIONS,
    RecordValidator,
    SchemaSettings,
    validator_for,
)
from kingest.sources.base import SourceContext

ORDERS = {
    "type": "object",
    "required": ["order_id"],
    "properties": {"order_id": {"type": "integer"}, "amount": {"type": "number"}},
}


def registry() -> SchemaRegistry:
    found = SchemaRegistry.builtin()
    found.add("orders", 1, ORDERS)
    return found


def validator(**settings: Any) -> RecordValidator:
    return validator_for(registry(), SchemaSettings(name="orders", **settings), "shop")


class Rejects:
    """Stands in for the producer: keeps what the context dead-letters."""

    def __init__(self) -> None:
        self.rejected: list[tuple[Any, DlqReason, str, str]] = []

    def reject(self, payload: Any, reason: DlqReason, message: str, *, source: str) -> None:
        self.rejected.append((payload, reason, message, source))


def test_valid_records_pass_and_are_stamped_when_asked() -> None:
    record = {"order_id": 1}
    assert validator().check(record) is None and record == {"order_id": 1}
    assert validator(stamp=True).check(record) is None
    assert record == {"order_id": 1, "schema_id": "orders/v1", "schema_version": 1}


def test_invalid_records_give_every_violation_or_are_flagged() -> None:
    bad = {"order_id": "x", "amount": "y"}
    violations = validator().check(dict(bad))
    assert violations is not None
    assert [v.path for v in violations] == ["$.amount", "$.order_id"]
    flagged = dict(bad)
    assert validator(on_invalid="flag", stamp=True).check(flagged) is None
    assert len(flagged["schema_violations"]) == 2
    assert flagged["schema_violations"][0].startswith("$.amount: ")
    assert flagged["schema_id"] == "orders/v1"


def test_the_message_names_the_schema_and_quotes_at_most_twenty_violations() -> None:
    wide = {"type": "object", "properties": {f"f{i:02d}": {"type": "integer"} for i in range(30)}}
    schemas = SchemaRegistry.builtin()
    schemas.add("wide", 3, wide)
    checker = validator_for(schemas, SchemaSettings(name="wide"), "s")
    violations = checker.check({f"f{i:02d}": "no" for i in range(30)})
    assert violations is not None and len(violations) == 30
    message = checker.describe(violations)
    assert message.startswith("breaks schema wide/v3 (30 violations): $.f00: ")
    assert message.count("is not of type") == MAX_QUOTED_VIOLATIONS
    assert message.endswith("; and 10 more")


def test_an_unknown_schema_or_version_is_a_config_error_naming_the_source() -> None:
    with pytest.raises(ConfigError, match="source shop: schema: "):
        validator_for(registry(), SchemaSettings(name="nothing"), "shop")
    with pytest.raises(ConfigError, match="source shop: schema: "):
        validator_for(registry(), SchemaSettings(name="orders", version=2), "shop")


def test_the_context_sends_on_the_valid_and_dead_letters_the_rest() -> None:
    producer = Rejects()
    context = SourceContext("shop", producer, validator())  # type: ignore[arg-type]
    kept = context.validate([({"order_id": 1}, "k1"), ({"order_id": "x"}, "k2"), ({}, None)])
    assert kept == [({"order_id": 1}, "k1")]
    assert [(reason, source) for _, reason, _, source in producer.rejected] == [
        (DlqReason.INVALID_RECORD, "shop"),
        (DlqReason.INVALID_RECORD, "shop"),
    ]
    assert context.stats.invalid_by_reason == {"invalid_record": 2}
    unchecked = SourceContext("shop", producer)  # type: ignore[arg-type]
    records = [({"anything": True}, None)]
    assert unchecked.validate(records) is records
