"""The validation stage: each record checked against its source's schema before it is sent.

A source's config names a schema (``schema: {name: web_logs, version: 2}``); the agent
compiles it once at start. A record that breaks it goes to the dead-letter queue with every
violation (path and message), or, with ``on_invalid: flag``, goes on carrying them in
``schema_violations``. With ``stamp: true`` every record carries ``schema_id`` and
``schema_version``, so consumers know which version a record was checked against.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from kingest.errors import ConfigError
from kingest.schemas.registry import Schema, SchemaRegistry, Violation

# The most violations quoted in one dead-letter message; the count says how many there were.
MAX_QUOTED_VIOLATIONS = 20


class SchemaSettings(BaseModel):
    """A source's ``schema:`` block."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(
        min_length=1,
        description="Schema name: built in (web_logs, iot_sensors, database_cdc, app_events) "
        "or one of the agent's schema_paths.",
    )
    version: int | None = Field(None, ge=1, description="Schema version (default: the latest).")
    on_invalid: Literal["dead_letter", "flag"] = Field(
        "dead_letter",
        description="dead_letter: an invalid record goes to the dead-letter queue with its "
        "violations; flag: it is sent with them in `schema_violations`.",
    )
    stamp: bool = Field(
        False, description="Add `schema_id` and `schema_version` to every record sent."
    )


class SchemaField(BaseModel):
    """The ``schema`` field every source config has (a base class of theirs)."""

    # `schema` is a BaseModel method's name: the field is `record_schema`, written `schema`.
    record_schema: SchemaSettings | None = Field(
        None,
        alias="schema",
        description="Validate each record against this JSON Schema before sending it.",
    )


class RecordValidator:
    """Checks records against one compiled schema, as a source's settings say.

    Args:
        schema: the compiled schema.
        settings: what to do with invalid records, and whether to stamp.
    """

    def __init__(self, schema: Schema, settings: SchemaSettings) -> None:
        self.schema = schema
        self.flag = settings.on_invalid == "flag"
        self.stamp = settings.stamp
        self._is_valid = schema.is_valid

    def check(self, record: dict[str, Any]) -> list[Violation] | None:
        """Check one record: None when it may be sent (stamped, flagged if it must be), or its
        violations when it must go to the dead-letter queue instead."""
        if not self._is_valid(record):
            violations = self.schema.violations(record)
            if not self.flag:
                return violations
            record["schema_violations"] = [str(v) for v in violations]
        if self.stamp:
            record["schema_id"] = self.schema.id
            record["schema_version"] = self.schema.version
        return None

    def describe(self, violations: list[Violation]) -> str:
        """A dead-letter message naming the schema and every violation."""
        quoted = "; ".join(str(v) for v in violations[:MAX_QUOTED_VIOLATIONS])
        more = len(violations) - MAX_QUOTED_VIOLATIONS
        suffix = f"; and {more} more" if more > 0 else ""
        count = len(violations)
        plural = "violation" if count == 1 else "violations"
        return f"breaks schema {self.schema.id} ({count} {plural}): {quoted}{suffix}"


def load_registry(paths: Iterable[str]) -> SchemaRegistry:
    """The built-in schemas plus those of every file or directory in ``paths``.

    Raises:
        ConfigError: a path is missing or holds a schema that cannot be used.
    """
    registry = SchemaRegistry.builtin()
    for text in paths:
        path = Path(text)
        if path.is_dir():
            registry.load_dir(path)
        elif path.exists():
            registry.load_file(path)
        else:
            raise ConfigError(f"schema_paths: {text} does not exist")
    return registry


def validator_for(
    registry: SchemaRegistry, settings: SchemaSettings, source: str
) -> RecordValidator:
    """The validator of a source's ``schema:`` block.

    Raises:
        ConfigError: the schema (or that version of it) is unknown.
    """
    try:
        schema = registry.get(settings.name, settings.version)
    except ConfigError as exc:
        raise ConfigError(f"source {source}: schema: {exc}") from exc
    return RecordValidator(schema, settings)
