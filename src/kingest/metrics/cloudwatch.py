"""CloudWatch export: every interval, the registry's per-source counters go to CloudWatch.

This module is the I/O shell around the pure translation of
:mod:`kingest.metrics.cloudwatch_datums` (registry families to datums, batches and EMF
documents):

* :class:`CloudWatchConfig` is the ``metrics.cloudwatch`` section of the agent's config,
  checked against CloudWatch's limits.
* :func:`classify_failure` decides what becomes of a failed call's datums: sent with the next
  flush, kept until an operator restores access, or dropped as invalid.
* :func:`build_client` makes the botocore client the way kingest's Kinesis transport does.
* :class:`CloudWatchExporter` runs it: it flushes every ``interval_s`` and once more at stop,
  calls botocore in a worker thread so the event loop never waits on CloudWatch, and never
  raises into the agent because CloudWatch is down.

Example config (the agent embeds it as ``metrics.cloudwatch``)::

    metrics:
      cloudwatch:
        namespace: Kingest/Ingestion
        interval_s: 60
        dimensions: {host: web-01}
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, NamedTuple

import botocore.exceptions
import orjson
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    CredentialRetrievalError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.session import Session
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from kingest.errors import CredentialsError, is_retriable_code
from kingest.metrics.cloudwatch_datums import (
    MAX_DIMENSION_VALUE_CHARS,
    METRIC_NAMES,
    SOURCE_DIMENSION,
    Datum,
    batch_datums,
    emf_documents,
    interval_datums,
    merge_datums,
    put_metric_data_params,
    relevant_families,
)
from kingest.metrics.registry import Registry
from kingest.producer.transport import LOCAL_CREDENTIALS, LOCAL_REGION, is_loopback_url

log = logging.getLogger(__name__)

# Service limits (https://docs.aws.amazon.com/AmazonCloudWatch/latest/APIReference/API_PutMetricData.html).
MAX_DIMENSIONS = 30  # CloudWatch limit: dimensions per metric
MAX_NAMESPACE_CHARS = 255  # CloudWatch limit
MAX_DIMENSION_NAME_CHARS = 255  # CloudWatch limit
MAX_EXTRA_DIMENSIONS = MAX_DIMENSIONS - 1  # DataSource takes one

# Botocore's own retries only ride out a blip: a call that still fails is not lost, its datums
# go with the next flush, and a long retry chain would hold up the agent's shutdown flush.
_CLIENT_CONFIG = Config(
    connect_timeout=5,
    read_timeout=15,
    retries={"mode": "standard", "total_max_attempts": 2},
    user_agent_extra="kingest",
)

# Answers that mean "not these credentials / not this account": every call fails the same way
# until an operator acts, but the datums are fine, so they are kept (merged, so bounded by the
# number of series) and sent once CloudWatch accepts them.
_ACCESS_CODES = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "IncompleteSignature",
        "MissingAuthenticationToken",
        "InvalidAccessKeyId",
        "OptInRequired",
        "NotAuthorized",
    }
)

_NAMESPACE_CHARS = re.compile(r"[0-9A-Za-z._\-/#: ]+")
# An extra dimension with one of these names would collide with a member of an EMF document.
_RESERVED_NAMES = frozenset({SOURCE_DIMENSION, "_aws", *METRIC_NAMES})


class CloudWatchConfig(BaseModel):
    """Where and how often the agent's metrics go to CloudWatch."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    namespace: str = Field(
        min_length=1,
        max_length=MAX_NAMESPACE_CHARS,
        description=(
            "CloudWatch namespace of every metric (letters, digits, . - _ / # : and space; "
            "no leading ':' and not 'AWS/', which CloudWatch reserves)."
        ),
    )
    interval_s: float = Field(
        default=60.0,
        ge=1,
        description="Seconds between flushes; each sends what the interval counted.",
    )
    mode: Literal["api", "emf"] = Field(
        default="api",
        description=(
            "api: PutMetricData calls; emf: Embedded Metric Format JSON lines for a log agent "
            "to ship to CloudWatch Logs (no CloudWatch credentials needed)."
        ),
    )
    emf_path: str | None = Field(
        default=None,
        description="File the EMF lines are appended to (mode emf only); None: standard output.",
    )
    dimensions: dict[str, str] = Field(
        default_factory=dict,
        description=(
            f"Extra dimensions on every datum, e.g. host (at most {MAX_EXTRA_DIMENSIONS}: "
            f"{SOURCE_DIMENSION} takes the 30th)."
        ),
    )
    storage_resolution_s: Literal[1, 60] = Field(
        default=60,
        description="Seconds CloudWatch stores each point at: 60 standard, 1 high resolution.",
    )

    @field_validator("namespace")
    @classmethod
    def _check_namespace(cls, value: str) -> str:
        problems = []
        if value.startswith(":"):
            problems.append("must not start with ':'")
        if value.startswith("AWS/"):
            problems.append("must not start with 'AWS/' (reserved for AWS services)")
        if not _NAMESPACE_CHARS.fullmatch(value):
            problems.append("may hold only letters, digits, space and . - _ / # :")
        if problems:
            raise ValueError(f"namespace {value!r} " + "; ".join(problems))
        return value

    @field_validator("dimensions")
    @classmethod
    def _check_dimensions(cls, value: dict[str, str]) -> dict[str, str]:
        problems = []
        if len(value) > MAX_EXTRA_DIMENSIONS:
            problems.append(
                f"{len(value)} extra dimensions; at most {MAX_EXTRA_DIMENSIONS} fit beside "
                f"{SOURCE_DIMENSION}"
            )
        for name, text in value.items():
            problems.extend(_dimension_problems(name, text))
        if problems:
            raise ValueError("; ".join(problems))
        return value

    @model_validator(mode="after")
    def _check_together(self) -> CloudWatchConfig:
        if self.emf_path is not None and self.mode != "emf":
            raise ValueError("emf_path is only used with mode emf")
        return self


