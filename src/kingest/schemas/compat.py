"""Is a JSON Schema a safe evolution of another? The rules schema registries apply.

Compatibility is a question about data: can a consumer holding one schema read what a producer
wrote with the other?

- ``backward``: the NEW schema reads data written with the OLD one (consumers upgrade first);
- ``forward``: the OLD schema reads data written with the NEW one (producers upgrade first);
- ``full``: both.

Both directions come down to one check, :func:`incompatibilities(reader, writer)
<incompatibilities>`: every instance the writer's schema accepts must be accepted by the
reader's. Each way the reader is narrower is one :class:`Incompatibility` with the JSON path
where it stands:

- a field the reader requires that the writer does not (an added required field);
- a field the writer has that a closed reader (``additionalProperties: false``) no longer
  allows (a removed field);
- a type the writer allows and the reader does not (a narrowed type: ``number`` to
  ``integer``, dropping ``null``, ...);
- an enum or const value the writer allows and the reader does not (a changed enum);
- a tighter bound: minimum, maximum, length, item count, a new or changed pattern or format;
- a content model closed (``additionalProperties`` from allowed to ``false``), array items or
  a union branch that no longer fits.

An added optional field is compatible unless the writer explicitly allowed other fields
(``additionalProperties: true`` or a schema): a schema that says nothing of other fields is
taken as describing the fields its data has, the reading most registries' users expect.
Local references (``#/definitions/...``, ``#/$defs/...``) are followed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

__all__ = ["MODES", "Incompatibility", "SchemaError", "check", "incompatibilities"]

Mode = Literal["backward", "forward", "full"]
MODES: Final = ("backward", "forward", "full")
_ALL_TYPES: Final = frozenset({"null", "boolean", "object", "array", "number", "string", "integer"})
# Bounds where a larger reader value narrows (minimum-like) or a smaller one does (maximum-like).
_LOWER_BOUNDS: Final = ("minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties")
_UPPER_BOUNDS: Final = ("maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties")


class SchemaError(ValueError):
    """A document that cannot be judged: not a JSON Schema, or a reference that leads nowhere."""


@dataclass(frozen=True, slots=True)
class Incompatibility:
    """One way the reader's schema refuses data the writer's accepts."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def check(old: Any, new: Any, mode: Mode) -> list[Incompatibility]:
    """Every incompatibility of ``new`` as an evolution of ``old`` under ``mode``.

    Raises:
        SchemaError: a schema is not an object or boolean, or a reference is broken.
        ValueError: an unknown mode.
    """
    if mode == "backward":
        return incompatibilities(new, old)
    if mode == "forward":
        return incompatibilities(old, new)
    if mode == "full":
        found = incompatibilities(new, old)
        found += [
            Incompatibility(p.path, f"{p.message} (forward)") for p in incompatibilities(old, new)
        ]
        return found
    raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")


def incompatibilities(reader: Any, writer: Any) -> list[Incompatibility]:
    """Every way ``reader`` refuses instances that ``writer`` accepts (see the module)."""
    for document in (reader, writer):
        if not isinstance(document, dict | bool):
            raise SchemaError("a schema must be a JSON object or a boolean")
    found: list[Incompatibility] = []
    _Compare(reader, writer, found).schemas(reader, writer, "$", frozenset())
    return found


