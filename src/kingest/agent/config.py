"""The agent's YAML config, validated, with errors that name the key and the line.

Example ``kingest.yaml``::

    stream: web-events
    checkpoint_path: /var/lib/kingest/checkpoints.db
    producer:
      linger_ms: 200
      dlq_dir: /var/lib/kingest/dlq
    metrics:
      address: 127.0.0.1:9108
      cloudwatch: {namespace: Kingest/Ingestion, interval_s: 60}
    sources:
      - type: file
        name: web_logs
        paths: ["/var/log/nginx/access.log*"]
        format: nginx
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kingest.addresses import parse_host_port
from kingest.config import ProducerConfig
from kingest.errors import ConfigError
from kingest.metrics.cloudwatch import CloudWatchConfig
from kingest.sources.registry import SourceConfig


class MetricsConfig(BaseModel):
    """Where the agent's metrics go: a Prometheus endpoint, CloudWatch, or both."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    address: str | None = Field(
        None,
        description=(
            "HOST:PORT serving /metrics (Prometheus text format) and /health; "
            "port 0 takes a free one. None: no endpoint."
        ),
    )

    cloudwatch: CloudWatchConfig | None = Field(
        None,
        description=(
            "Publish RecordsProcessed, RecordsFailed, SuccessRate and more per source to "
            "CloudWatch (or as Embedded Metric Format lines). None: not at all."
        ),
    )

    @field_validator("address")
    @classmethod
    def _check_address(cls, value: str | None) -> str | None:
        if value is not None:
            parse_host_port(value, any_port=True)
        return value


class AgentConfig(BaseModel):
    """Everything ``kingest run -c`` needs: the stream, the producer, the sources."""

    # A DSN with a password must not come back in a validation error's text.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    stream: str | None = Field(
        None, description="Default stream of every source that names none (name or ARN)."
    )
    endpoint_url: str | None = Field(
        None,
        description=(
            "Kinesis endpoint (default: AWS_ENDPOINT_URL_KINESIS or the standard AWS one)."
        ),
    )
    region: str | None = Field(None, description="AWS region (default: standard AWS config).")
    profile: str | None = Field(None, description="Named AWS profile.")
    checkpoint_path: str = Field(
        "kingest-checkpoints.db",
        min_length=1,
        description="SQLite file holding every source's committed positions.",
    )
    commit_interval_ms: int = Field(
        1000, ge=10, description="How often acknowledged positions are committed."
    )
    shutdown_timeout_s: float | None = Field(
        None,
        gt=0,
        description=(
            "Longest a clean shutdown waits for delivery; what is left is dead-lettered. "
            "Default: the records' time-to-live."
        ),
    )
    producer: ProducerConfig = Field(
        default_factory=lambda: ProducerConfig.model_validate({}),
        description="Producer settings, shared by all sources.",
    )
    schema_paths: list[str] = Field(
        default_factory=list,
        description=(
            "Files and directories of user JSON Schemas (<name>.v<N>.json or .yaml), beside "
            "the built-in ones, for the sources' `schema` blocks."
        ),
    )
    metrics: MetricsConfig = Field(
        default_factory=lambda: MetricsConfig.model_validate({}),
        description="Metrics endpoints and exporters.",
    )
    sources: list[SourceConfig] = Field(min_length=1, description="The sources to run.")

    @model_validator(mode="after")
    def _check_sources(self) -> AgentConfig:
        problems = []
        seen: set[str] = set()
        for index, source in enumerate(self.sources):
            if source.name in seen:
                problems.append(f"sources.{index}.name: {source.name!r} is used twice")
            seen.add(source.name)
            if source.stream is None and self.stream is None:
                problems.append(
                    f"sources.{index}.stream: no stream (set it here or at the top level)"
                )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def stream_of(self, source: SourceConfig) -> str:
        """The stream a source sends to."""
        stream = source.stream or self.stream
        assert stream is not None  # checked by the validator
        return stream


def load_config(path: str | os.PathLike[str]) -> AgentConfig:
    """Read and validate an agent config file.

    Raises:
        ConfigError: the file is unreadable, not YAML, or not a valid config; the message
            names each bad key with its line.
    """
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {name}: {exc}") from exc
    return parse_config(text, name)


def parse_config(text: str, name: str = "<config>") -> AgentConfig:
    """Validate config text (see :func:`load_config`)."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{name}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{name}: the config must be a mapping of settings")
    try:
        return AgentConfig.model_validate(data)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            loc = _without_source_tag(list(error["loc"]), data)
            where = _line_of(node, loc)
            key = ".".join(str(part) for part in loc) or "(top level)"
            message = error["msg"].removeprefix("Value error, ")
            place = f"{name}:{where}" if where else name
            lines.append(f"{place}: {key}: {message}")
        raise ConfigError("invalid config:\n  " + "\n  ".join(lines)) from exc


def _without_source_tag(loc: list[Any], data: dict[str, Any]) -> list[Any]:
    """Drop the ``type`` tag pydantic puts in the path of a source's error
    (``sources.0.file.paths`` -> ``sources.0.paths``), so the path is the YAML's."""
    if len(loc) >= 3 and loc[0] == "sources" and isinstance(loc[1], int):
        sources = data.get("sources")
        entry = sources[loc[1]] if isinstance(sources, list) and loc[1] < len(sources) else None
        if isinstance(entry, dict) and entry.get("type") == loc[2]:
            return loc[:2] + loc[3:]
    return loc


def _line_of(node: Any, loc: list[Any]) -> int | None:
    """The 1-based line of the deepest YAML node on the path ``loc``."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == part:
                    node = value
                    line = key.start_mark.line + 1
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                return line
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line