def _dimension_problems(name: str, value: str) -> list[str]:
    problems = []
    if name in _RESERVED_NAMES:
        problems.append(f"dimension name {name!r} is taken by kingest")
    if not 1 <= len(name) <= MAX_DIMENSION_NAME_CHARS:
        problems.append(f"dimension name {name!r} must be 1 to {MAX_DIMENSION_NAME_CHARS} chars")
    if name.startswith(":"):
        problems.append(f"dimension name {name!r} must not start with ':'")
    if not _is_dimension_text(name):
        problems.append(f"dimension name {name!r} must be printable ASCII, not only spaces")
    if not 1 <= len(value) <= MAX_DIMENSION_VALUE_CHARS:
        problems.append(f"dimension {name!r}: value must be 1 to {MAX_DIMENSION_VALUE_CHARS} chars")
    elif not _is_dimension_text(value):
        problems.append(f"dimension {name!r}: value must be printable ASCII, not only spaces")
    return problems


def _is_dimension_text(text: str) -> bool:
    # CloudWatch takes only ASCII in dimensions, with at least one non-whitespace character.
    return text.isascii() and text.isprintable() and bool(text.strip())


# --- Failures -----------------------------------------------------------------------------


class Failure(NamedTuple):
    """Why a PutMetricData call failed, and what becomes of its datums.

    ``kind``: ``transient`` (throttling, a 5xx, no answer: the datums go with the next flush),
    ``access`` (credentials or permissions: kept, but an operator must act), ``refused`` (the
    request itself is invalid and would be refused again: the datums are dropped).
    """

    kind: Literal["transient", "access", "refused"]
    code: str
    http_status: int | None
    detail: str


def classify_failure(exc: BaseException) -> Failure:
    """Translate a botocore exception from a PutMetricData call into a :class:`Failure`.

    Args:
        exc: what botocore raised.

    Returns:
        The failure's kind, AWS error code (or exception name), HTTP status and message.
    """
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code") or "Unknown")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        detail = str(error.get("Message") or "")[:200]
        if is_retriable_code(code, status):
            return Failure("transient", code, status, detail)
        if code in _ACCESS_CODES or status in (401, 403):
            return Failure("access", code, status, detail)
        return Failure("refused", code, status, detail)
    code = type(exc).__name__
    detail = str(exc)[:200]
    if isinstance(exc, botocore.exceptions.ConnectionError | HTTPClientError):
        return Failure("transient", code, None, detail)
    if isinstance(exc, NoCredentialsError | PartialCredentialsError | CredentialRetrievalError):
        return Failure("access", code, None, detail)
    return Failure("refused", code, None, detail)


# --- The exporter -----------------------------------------------------------------------------


