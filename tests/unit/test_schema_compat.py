"""Schema evolution: every compatibility rule, both directions, and the command's exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from kingest.schemas.compat import SchemaError, check

BASE: dict[str, Any] = {
    "type": "object",
    "properties": {
        "device_id": {"type": "string"},
        "value": {"type": "number", "minimum": -40, "maximum": 125},
        "unit": {"enum": ["C", "F"]},
        "note": {"type": ["string", "null"], "maxLength": 100},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["device_id", "value"],
}


def evolve(**changes: Any) -> dict[str, Any]:
    schema = orjson.loads(orjson.dumps(BASE))
    for path, value in changes.items():
        target = schema
        parts = path.split("__")
        for part in parts[:-1]:
            target = target[part]
        if value is None:
            del target[parts[-1]]
        else:
            target[parts[-1]] = value
    return schema


def paths(old: Any, new: Any, mode: str = "backward") -> list[str]:
    return [problem.path for problem in check(old, new, mode)]  # type: ignore[arg-type]


def test_identical_schemas_are_compatible_every_way() -> None:
    for mode in ("backward", "forward", "full"):
        assert check(BASE, BASE, mode) == []  # type: ignore[arg-type]


def test_an_added_required_field_breaks_backward_not_forward() -> None:
    new = evolve(properties__site={"type": "string"}, required=["device_id", "value", "site"])
    assert paths(BASE, new) == ["$.site"]
    assert "added required field" in str(check(BASE, new, "backward")[0])
    assert paths(BASE, new, "forward") == []


def test_an_added_optional_field_is_compatible() -> None:
    new = evolve(properties__site={"type": "string"})
    assert paths(BASE, new, "full") == []


def test_a_removed_field_breaks_a_closed_reader_only() -> None:
    removed = evolve(properties__note=None)
    assert paths(BASE, removed) == []
    closed = evolve(properties__note=None, additionalProperties=False)
    assert paths(BASE, closed) == ["$.note"]


def test_a_removed_required_field_breaks_forward() -> None:
    new = evolve(properties__value=None, required=["device_id"])
    assert paths(BASE, new, "forward") == ["$.value"]


def test_narrowed_and_widened_types() -> None:
    narrowed = evolve(properties__value={"type": "integer", "minimum": -40, "maximum": 125})
    assert paths(BASE, narrowed) == ["$.value"]
    assert "type narrowed" in str(check(BASE, narrowed, "backward")[0])
    assert paths(BASE, narrowed, "forward") == []  # integers are numbers
    no_null = evolve(properties__note={"type": "string", "maxLength": 100})
    assert paths(BASE, no_null) == ["$.note"]


def test_changed_enum() -> None:
    fewer = evolve(properties__unit={"enum": ["C"]})
    assert paths(BASE, fewer) == ["$.unit"]
    assert "no longer allows ['F']" in str(check(BASE, fewer, "backward")[0])
    more = evolve(properties__unit={"enum": ["C", "F", "K"]})
    assert paths(BASE, more) == [] and paths(BASE, more, "forward") == ["$.unit"]


def test_tighter_bounds_patterns_and_formats() -> None:
    tighter = evolve(properties__value={"type": "number", "minimum": 0, "maximum": 100})
    assert paths(BASE, tighter) == ["$.value", "$.value"]
    shorter = evolve(properties__note={"type": ["string", "null"], "maxLength": 10})
    assert paths(BASE, shorter) == ["$.note"]
    pattern = evolve(properties__device_id={"type": "string", "pattern": "^sensor_"})
    assert paths(BASE, pattern) == ["$.device_id"]


def test_array_items_and_closed_content() -> None:
    items = evolve(properties__tags={"type": "array", "items": {"type": "integer"}})
    assert paths(BASE, items) == ["$.tags[]"]
    open_old = evolve(additionalProperties=True)
    closed = evolve(additionalProperties=False)
    assert "additionalProperties closed" in str(check(open_old, closed, "backward")[0])


def test_references_and_unions() -> None:
    old = {"$defs": {"v": {"type": "number"}}, "type": "object",
           "properties": {"v": {"$ref": "#/$defs/v"}}}  # fmt: skip
    new = {"$defs": {"v": {"type": "string"}}, "type": "object",
           "properties": {"v": {"$ref": "#/$defs/v"}}}  # fmt: skip
    assert paths(old, new) == ["$.v"]
    union = {"anyOf": [{"type": "string"}, {"type": "number"}]}
    assert paths({"type": "string"}, union) == []
    assert paths(union, {"type": "string"}) == ["$|1"]
    with pytest.raises(SchemaError, match="leads nowhere"):
        check({"$ref": "#/$defs/missing"}, {}, "backward")


def run_check(tmp_path: Path, old: Any, new: Any, *extra: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "old.json").write_bytes(orjson.dumps(old) if old is not None else b"{not json")
    (tmp_path / "new.json").write_bytes(orjson.dumps(new))
    return subprocess.run(
        [sys.executable, "-m", "kingest", "schema", "check",
         str(tmp_path / "old.json"), str(tmp_path / "new.json"), *extra],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_the_command_exit_codes(tmp_path: Path) -> None:
    ok = run_check(tmp_path, BASE, BASE, "--mode", "full")
    assert ok.returncode == 0 and ok.stdout.strip() == "compatible (full)"
    new = evolve(properties__site={"type": "string"}, required=["device_id", "value", "site"])
    broken = run_check(tmp_path, BASE, new, "--mode", "backward")
    assert broken.returncode == 1
    assert broken.stdout.splitlines()[0].startswith("$.site: added required field")
    unusable = run_check(tmp_path, None, BASE)
    assert unusable.returncode == 2 and "is not JSON" in unusable.stderr
