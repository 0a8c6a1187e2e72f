"""From an MQTT message to a sensor reading: topic fields, payload fields, data-quality rules.

A reading is one flat JSON object: the payload's fields, the fields the topic template takes
from the topic (``sensors/{device_type}/{device_id}`` by default) where the payload lacks them,
and ``topic``. For example the message ``{"value": 22.5, "unit": "°C"}`` on
``sensors/temperature/sensor_001`` becomes::

    {"value": 22.5, "unit": "°C", "device_type": "temperature", "device_id": "sensor_001",
     "topic": "sensors/temperature/sensor_001"}

The payload's own fields win over the topic's: a gateway that publishes for many devices on one
topic names each device in its payload. A payload that is a bare JSON number is the reading's
``value``. Anything else that is not a JSON object is rejected with the reason.

Data-quality rules are per ``device_type``: required fields, a value range and allowed units.
:func:`check_reading` lists every rule a reading breaks.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "PayloadError",
    "QualityRule",
    "TopicTemplate",
    "check_reading",
    "reading_from_message",
]

_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class PayloadError(ValueError):
    """A message payload that cannot be a reading."""


class QualityRule(BaseModel):
    """What a reading of one device type must satisfy."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    required: list[str] = Field(
        default_factory=lambda: ["device_id", "value"],
        description="Fields every reading must have (not null).",
    )
    min: float | None = Field(None, description="Lowest acceptable value.")
    max: float | None = Field(None, description="Highest acceptable value.")
    units: list[str] | None = Field(None, description="Units allowed; any when absent.")


class TopicTemplate:
    """Fields taken from a topic's levels, e.g. ``sensors/{device_type}/{device_id}``.

    Each level of the template is a literal or one ``{field}``. A topic with another number of
    levels, or another literal, gives no fields (its payload must then carry them).

    Raises:
        ValueError: a level mixes a field with other text, or a field name repeats.
    """

    def __init__(self, template: str) -> None:
        self.template = template
        self._levels: list[tuple[bool, str]] = []
        seen: set[str] = set()
        for level in template.split("/"):
            match = _FIELD.fullmatch(level)
            if match:
                name = match.group(1)
                if name in seen:
                    raise ValueError(f"topic template {template!r} names {name!r} twice")
                seen.add(name)
                self._levels.append((True, name))
            elif "{" in level or "}" in level:
                raise ValueError(
                    f"topic template {template!r}: a level is a literal or one {{field}}, "
                    f"not {level!r}"
                )
            else:
                self._levels.append((False, level))

    def fields(self, topic: str) -> dict[str, str]:
        """The template's fields in ``topic``; empty when the topic does not fit."""
        levels = topic.split("/")
        if len(levels) != len(self._levels):
            return {}
        found: dict[str, str] = {}
        for (is_field, text), level in zip(self._levels, levels, strict=True):
            if is_field:
                found[text] = level
            elif text != level:
                return {}
        return found


def reading_from_message(topic: str, payload: bytes, template: TopicTemplate) -> dict[str, Any]:
    """The reading a message carries (see the module docstring).

    Raises:
        PayloadError: the payload is not a JSON object or number.
    """
    try:
        decoded = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise PayloadError(f"payload is not JSON: {exc}") from None
    if isinstance(decoded, bool) or not isinstance(decoded, dict | int | float):
        raise PayloadError(f"payload is JSON {type(decoded).__name__}, not an object or a number")
    reading: dict[str, Any] = decoded if isinstance(decoded, dict) else {"value": decoded}
    for name, value in template.fields(topic).items():
        reading.setdefault(name, value)
    reading["topic"] = topic
    return reading


def check_reading(reading: Mapping[str, Any], rules: Mapping[str, QualityRule]) -> list[str]:
    """Every data-quality rule the reading breaks, as messages; empty when it passes.

    The rule is the one of the reading's ``device_type``; a type without a rule passes.
    """
    rule = rules.get(str(reading.get("device_type")))
    if rule is None:
        return []
    problems = [f"missing required field {name!r}" for name in rule.required
                if reading.get(name) is None]  # fmt: skip
    value = reading.get("value")
    if rule.min is not None or rule.max is not None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            if value is not None:
                problems.append(f"value {value!r} is not a number")
        elif not math.isfinite(value):
            problems.append(f"value {value} is not finite")
        else:
            if rule.min is not None and value < rule.min:
                problems.append(f"value {value} below min {rule.min:g}")
            if rule.max is not None and value > rule.max:
                problems.append(f"value {value} above max {rule.max:g}")
    if rule.units is not None and reading.get("unit") not in rule.units:
        problems.append(f"unit {reading.get('unit')!r} not in {rule.units}")
    return problems