def build_client(
    *, region: str | None = None, profile: str | None = None, endpoint_url: str | None = None
) -> Any:
    """A botocore CloudWatch client configured the way kingest's Kinesis transport is.

    Credentials come from the standard chain (environment, profile, container or instance
    role); the region from ``region``, the profile or AWS_REGION/AWS_DEFAULT_REGION; the endpoint
    from ``endpoint_url`` or, as botocore resolves it, AWS_ENDPOINT_URL_CLOUDWATCH, AWS_ENDPOINT_URL
    and the config files. A loopback endpoint works without credentials or region.

    Args:
        region: AWS region; None takes it from the standard configuration.
        profile: a named profile of the AWS configuration files.
        endpoint_url: CloudWatch endpoint; None resolves it the standard AWS way.

    Returns:
        The client.

    Raises:
        CredentialsError: no region or no credentials for a non-local endpoint, or an
            unusable AWS configuration (an unknown profile).
    """
    try:
        session = Session(profile=profile)
        # botocore reads AWS_DEFAULT_REGION; the other SDKs (and Lambda) set AWS_REGION.
        configured_region = (
            region or session.get_config_variable("region") or os.environ.get("AWS_REGION")
        )
        client = session.create_client(
            "cloudwatch",
            region_name=configured_region or LOCAL_REGION,
            endpoint_url=endpoint_url,
            config=_CLIENT_CONFIG,
        )
        local = is_loopback_url(client.meta.endpoint_url)
        if configured_region is None and not local:
            client.close()
            raise CredentialsError(
                "No AWS region is configured for CloudWatch: set AWS_REGION (or "
                "AWS_DEFAULT_REGION), a profile region, or pass --region."
            )
        if session.get_credentials() is None:
            client.close()
            if not local:
                raise CredentialsError(
                    "No AWS credentials found for CloudWatch: set AWS_ACCESS_KEY_ID and "
                    "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or run with an instance or task role."
                )
            # Local emulators check only that requests are signed, not by whom.
            client = session.create_client(
                "cloudwatch",
                region_name=configured_region or LOCAL_REGION,
                endpoint_url=endpoint_url,
                config=_CLIENT_CONFIG,
                aws_access_key_id=LOCAL_CREDENTIALS[0],
                aws_secret_access_key=LOCAL_CREDENTIALS[1],
            )
    except BotoCoreError as exc:
        raise CredentialsError(f"AWS configuration is unusable for CloudWatch: {exc}") from exc
    return client


