"""Versioned JSON Schemas of records, compiled once and checked per record.

This module's one job is the schema registry: :class:`SchemaRegistry` holds every version of
every named schema (the built-in ones for kingest's sources, and any loaded from files), each
compiled once into a :class:`Schema` whose :meth:`Schema.is_valid` answers in about a
microsecond and whose :meth:`Schema.violations` lists every problem of a record with its path::

    registry = SchemaRegistry.builtin()
    schema = registry.get("web_logs")          # the latest version
    if not schema.is_valid(record):
        for violation in schema.violations(record):
            print(violation)                   # $.status_code: "abc" is not of type "integer"

Files are named ``<name>.v<N>.json`` (or ``.yaml``/``.yml``), or carry ``x-kingest-name`` and
``x-kingest-version`` keys. A schema without ``$schema`` follows draft 2020-12; ``format`` is an
annotation, never asserted. References are resolved within the document only: a remote
``$ref`` is refused rather than fetched, so that loading a schema never touches the network.

The engine is jsonschema-rs (Rust): it checks a record against a built-in schema in 0.4 to 2 µs
and lists every violation with its path, where the seed's ``jsonschema.validate()`` takes 2 to
14 ms per record and a cached pure-Python validator 40 to 210 µs; fastjsonschema takes 1 to 12 µs
but reports only the first violation and knows no draft past 7 (``bench/validate_speed.py``).
"""

from __future__ import annotations

import functools
import importlib.resources
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import jsonschema_rs
import orjson
import yaml

from kingest.errors import ConfigError

__all__ = ["BUILTIN_NAMES", "Schema", "SchemaLoadError", "SchemaRegistry", "Violation"]

# The schemas shipped in kingest/schemas/builtin/, one per source the agent has.
BUILTIN_NAMES: Final = ("web_logs", "iot_sensors", "database_cdc", "app_events")

NAME_KEY: Final = "x-kingest-name"
VERSION_KEY: Final = "x-kingest-version"
SUFFIXES: Final = (".json", ".yaml", ".yml")

# A name goes into file names and ids: letters, digits, '_' and '-', no dots.
_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_FILE_NAME: Final = re.compile(r"(?P<name>[A-Za-z0-9][A-Za-z0-9_-]*)\.v(?P<version>[0-9]+)")
# Keys that read plainly after a dot in a path; any other is quoted in brackets.
_IDENTIFIER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class SchemaLoadError(ConfigError):
    """A schema that cannot be loaded or found: not a usable JSON Schema, a bad file name, a
    duplicate name and version, or a name or version the registry does not hold."""


@dataclass(frozen=True, slots=True)
class Violation:
    """One way a record breaks its schema.

    Attributes:
        path: where in the record, ``$`` for the record itself, e.g. ``$.status_code``,
            ``$.after.id`` or ``$.tags[2]``; a key that is not an identifier is quoted, as in
            ``$['content-type']``.
        message: what is wrong, e.g. ``"abc" is not of type "integer"``.
    """

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def format_path(parts: Iterable[str | int]) -> str:
    """Write a location, as a list of keys and indices, as a path like ``$.after.id``.

    Args:
        parts: object keys (str) and array indices (int), outermost first.

    Returns:
        ``$`` followed by ``.key``, ``['odd key']`` or ``[index]`` for each part.
    """
    text = "$"
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        elif _IDENTIFIER.fullmatch(part):
            text += f".{part}"
        else:
            escaped = part.replace("\\", "\\\\").replace("'", "\\'")
            text += f"['{escaped}']"
    return text


def _sort_key(parts: Iterable[str | int]) -> tuple[tuple[int, int, str], ...]:
    # Indices sort as numbers ([2] before [10]); a key and an index never meet at one level
    # of one record, but the tag keeps the tuples comparable if they do.
    return tuple((0, part, "") if isinstance(part, int) else (1, 0, part) for part in parts)


