"""The file source: log files tailed, parsed line by line, committed after ack.

Each accepted line becomes one record: the parsed fields (flat), plus ``source``,
``ingestion_timestamp`` (when the line was read, ISO 8601 UTC), ``file`` and ``offset`` (where
the line starts); a JSON line's own ``source`` field is kept as ``origin``. A line that does
not parse, or is longer than ``max_line_bytes``, goes to the dead-letter queue with its reason.
A file's offset is committed to the checkpoint store once every line before it is delivered or
dead-lettered, so a restart after a crash sends again only what was in flight.

Example (in ``kingest.yaml``)::

    sources:
      - type: file
        name: web_logs
        paths: ["/var/log/nginx/access.log*"]
        format: nginx
        start: end
        partition_key: "{session_id}"
        partition_key_fallback: "{ip_address}"
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator

from kingest.checkpoint import CheckpointStore
from kingest.errors import ConfigError
from kingest.keys import KeyTemplate, key_with_fallback
from kingest.record import DlqReason
from kingest.schemas.validate import SchemaField
from kingest.sources.base import Source, SourceContext
from kingest.sources.weblog.formats import LineParser, ParseError, compile_format
from kingest.sources.weblog.tail import FileTailer

log = logging.getLogger(__name__)


class FileSourceConfig(SchemaField):
    """A ``type: file`` source: files matching globs, tailed and parsed."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    type: Literal["file"] = Field(description="Tail log files.")
    name: str = Field(
        "web_logs",
        min_length=1,
        description="Source name: the records' `source` field, statistics and checkpoints.",
    )
    paths: list[str] = Field(min_length=1, description="Glob patterns of the files to follow.")
    format: str = Field(
        description=(
            "Line format: common, combined, vhost_combined, nginx, json, or apache / nginx "
            "with log_format."
        )
    )
    log_format: str | None = Field(
        None, description="An Apache LogFormat or Nginx log_format string to compile."
    )
    start: Literal["beginning", "end"] = Field(
        "end",
        alias="from",
        description=(
            "Where the first run starts the files it finds. Files that appear later, or while "
            "the agent is down, are read from their beginning."
        ),
    )
    partition_key: str | None = Field(
        None,
        description=(
            "Partition key: a template of fields, e.g. '{session_id}' or '{vhost}:{ip_address}'."
        ),
    )
    partition_key_fallback: str | None = Field(
        "{ip_address}",
        description=(
            "Template used when partition_key cannot be built (a field is missing); when "
            "neither can, the key is a digest of the record."
        ),
    )
    stream: str | None = Field(None, description="Stream of this source (default: the agent's).")
    poll_interval_ms: int = Field(
        250, ge=1, description="How often globs are re-read and rotation is checked."
    )
    rotated_follow_s: float = Field(
        300.0, ge=0, description="How long a file renamed away by rotation is still followed."
    )
    max_line_bytes: int = Field(
        1 << 20, ge=64, description="Longer lines go to the dead-letter queue."
    )

    @field_validator("paths")
    @classmethod
    def _no_empty_glob(cls, paths: list[str]) -> list[str]:
        if not all(path.strip() for path in paths):
            raise ValueError("a path pattern is empty")
        return paths

    def build(self, store: CheckpointStore) -> FileSource:
        """The running source for this config.

        Raises:
            ConfigError: the format or a partition key template is unusable.
        """
        return FileSource(self, store)


