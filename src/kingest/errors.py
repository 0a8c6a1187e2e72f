"""Every exception kingest raises, under one root.

::

    KingestError                      root; ``retriable`` and ``code`` on every class
    ├── ConfigError                   a setting or argument that cannot work
    │   └── SchemaLoadError           a JSON Schema that cannot be loaded, compiled or found
    ├── CredentialsError              no usable AWS credentials or region
    ├── ProducerClosedError           put() after close()
    ├── BufferFullError               put() could not get buffer space in time
    ├── AggregationFormatError        starts with the KPL magic but is not a valid aggregate
    ├── CheckpointError               the checkpoint store cannot be opened, read or written
    ├── SpoolError                    a spool (kingest.spool) cannot be read or written, or is
    │                                 damaged before its tail
    ├── ScrapeError                   a metrics endpoint cannot be read (``kingest top``)
    │   └── ExpositionError           its answer is not Prometheus text
    ├── SourceError                   a source's server refused us or cannot be reached
    │   └── CaptureError              a database cannot be captured: settings, privileges, a
    │                                 dropped slot, a purged log (retriable: connection lost)
    └── KinesisError                  an answer from the service (``code`` is the AWS error code)
        ├── StreamNotFoundError       ResourceNotFoundException
        └── TransportError            no answer at all: refused, reset, timed out (retriable)

A record that fails is data, not an exception: it ends in the dead-letter queue with a reason
from :class:`kingest.record.DlqReason`, and its future resolves with that reason.
"""

from __future__ import annotations

# AWS error codes worth another attempt. Anything else the service answers is permanent for the
# request or entry it names (validation, access, KMS configuration, missing stream).
RETRIABLE_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "LimitExceededException",
        "InternalFailure",
        "InternalFailureException",
        "InternalServerError",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "KMSThrottlingException",
        "RequestTimeout",
        "RequestTimeoutException",
        "RequestExpired",
        "ExpiredTokenException",  # credentials are refreshed before the next attempt
        "Throttling",
        "SlowDown",
    }
)


def is_retriable_code(code: str | None, http_status: int | None = None) -> bool:
    """Decide whether an AWS error code (or bare HTTP status) is worth retrying.

    Args:
        code: the ``__type``/``ErrorCode`` the service answered, without any namespace prefix.
        http_status: the HTTP status of the answer, when there was one.

    Returns:
        True for throttling, internal failures and 5xx answers; False for everything else.
    """
    if code in RETRIABLE_CODES:
        return True
    return http_status is not None and (http_status >= 500 or http_status == 429)


class KingestError(Exception):
    """Root of every kingest exception."""

    retriable: bool = False
    code: str | None = None

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class ConfigError(KingestError):
    """A setting, argument or combination of them that cannot work."""


class CredentialsError(KingestError):
    """No AWS credentials or region could be found for a non-local endpoint."""


class ProducerClosedError(KingestError):
    """The producer was closed; it takes no more records."""


class BufferFullError(KingestError):
    """The buffer stayed full for longer than the caller was willing to wait."""

    retriable = True


class AggregationFormatError(KingestError):
    """Data starts with the KPL aggregation magic but is not a valid aggregated record.

    Raised for a bad MD5 digest, a truncated blob or a malformed protobuf body. A plain record
    practically never starts with the four magic bytes, so such data is treated as damage rather
    than passed through as one opaque record.
    """


class CheckpointError(KingestError):
    """The checkpoint file cannot be opened, read or written (corrupt, unwritable, closed)."""


class SourceError(KingestError):
    """A source's server (a broker, a database) refused the source or cannot be reached.

    The message says what the operator must do. ``retriable`` is set when the server may accept
    a later attempt (it was unreachable), not when it refused (credentials, settings).
    """

    def __init__(self, message: str, *, retriable: bool = False) -> None:
        super().__init__(message)
        self.retriable = retriable


class CaptureError(SourceError):
    """Change data capture cannot start or go on: ``wal_level``, a missing REPLICATION
    privilege, a dropped slot, a purged binlog, ..."""


class KinesisError(KingestError):
    """The service answered a request with an error.

    Attributes:
        code: the AWS error code (``ValidationException``, ...).
        http_status: the HTTP status of the answer, or None when there was no answer.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        http_status: int | None = None,
        retriable: bool | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.http_status = http_status
        self.retriable = is_retriable_code(code, http_status) if retriable is None else retriable


class StreamNotFoundError(KinesisError):
    """The stream does not exist (or is not visible to these credentials)."""

    def __init__(self, message: str, *, http_status: int | None = 400) -> None:
        super().__init__(
            message, code="ResourceNotFoundException", http_status=http_status, retriable=False
        )


class TransportError(KinesisError):
    """No usable answer: connection refused or reset, a timeout, a truncated response."""

    def __init__(self, message: str, *, code: str = "TransportError") -> None:
        super().__init__(message, code=code, http_status=None, retriable=True)


def root_cause_retriable(exc: BaseException) -> bool:
    """Walk an exception's ``__cause__`` chain and report whether any link is retriable."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, KingestError):
            return current.retriable
        current = current.__cause__
    return False