class Schema:
    """One version of one named schema, compiled.

    Args:
        name: the schema's name, e.g. ``web_logs``.
        version: its version, from 1.
        document: the JSON Schema (a JSON object).

    Raises:
        SchemaLoadError: a bad name or version, a document that is not JSON, or not a usable
            JSON Schema (it breaks its metaschema, names an unknown ``$schema``, has a
            reference that leads nowhere or outside the document, or a pattern that is not a
            regular expression).

    Attributes:
        name: the schema's name.
        version: its version.
        id: the document's ``$id``, or ``<name>/v<version>`` without one.
        document: the JSON Schema, as a plain JSON object (a copy of the one given).
    """

    __slots__ = ("_is_valid", "_iter_errors", "document", "id", "name", "version")

    def __init__(self, name: str, version: int, document: Mapping[str, Any]) -> None:
        _check_name_and_version(name, version)
        self.name = name
        self.version = version
        where = f"schema {name} v{version}"
        if not isinstance(document, Mapping):
            raise SchemaLoadError(
                f"{where}: a schema document must be a JSON object, not {type(document).__name__}"
            )
        try:
            # A plain copy: later changes to the caller's mapping cannot make ``document``
            # differ from what was compiled, and anything that is not JSON is refused here.
            plain = orjson.loads(orjson.dumps(dict(document)))
        except orjson.JSONEncodeError as exc:
            raise SchemaLoadError(f"{where}: the document is not JSON: {exc}") from exc
        self.document: dict[str, Any] = plain
        declared_id = plain.get("$id")
        self.id: str = declared_id if isinstance(declared_id, str) else f"{name}/v{version}"
        validator = _compile(plain, where)
        # Bound once: is_valid() is on every record's path.
        self._is_valid = validator.is_valid
        self._iter_errors = validator.iter_errors

    def is_valid(self, record: Any) -> bool:
        """Whether ``record`` fits the schema, in about a microsecond.

        Args:
            record: a JSON value (dict, list, str, int, float, bool, None). Anything else is
                judged as orjson would send it (a str subclass as a str, a datetime as its ISO
                string); a value orjson cannot send is not valid.

        Returns:
            True when the record breaks no rule of the schema.
        """
        try:
            return self._is_valid(record)
        except ValueError:
            plain = _as_json(record)
            return plain is not _NOT_JSON and self._check_plain(plain)

    def violations(self, record: Any) -> list[Violation]:
        """Every way ``record`` breaks the schema, sorted by path; ``[]`` when it is valid.

        A valid record costs one :meth:`is_valid`; only an invalid one is walked for its
        violations.

        Args:
            record: as for :meth:`is_valid`.

        Returns:
            One :class:`Violation` per broken rule; a record that is not JSON at all gives
            one violation at ``$`` saying so.
        """
        try:
            if self._is_valid(record):
                return []
            errors = list(self._iter_errors(record))
        except ValueError:
            plain = _as_json(record)
            if plain is _NOT_JSON:
                return [Violation("$", f"not a JSON value: {_why_not_json(record)}")]
            try:
                if self._is_valid(plain):
                    return []
                errors = list(self._iter_errors(plain))
            except ValueError as exc:
                return [Violation("$", f"not a JSON value: {exc}")]
        if not errors:  # the engine's two answers disagree: [] must still mean "valid"
            return [Violation("$", "does not fit the schema")]
        errors.sort(key=lambda error: _sort_key(error.instance_path))
        return [Violation(format_path(error.instance_path), error.message) for error in errors]

    def _check_plain(self, plain: Any) -> bool:
        try:
            return self._is_valid(plain)
        except ValueError:
            return False

    def __repr__(self) -> str:
        return f"Schema({self.name!r}, {self.version}, id={self.id!r})"