class CloudWatchExporter:
    """Sends the registry's per-source metrics to CloudWatch every interval.

    The registry is read once at construction: that collection is the baseline, so an exporter
    started in a process that has been counting for hours sends only what comes after, not the
    history as one interval. Each flush sends the difference since the previous flush.

    Args:
        registry: the process's metrics registry.
        config: namespace, interval, mode and extra dimensions.
        region: AWS region (mode api); None takes it from the standard configuration.
        profile: named AWS profile (mode api).
        endpoint_url: CloudWatch endpoint (mode api); None honours AWS_ENDPOINT_URL_CLOUDWATCH,
            AWS_ENDPOINT_URL and the config files.

    Attributes:
        calls: PutMetricData calls made, failed ones included.
        failed_calls: PutMetricData calls that failed.
        datums_sent: datums CloudWatch accepted (mode api) or written as EMF (mode emf).
        datums_dropped: datums of calls CloudWatch refused as invalid (never retried).
        documents_written: EMF documents written (mode emf).
        endpoint_url: the CloudWatch endpoint in use; None in mode emf.

    Raises:
        CredentialsError: mode api without region or credentials for a non-local endpoint.
    """

    def __init__(
        self,
        registry: Registry,
        config: CloudWatchConfig,
        *,
        region: str | None = None,
        profile: str | None = None,
        endpoint_url: str | None = None,
    ) -> None:
        self._registry = registry
        self._config = config
        self._client: Any = None
        self.endpoint_url: str | None = None
        if config.mode == "api":
            self._client = build_client(region=region, profile=profile, endpoint_url=endpoint_url)
            self.endpoint_url = str(self._client.meta.endpoint_url)
        self.calls = 0
        self.failed_calls = 0
        self.datums_sent = 0
        self.datums_dropped = 0
        self.documents_written = 0
        self._pending: list[Datum] = []
        # Error codes already logged as ERROR, with their kind.
        self._reported: dict[str, str] = {}
        self._lock = asyncio.Lock()
        self._previous = relevant_families(registry.collect())

    @property
    def pending_datums(self) -> int:
        """Datums held for the next flush because a call failed."""
        return len(self._pending)

    async def run(self, stop: asyncio.Event) -> None:
        """Flush every ``interval_s`` until ``stop`` is set, then flush once more and return.

        Never raises for CloudWatch trouble: failures are logged and their datums go with the
        next flush. Cancelling it skips the final flush (set ``stop`` for a clean end).

        Args:
            stop: set by the agent when it shuts down.
        """
        loop = asyncio.get_running_loop()
        interval_s = self._config.interval_s
        deadline = loop.time() + interval_s
        try:
            while True:
                stopped = await _wait(stop, deadline - loop.time())
                try:
                    await self.flush()
                except Exception:
                    # A collector's bug, not CloudWatch: keep the agent running and say so.
                    log.exception(
                        "CloudWatch flush failed unexpectedly.",
                        extra={"namespace": self._config.namespace},
                    )
                if stopped:
                    return
                deadline += interval_s
                if deadline <= loop.time():  # the flush took longer than an interval
                    deadline = loop.time() + interval_s
        finally:
            self.close()

    async def flush(self) -> None:
        """Send what was counted since the last flush, with anything a failed call left.

        Never raises for CloudWatch trouble (see :meth:`run`).
        """
        async with self._lock:
            current = relevant_families(self._registry.collect())
            fresh = interval_datums(self._previous, current, self._config.dimensions)
            self._previous = current
            datums = merge_datums(self._pending, fresh)
            self._pending = []
            if not datums:
                return
            timestamp = datetime.now(UTC)
            if self._config.mode == "emf":
                await self._write_emf(datums, timestamp)
            else:
                await self._put(datums, timestamp)

    def close(self) -> None:
        """Release the client's pooled connections (a later flush opens new ones)."""
        if self._client is not None:
            self._client.close()

    async def _put(self, datums: list[Datum], timestamp: datetime) -> None:
        namespace = self._config.namespace
        batches = batch_datums(datums, namespace)
        for index, batch in enumerate(batches):
            params = put_metric_data_params(
                namespace, batch, timestamp, self._config.storage_resolution_s
            )
            self.calls += 1
            try:
                await asyncio.to_thread(self._client.put_metric_data, **params)
            except asyncio.CancelledError:
                # The thread may still complete the call: keeping the batch risks sending it
                # twice, dropping it risks losing it; the owner is stopping us, so keep it.
                self._keep(batches[index:])
                raise
            except (ClientError, BotoCoreError) as exc:
                self.failed_calls += 1
                failure = classify_failure(exc)
                if failure.kind == "refused":
                    self.datums_dropped += len(batch)
                    self._report(
                        failure,
                        "CloudWatch refused a batch of metrics as invalid; it is dropped.",
                        len(batch),
                    )
                    continue
                # The next batches would fail the same way: keep them all for the next flush.
                self._keep(batches[index:])
                if failure.kind == "access":
                    self._report(
                        failure,
                        "CloudWatch refuses kingest's credentials; metrics are kept and sent "
                        "once it accepts them.",
                        len(self._pending),
                    )
                else:
                    log.warning(
                        "Cannot send metrics to CloudWatch; they will go with the next flush.",
                        extra=self._failure_fields(failure, len(self._pending)),
                    )
                return
            self.datums_sent += len(batch)
            # Access healed (an operator acted): should it break again, that is news again. A
            # refused batch is a defect of ours that no success elsewhere repairs: once it is.
            self._reported = {c: k for c, k in self._reported.items() if k != "access"}
        log.debug(
            "Sent metrics to CloudWatch.",
            extra={"namespace": namespace, "datums": len(datums), "calls": len(batches)},
        )

    def _keep(self, batches: Sequence[Sequence[Datum]]) -> None:
        self._pending = merge_datums(self._pending, [d for batch in batches for d in batch])

    def _report(self, failure: Failure, message: str, datums: int) -> None:
        # An error that will not heal by itself is an ERROR once; repeating it every interval
        # would bury the rest of the log.
        level = logging.DEBUG if failure.code in self._reported else logging.ERROR
        self._reported[failure.code] = failure.kind
        log.log(level, message, extra=self._failure_fields(failure, datums))

    def _failure_fields(self, failure: Failure, datums: int) -> dict[str, Any]:
        return {
            "namespace": self._config.namespace,
            "error_code": failure.code,
            "http_status": failure.http_status,
            "detail": failure.detail,
            "datums": datums,
        }

    async def _write_emf(self, datums: list[Datum], timestamp: datetime) -> None:
        documents = emf_documents(
            datums, self._config.namespace, timestamp, self._config.storage_resolution_s
        )
        text = b"".join(orjson.dumps(document) + b"\n" for document in documents).decode()
        try:
            await asyncio.to_thread(_append, self._config.emf_path, text)
        except asyncio.CancelledError:
            self._pending = merge_datums(self._pending, datums)
            raise
        except OSError as exc:
            self._pending = merge_datums(self._pending, datums)
            log.warning(
                "Cannot write EMF metrics; they will go with the next flush.",
                extra={"path": self._config.emf_path, "error": str(exc), "datums": len(datums)},
            )
            return
        self.documents_written += len(documents)
        self.datums_sent += len(datums)


def _append(path: str | None, text: str) -> None:
    if path is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    with Path(path).open("a", encoding="utf-8") as out:
        out.write(text)


async def _wait(stop: asyncio.Event, timeout_s: float) -> bool:
    """Wait for ``stop`` at most ``timeout_s``; True when it was set."""
    if stop.is_set():
        return True
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=max(0.0, timeout_s))
    return stop.is_set()
