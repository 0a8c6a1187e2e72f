"""Sources: where records come from. Each is a config (``type: ...``) and a class.

To add a source, give it a config class with ``type: Literal["name"]`` and ``build(store)``,
and add the class to :data:`SourceConfig`; the agent's YAML then accepts it.
"""

from __future__ import annotations

from kingest.sources.weblog.source import FileSourceConfig

# Every source's config; the agent's `sources:` entries are parsed into these. With a second
# source type this becomes a union discriminated on `type`.
SourceConfig = FileSourceConfig

__all__ = ["FileSourceConfig", "SourceConfig"]