class SchemaRegistry:
    """Every version of every schema kingest knows, by name.

    An empty registry holds nothing; :meth:`builtin` gives one with the schemas of kingest's
    own sources.
    """

    def __init__(self) -> None:
        self._schemas: dict[str, dict[int, Schema]] = {}

    @classmethod
    def builtin(cls) -> SchemaRegistry:
        """A new registry holding the shipped schemas (see :data:`BUILTIN_NAMES`).

        Returns:
            The registry; schemas added to it later are its own.
        """
        registry = cls()
        for schema in _builtin_schemas():
            registry._put(schema)
        return registry

    def add(self, name: str, version: int, document: Mapping[str, Any]) -> Schema:
        """Compile a schema and hold it as ``name`` version ``version``.

        Args:
            name: letters, digits, ``_`` and ``-``.
            version: an integer from 1.
            document: the JSON Schema.

        Returns:
            The compiled schema.

        Raises:
            SchemaLoadError: see :class:`Schema`; or this name and version are held already.
        """
        self._refuse_duplicate(name, version)
        schema = Schema(name, version, document)
        self._put(schema)
        return schema

    def load_file(self, path: str | Path) -> Schema:
        """Load, compile and hold one schema file.

        The name and version come from a file name ``<name>.v<N>.json`` (or ``.yaml``,
        ``.yml``), or from the document's ``x-kingest-name`` and ``x-kingest-version`` keys
        when the file is named otherwise; when both say something, they must agree.

        Args:
            path: a ``.json``, ``.yaml`` or ``.yml`` file.

        Returns:
            The compiled schema.

        Raises:
            SchemaLoadError: the file cannot be read or parsed, its name and keys do not say
                its name and version, or the schema cannot be added (see :meth:`add`).
        """
        schema = _load_path(Path(path))
        self._refuse_duplicate(schema.name, schema.version, where=f"{path}: ")
        self._put(schema)
        return schema

    def load_dir(self, path: str | Path) -> list[Schema]:
        """Load every ``*.json``, ``*.yaml`` and ``*.yml`` file of a directory (not below it).

        All or nothing: when any file fails, none is added, and the error lists every file's
        problem.

        Args:
            path: the directory.

        Returns:
            The schemas loaded, in file name order.

        Raises:
            SchemaLoadError: ``path`` is not a readable directory, or any file fails (see
                :meth:`load_file`), or two files give the same name and version.
        """
        directory = Path(path)
        try:
            files = sorted(
                entry
                for entry in directory.iterdir()
                if entry.suffix.lower() in SUFFIXES and entry.is_file()
            )
        except OSError as exc:
            raise SchemaLoadError(f"{directory}: cannot list schema files: {exc}") from exc
        loaded: list[Schema] = []
        problems: list[str] = []
        seen: dict[tuple[str, int], Path] = {}
        for file in files:
            try:
                schema = _load_path(file)
                self._refuse_duplicate(schema.name, schema.version, where=f"{file}: ")
            except SchemaLoadError as exc:
                problems.append(str(exc))
                continue
            key = (schema.name, schema.version)
            if key in seen:
                problems.append(
                    f"{file}: schema {schema.name} v{schema.version} is also in {seen[key]}"
                )
                continue
            seen[key] = file
            loaded.append(schema)
        if problems:
            count = f"{len(problems)} problem{'s' if len(problems) > 1 else ''}"
            raise SchemaLoadError(
                f"{directory}: no schema loaded, {count}:\n" + "\n".join(problems)
            )
        for schema in loaded:
            self._put(schema)
        return loaded

    def get(self, name: str, version: int | None = None) -> Schema:
        """One schema, by name and version.

        Args:
            name: the schema's name.
            version: the version; None for the latest.

        Returns:
            The compiled schema.

        Raises:
            SchemaLoadError: no schema of that name, or not that version of it; the message
                says which names or versions there are.
        """
        versions = self._versions_of(name)
        if version is None:
            return versions[max(versions)]
        schema = versions.get(version)
        if schema is None:
            known = ", ".join(f"v{number}" for number in sorted(versions))
            raise SchemaLoadError(f"schema {name} has no version {version}; it has {known}")
        return schema

    def names(self) -> list[str]:
        """The names of the schemas held, sorted."""
        return sorted(self._schemas)

    def versions(self, name: str) -> list[int]:
        """The versions of one schema, oldest first.

        Raises:
            SchemaLoadError: no schema of that name.
        """
        return sorted(self._versions_of(name))

    def __repr__(self) -> str:
        held = ", ".join(f"{name} {self.versions(name)}" for name in self.names())
        return f"SchemaRegistry({held})"

    def _versions_of(self, name: str) -> dict[int, Schema]:
        versions = self._schemas.get(name)
        if not versions:
            raise SchemaLoadError(f"no schema named {name!r}; {self._known()}")
        return versions

    def _known(self) -> str:
        if not self._schemas:
            return "the registry holds none"
        listed = "; ".join(
            f"{name} ({', '.join(f'v{number}' for number in sorted(versions))})"
            for name, versions in sorted(self._schemas.items())
        )
        return f"known: {listed}"

    def _refuse_duplicate(self, name: str, version: int, where: str = "") -> None:
        held = self._schemas.get(name, {}).get(version)
        if held is not None:
            raise SchemaLoadError(
                f"{where}schema {name} v{version} is already in the registry; "
                "a published version is never replaced: add a new version"
            )

    def _put(self, schema: Schema) -> None:
        self._schemas.setdefault(schema.name, {})[schema.version] = schema


# ---------------------------------------------------------------------------------------------
# Compiling


def _check_name_and_version(name: object, version: object) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise SchemaLoadError(
            f"schema name {name!r} must be letters, digits, '_' and '-' (starting with a "
            "letter or digit)"
        )
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise SchemaLoadError(f"schema {name} version {version!r} must be an integer from 1")