class _Compare:
    def __init__(self, reader_root: Any, writer_root: Any, found: list[Incompatibility]) -> None:
        self.reader_root = reader_root
        self.writer_root = writer_root
        self.found = found

    def add(self, path: str, message: str) -> None:
        self.found.append(Incompatibility(path, message))

    def schemas(
        self, reader: Any, writer: Any, path: str, seen: frozenset[tuple[int, int]]
    ) -> None:
        reader = _resolve(reader, self.reader_root)
        writer = _resolve(writer, self.writer_root)
        pair = (id(reader), id(writer))
        if pair in seen:  # a recursive schema: this pair is being compared already
            return
        seen = seen | {pair}
        if reader is True or reader == {}:
            return
        if writer is False:
            return
        if reader is False:
            self.add(path, "the new reader accepts nothing here")
            return
        if writer is True:
            writer = {}
        writer_branches = writer.get("anyOf") or writer.get("oneOf")
        if writer_branches:
            rest = _without(writer, "anyOf", "oneOf")
            for index, branch in enumerate(writer_branches):
                resolved = _resolve(branch, self.writer_root)
                merged = {**rest, **resolved} if isinstance(resolved, dict) else resolved
                self.schemas(reader, merged, f"{path}|{index}", seen)
            return
        reader_branches = reader.get("anyOf") or reader.get("oneOf")
        if reader_branches:
            if not any(
                not incompatibilities_within(self, branch, writer, seen)
                for branch in reader_branches
            ):
                self.add(path, "no branch of the reader's union accepts the writer's data")
            return
        self.types(reader, writer, path)
        self.values(reader, writer, path)
        self.bounds(reader, writer, path)
        self.objects(reader, writer, path, seen)
        self.arrays(reader, writer, path, seen)

    def types(self, reader: Mapping[str, Any], writer: Mapping[str, Any], path: str) -> None:
        reader_types = _types(reader)
        writer_types = _types(writer)
        lost = {
            t for t in writer_types
            if t not in reader_types and not (t == "integer" and "number" in reader_types)
        }  # fmt: skip
        if lost:
            before = "any type" if writer_types == _ALL_TYPES else ", ".join(sorted(writer_types))
            after = ", ".join(sorted(reader_types))
            self.add(path, f"type narrowed from {before} to {after} (no longer {sorted(lost)})")

    def values(self, reader: Mapping[str, Any], writer: Mapping[str, Any], path: str) -> None:
        allowed = _allowed_values(reader)
        if allowed is None:
            return
        written = _allowed_values(writer)
        if written is None:
            self.add(path, f"values restricted to {_show(allowed)} where any was allowed")
            return
        missing = [value for value in written if value not in allowed]
        if missing:
            self.add(path, f"enum no longer allows {_show(missing)}")

    def bounds(self, reader: Mapping[str, Any], writer: Mapping[str, Any], path: str) -> None:
        for name in _LOWER_BOUNDS:
            if name in reader and _is_number(reader[name]):
                before = writer.get(name)
                if not _is_number(before) or reader[name] > before:
                    self.add(path, f"{name} raised from {_show(before)} to {reader[name]}")
        for name in _UPPER_BOUNDS:
            if name in reader and _is_number(reader[name]):
                before = writer.get(name)
                if not _is_number(before) or reader[name] < before:
                    self.add(path, f"{name} lowered from {_show(before)} to {reader[name]}")
        for name in ("pattern", "format", "multipleOf"):
            if name in reader and reader[name] != writer.get(name):
                self.add(path, f"{name} {_show(writer.get(name))} changed to {_show(reader[name])}")

    def objects(
        self,
        reader: Mapping[str, Any],
        writer: Mapping[str, Any],
        path: str,
        seen: frozenset[tuple[int, int]],
    ) -> None:
        reader_properties = reader.get("properties") or {}
        writer_properties = writer.get("properties") or {}
        writer_required = set(writer.get("required") or ())
        for name in reader.get("required") or ():
            if name not in writer_required:
                self.add(f"{path}.{name}", "added required field (data written before may lack it)")
        reader_extra = reader.get("additionalProperties", True)
        writer_extra = writer.get("additionalProperties")
        for name, schema in writer_properties.items():
            if name in reader_properties:
                self.schemas(reader_properties[name], schema, f"{path}.{name}", seen)
            elif reader_extra is False:
                self.add(f"{path}.{name}", "removed field that the closed reader no longer allows")
            elif isinstance(reader_extra, dict):
                self.schemas(reader_extra, schema, f"{path}.{name}", seen)
        if writer_extra is not None and writer_extra is not False:
            extra_schema = {} if writer_extra is True else writer_extra
            if reader_extra is False:
                self.add(path, "additionalProperties closed: other fields are no longer allowed")
            for name, schema in reader_properties.items():
                if name not in writer_properties:
                    self.schemas(schema, extra_schema, f"{path}.{name}", seen)

    def arrays(
        self,
        reader: Mapping[str, Any],
        writer: Mapping[str, Any],
        path: str,
        seen: frozenset[tuple[int, int]],
    ) -> None:
        reader_items = reader.get("items")
        if isinstance(reader_items, dict | bool):
            writer_items = writer.get("items", True)
            if isinstance(writer_items, dict | bool):
                self.schemas(reader_items, writer_items, f"{path}[]", seen)
        if reader.get("uniqueItems") and not writer.get("uniqueItems"):
            self.add(path, "uniqueItems now required")


def incompatibilities_within(
    compare: _Compare, reader: Any, writer: Any, seen: frozenset[tuple[int, int]]
) -> list[Incompatibility]:
    """The incompatibilities of one pair, collected apart (to try the branches of a union)."""
    trial = _Compare(compare.reader_root, compare.writer_root, [])
    trial.schemas(reader, writer, "$", seen)
    return trial.found


def _resolve(schema: Any, root: Any) -> Any:
    """Follow a local ``$ref`` (repeatedly) to the schema it names."""
    hops = 0
    while isinstance(schema, dict) and isinstance(schema.get("$ref"), str):
        reference = schema["$ref"]
        if not reference.startswith("#"):
            raise SchemaError(f"only local references are followed, not {reference!r}")
        target = root
        for part in reference[1:].split("/")[1:] if reference != "#" else []:
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, dict) or part not in target:
                raise SchemaError(f"reference {reference!r} leads nowhere")
            target = target[part]
        schema = target
        hops += 1
        if hops > 64:
            raise SchemaError(f"reference {reference!r} loops")
    return schema


def _types(schema: Mapping[str, Any]) -> frozenset[str]:
    declared = schema.get("type")
    if declared is None:
        if "const" in schema or "enum" in schema:
            return frozenset(_type_of(v) for v in _allowed_values(schema) or ())
        return _ALL_TYPES
    if isinstance(declared, str):
        names = [declared]
    elif isinstance(declared, list) and all(isinstance(name, str) for name in declared):
        names = declared
    else:
        raise SchemaError(f"'type' must be a string or a list of strings, not {declared!r}")
    types = set(names)
    if "number" in types:
        types.add("integer")
    return frozenset(types)


def _type_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _allowed_values(schema: Mapping[str, Any]) -> list[Any] | None:
    if "const" in schema:
        return [schema["const"]]
    if isinstance(schema.get("enum"), list):
        return list(schema["enum"])
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _without(schema: Mapping[str, Any], *names: str) -> dict[str, Any]:
    return {k: v for k, v in schema.items() if k not in names}


def _show(value: Any) -> str:
    return "none" if value is None else repr(value)
