"""Every source type the agent knows: the ``sources:`` entries of a config parse into these.

To add a source, give it a config class with ``type: Literal["name"]`` and ``build(store)``,
and add the class to :data:`SourceConfig`. (This lives apart from ``kingest.sources`` so that
importing one source's pure parts, such as the log parsers, does not import every source.)
"""

from __future__ import annotations

from kingest.sources.weblog.source import FileSourceConfig

# With a second source type this becomes a union discriminated on `type`.
SourceConfig = FileSourceConfig

__all__ = ["FileSourceConfig", "SourceConfig"]
