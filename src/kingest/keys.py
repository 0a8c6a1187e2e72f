"""Partition keys built from a record's fields: one field, or a template of several.

A key must be stable across restarts and spread load over shards; a key taken from the data
(a session, a device, a table and primary key) is both, unlike the seed's salted ``hash()``.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

_PLACEHOLDER = re.compile(r"\{([^{}]+)\}")


class KeyTemplate:
    """Builds a record's partition key from its JSON fields.

    Args:
        field: dotted path of one field whose value is the key.
        template: text with ``{dotted.path}`` placeholders (or a constant).
    """

    def __init__(self, field: str | None, template: str | None) -> None:
        self.constant: str | None = None
        self.paths: list[list[str]] = []
        self.template = template
        # The usual key is one top-level field: looked up directly, without formatting.
        self._single: str | None = None
        if field is not None:
            self.paths = [field.split(".")]
            self.template = "{0}"
            if "." not in field:
                self._single = field
        elif template is not None:
            names = _PLACEHOLDER.findall(template)
            if not names:
                self.constant = template
            else:
                self.paths = [name.split(".") for name in names]
                if template == f"{{{names[0]}}}" and "." not in names[0]:
                    self._single = names[0]
                # "{a.b}-{c}" becomes "{0}-{1}" so str.format never sees the dotted paths.
                numbered = iter(range(len(names)))
                self.template = _PLACEHOLDER.sub(lambda _: f"{{{next(numbered)}}}", template)

    @property
    def single_field(self) -> str | None:
        """The one top-level field whose str value is the key, when the template is just that.

        A caller may read that field itself and call :meth:`key` only when it is not a str.
        """
        return self._single

    @property
    def needs_fields(self) -> bool:
        """True when the key depends on the record's content."""
        return bool(self.paths)

    def key(self, document: Any) -> str:
        """The partition key of one parsed record.

        Raises:
            KeyError: a field is missing, null, or not a scalar.
        """
        if self._single is not None and type(document) is dict:
            value = document.get(self._single)
            if type(value) is str:
                return value
        values = []
        for path in self.paths:
            value = document
            for part in path:
                if not isinstance(value, dict) or part not in value:
                    raise KeyError(f"field {'.'.join(path)} is missing")
                value = value[part]
            if value is None or isinstance(value, (dict, list)):
                kind = "null" if value is None else type(value).__name__
                raise KeyError(f"field {'.'.join(path)} is {kind}, not a usable key")
            values.append(value if isinstance(value, str) else orjson.dumps(value).decode())
        assert self.template is not None
        return self.template.format(*values)


def key_with_fallback(templates: list[KeyTemplate], document: Any) -> str:
    """The key of the first template whose fields are all present in ``document``.

    Raises:
        KeyError: no template could build a key (the last template's reason).
    """
    problem: KeyError | None = None
    for template in templates:
        try:
            return template.key(document)
        except KeyError as exc:
            problem = exc
    raise problem if problem is not None else KeyError("no partition key template")