def _compile(document: dict[str, Any], where: str) -> jsonschema_rs.Validator:
    """The validator of a plain JSON document, checked against its metaschema first."""
    try:
        # offline: a remote $ref (or $schema) is an error, never a download.
        validator = jsonschema_rs.validator_for(document, validate_formats=False, offline=True)
        # The compiler checks the document too; this says so explicitly, and only runs once
        # the $schema is known to be one the engine holds (an unknown one would be fetched).
        jsonschema_rs.meta.validate(document)
    except jsonschema_rs.ValidationError as exc:
        at = format_path(exc.instance_path)
        raise SchemaLoadError(
            f"{where} is not a usable JSON Schema: {exc.message} (at {at} in the schema)"
        ) from exc
    except (jsonschema_rs.ReferencingError, ValueError) as exc:
        raise SchemaLoadError(f"{where} is not a usable JSON Schema: {exc}") from exc
    return validator


# ---------------------------------------------------------------------------------------------
# Files


def _load_path(path: Path) -> Schema:
    """A schema file read, named and compiled (not yet in any registry)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SchemaLoadError(f"{path}: cannot read the schema file: {exc}") from exc
    return _load_bytes(path.name, raw, where=str(path))


def _load_bytes(file_name: str, raw: bytes, where: str) -> Schema:
    suffix = Path(file_name).suffix.lower()
    if suffix not in SUFFIXES:
        raise SchemaLoadError(f"{where}: a schema file ends in .json, .yaml or .yml")
    try:
        document = yaml.safe_load(raw) if suffix != ".json" else orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise SchemaLoadError(f"{where}: not valid JSON: {exc}") from exc
    except yaml.YAMLError as exc:
        raise SchemaLoadError(f"{where}: not valid YAML: {exc}") from exc
    if not isinstance(document, dict):
        kind = "empty" if document is None else f"a {type(document).__name__}"
        raise SchemaLoadError(f"{where}: a schema document must be a JSON object, not {kind}")
    name, version = _name_and_version(file_name, document, where)
    try:
        return Schema(name, version, document)
    except SchemaLoadError as exc:
        raise SchemaLoadError(f"{where}: {exc}") from exc


def _name_and_version(file_name: str, document: Mapping[str, Any], where: str) -> tuple[str, int]:
    """The name and version a file's name and its ``x-kingest-*`` keys give (see load_file)."""
    stem = file_name[: -len(Path(file_name).suffix)]
    match = _FILE_NAME.fullmatch(stem)
    from_file = (match["name"], int(match["version"])) if match else None
    declared_name = document.get(NAME_KEY)
    declared_version = document.get(VERSION_KEY)
    if from_file is None and (declared_name is None or declared_version is None):
        raise SchemaLoadError(
            f"{where}: name the file <name>.v<N>{Path(file_name).suffix} or give the document "
            f"both {NAME_KEY!r} and {VERSION_KEY!r}"
        )
    name: Any
    version: Any
    name, version = from_file or (declared_name, declared_version)
    if declared_name is not None and declared_name != name:
        raise SchemaLoadError(
            f"{where}: the file is named for schema {name} but {NAME_KEY} says {declared_name!r}"
        )
    if declared_version is not None and declared_version != version:
        raise SchemaLoadError(
            f"{where}: the file is named for version {version} but {VERSION_KEY} says "
            f"{declared_version!r}"
        )
    try:
        _check_name_and_version(name, version)
    except SchemaLoadError as exc:
        raise SchemaLoadError(f"{where}: {exc}") from exc
    return name, version


@functools.cache
def _builtin_schemas() -> tuple[Schema, ...]:
    """The shipped schemas, compiled once per process (a Schema is never changed)."""
    folder = importlib.resources.files("kingest.schemas").joinpath("builtin")
    schemas = [
        _load_bytes(entry.name, entry.read_bytes(), where=f"built-in schema {entry.name}")
        for entry in folder.iterdir()
        if entry.name.endswith(SUFFIXES)
    ]
    return tuple(sorted(schemas, key=lambda schema: (schema.name, schema.version)))


# ---------------------------------------------------------------------------------------------
# Records that are not plain JSON

_NOT_JSON: Final = object()


def _as_json(record: Any) -> Any:
    """``record`` as orjson sends it (the producer's serializer), or ``_NOT_JSON``."""
    try:
        return orjson.loads(orjson.dumps(record))
    except orjson.JSONEncodeError:
        return _NOT_JSON


def _why_not_json(record: Any) -> str:
    try:
        orjson.dumps(record)
    except orjson.JSONEncodeError as exc:
        return str(exc)
    return "the engine cannot read it"