class FileSource(Source):
    """Tails the configured files and sends each parsed line (see the module docstring)."""

    def __init__(self, config: FileSourceConfig, store: CheckpointStore) -> None:
        super().__init__(config.name)
        self.config = config
        self.parser: LineParser = compile_format(config.format, config.log_format)
        self.keys = [
            KeyTemplate(None, template)
            for template in (config.partition_key, config.partition_key_fallback)
            if template
        ]
        self._store = store
        self._committed_ends: dict[str, int] = {}
        self._tailer: FileTailer | None = None

    def _new_tailer(self) -> FileTailer:
        config = self.config
        committed = self._store.load(self.name)
        try:
            return FileTailer(
                config.paths,
                # `from` is for the first run. Once the source has checkpoints, a file without
                # one appeared while the agent was down: all of it is new.
                start=config.start if not committed else "beginning",
                committed=committed,
                poll_interval_s=config.poll_interval_ms / 1000,
                rotated_follow_s=config.rotated_follow_s,
                max_line_bytes=config.max_line_bytes,
            )
        except ConfigError as exc:
            raise ConfigError(f"source {self.name}: {exc}") from exc

    async def run(self, ctx: SourceContext, stop: asyncio.Event) -> None:
        """Tail until ``stop`` is set, handing every line to ``ctx``."""
        tailer = self._tailer = self._new_tailer()
        parser = self.parser
        keys = self.keys
        # The usual key is one top-level field: read here, the templates being the fallback.
        key_field = keys[0].single_field if keys else None
        name = self.name
        stats = ctx.stats
        acks_add = ctx.acks.add
        producer = ctx.producer
        put_many = producer.put_many
        max_line_bytes = self.config.max_line_bytes
        async for batch in tailer.batches(stop):
            # Lines read together were ingested together: one timestamp per batch.
            ingested = datetime.now(UTC).isoformat()
            stats.received += len(batch)
            ends: dict[str, int] = {}  # file key -> end of its last line in this batch
            records: list[tuple[dict[str, Any], str | None]] = []
            add_record = records.append
            for file_key, path, offset, end, data, line_number, truncated in batch:
                ends[file_key] = end
                if truncated:
                    ctx.reject(
                        data,
                        DlqReason.INVALID_INPUT,
                        f"{path}:{_where(line_number, offset)}: line longer "
                        f"than max_line_bytes ({max_line_bytes}); cut",
                    )
                    continue
                try:
                    record = parser(data)
                except ParseError as exc:
                    ctx.reject(
                        data,
                        DlqReason.INVALID_INPUT,
                        f"{path}:{_where(line_number, offset)}: {exc}",
                    )
                    continue
                own = record.get("source")
                if own is not None:
                    # A JSON line's own field is kept, as the HTTP source keeps an event's.
                    record["origin"] = own
                record["source"] = name
                record["ingestion_timestamp"] = ingested
                record["file"] = path
                record["offset"] = offset
                key = record.get(key_field) if key_field is not None else None
                if type(key) is not str or not key:
                    try:
                        key = key_with_fallback(keys, record) if keys else None
                    except KeyError:
                        key = None  # the producer keys it by a digest of its content
                add_record((record, key))
            records = ctx.validate(records)
            stats.parsed += len(records)
            await put_many(records, name)
            # One mark per batch: the files' ends are committed once all its lines are done.
            mark = producer.mark()
            for lane, end in ends.items():
                acks_add(lane, end, mark)

    def commit(self, positions: Mapping[str, Any]) -> None:
        """Store the committable end offset of each file, then drop finished files."""
        tailer = self._tailer
        if tailer is None:
            return
        values = {}
        # Files opened at their end are committed there first, so that a restart knows them.
        for key, offset in tailer.take_start_positions().items():
            values[key] = tailer.checkpoint_value(key, offset)
            self._committed_ends.setdefault(key, offset)
        for key, end in positions.items():
            try:
                values[key] = tailer.checkpoint_value(key, end)
            except KeyError:
                continue  # forgotten meanwhile: nothing left to commit for it
            self._committed_ends[key] = end
        if values:
            self._store.save(self.name, values)
        gone = tailer.forget(self._committed_ends)
        if gone:
            self._store.delete(self.name, gone)
            for key in gone:
                self._committed_ends.pop(key, None)

    def status(self) -> dict[str, Any]:
        """The files followed, with their offsets."""
        return {"files": self._tailer.files() if self._tailer is not None else []}


def _where(line_number: int | None, offset: int) -> str:
    return str(line_number) if line_number is not None else f"offset {offset}"
