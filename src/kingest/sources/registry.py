"""Every source type the agent knows: the ``sources:`` entries of a config parse into these.

To add a source, give it a config class with ``type: Literal["name"]`` and ``build(store)``,
and add the class to :data:`SourceConfig`. (This lives apart from ``kingest.sources`` so that
importing one source's pure parts, such as the log parsers, does not import every source.)
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from kingest.sources.cdc.mysql.source import MySqlSourceConfig
from kingest.sources.cdc.postgres.source import PostgresSourceConfig
from kingest.sources.http.source import HttpSourceConfig
from kingest.sources.mqtt.source import MqttSourceConfig
from kingest.sources.weblog.source import FileSourceConfig

SourceConfig = Annotated[
    FileSourceConfig
    | PostgresSourceConfig
    | MySqlSourceConfig
    | MqttSourceConfig
    | HttpSourceConfig,
    Field(discriminator="type"),
]

__all__ = [
    "FileSourceConfig",
    "HttpSourceConfig",
    "MqttSourceConfig",
    "MySqlSourceConfig",
    "PostgresSourceConfig",
    "SourceConfig",
]
