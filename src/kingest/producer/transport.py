"""The Kinesis wire: signed JSON 1.1 requests over a pooled asyncio HTTP client.

This is the only module that touches botocore, and only for what botocore does best: the
credential chain, region and endpoint resolution (``AWS_ENDPOINT_URL_KINESIS``, profiles, config
files) and Signature Version 4. Requests themselves go through aiohttp so that many can be in
flight on one event loop without a thread each. Every failure leaves here as a
:class:`kingest.errors.KinesisError`: an answer with its AWS code, or a retriable
:class:`kingest.errors.TransportError` when there was no usable answer.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
from aiohttp.payload import BytesPayload, Payload
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import BotoCoreError
from botocore.session import Session

from kingest.errors import (
    CredentialsError,
    KinesisError,
    StreamNotFoundError,
    TransportError,
)
from kingest.producer.cbor import CborError
from kingest.producer.cbor import decode as cbor_decode

log = logging.getLogger(__name__)

TARGET_PREFIX = "Kinesis_20131202."  # Kinesis API version 2013-12-02
CONTENT_TYPE = "application/x-amz-json-1.1"
CBOR_CONTENT_TYPE = "application/x-amz-cbor-1.1"
LOCAL_REGION = "us-east-1"
# Local emulators check only that requests are signed, not by whom.
LOCAL_CREDENTIALS = ("kingest-local", "kingest-local")


class _RequestBody(BytesPayload):
    """A request body sent as it is.

    aiohttp warns about bytes bodies over 1 MiB because writing them may hold the loop; ours are
    at most 10 MiB by construction and the transport buffers the write, so the warning is noise.
    """

    def __init__(self, value: bytes, content_type: str) -> None:
        Payload.__init__(self, value, content_type=content_type)
        self._size = len(value)


def is_loopback_url(url: str) -> bool:
    """True when the URL's host is this machine (localhost, 127.0.0.0/8, ::1)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class KinesisTransport:
    """Sends Kinesis API calls and returns their decoded JSON answers.

    Args:
        endpoint_url: Kinesis endpoint; None resolves it the standard AWS way (region, then
            ``AWS_ENDPOINT_URL_KINESIS`` / ``AWS_ENDPOINT_URL`` / config files).
        region: AWS region; None takes it from the standard configuration.
        profile: a named profile of the AWS configuration files.
        request_timeout_s: limit on one whole request, answer included.
        connect_timeout_s: limit on opening a connection.
        max_connections: connections kept open to the endpoint (the in-flight request cap).

    Raises:
        CredentialsError: no region or no credentials for a non-local endpoint.
    """

    def __init__(
        self,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        profile: str | None = None,
        request_timeout_s: float = 30.0,
        connect_timeout_s: float = 5.0,
        max_connections: int = 64,
    ) -> None:
        try:
            session = Session(profile=profile)
            # botocore reads AWS_DEFAULT_REGION; the other SDKs (and Lambda) set AWS_REGION.
            configured_region = (
                region or session.get_config_variable("region") or os.environ.get("AWS_REGION")
            )
            if endpoint_url is None:
                # Only a client knows the endpoint rules (AWS_ENDPOINT_URL_KINESIS, config
                # files, partitions); building one costs a service model load, so only then.
                endpoint_url = session.create_client(
                    "kinesis", region_name=configured_region or LOCAL_REGION
                ).meta.endpoint_url
        except BotoCoreError as exc:
            raise CredentialsError(f"AWS configuration is unusable: {exc}") from exc
        self.endpoint_url: str = endpoint_url
        self.local = is_loopback_url(self.endpoint_url)
        if configured_region is None and not self.local:
            raise CredentialsError(
                "No AWS region is configured: set AWS_REGION (or AWS_DEFAULT_REGION), "
                "a profile region, or pass --region."
            )
        self.region: str = configured_region or LOCAL_REGION
        credentials = session.get_credentials()
        if credentials is None:
            if not self.local:
                raise CredentialsError(
                    "No AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                    "AWS_PROFILE, or run with an instance or task role."
                )
            credentials = Credentials(*LOCAL_CREDENTIALS)
        self._credentials = credentials
        self._request_timeout_s = request_timeout_s
        self._timeout = aiohttp.ClientTimeout(
            total=request_timeout_s, sock_connect=connect_timeout_s
        )
        self._max_connections = max_connections
        self._http: aiohttp.ClientSession | None = None

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            connector = aiohttp.TCPConnector(limit=self._max_connections, ttl_dns_cache=300)
            self._http = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                skip_auto_headers=("User-Agent",),
                json_serialize=lambda obj: orjson.dumps(obj).decode(),
            )
        return self._http

    def _signed_headers(self, operation: str, body: bytes, content_type: str) -> dict[str, str]:
        request = AWSRequest(
            method="POST",
            url=self.endpoint_url,
            data=body,
            headers={
                "Content-Type": content_type,
                "X-Amz-Target": TARGET_PREFIX + operation,
                "User-Agent": "kingest",
            },
        )
        frozen = self._credentials.get_frozen_credentials()
        SigV4Auth(frozen, "kinesis", self.region).add_auth(request)
        return dict(request.headers.items())

    async def call(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        """Call one Kinesis operation with a JSON-serialisable parameter dict.

        Raises:
            StreamNotFoundError: the stream does not exist.
            KinesisError: any other error answer (``code`` and ``retriable`` set).
            TransportError: no usable answer (refused, reset, timed out, malformed).
        """
        return await self.call_raw(operation, orjson.dumps(params))

    async def call_raw(
        self, operation: str, body: bytes, content_type: str = CONTENT_TYPE
    ) -> dict[str, Any]:
        """Like :meth:`call` with the body already encoded (the PutRecords hot path).

        Args:
            operation: the Kinesis operation.
            body: the request, JSON or CBOR.
            content_type: :data:`CONTENT_TYPE` (JSON) or :data:`CBOR_CONTENT_TYPE`.
        """
        headers = self._signed_headers(operation, body, content_type)
        try:
            async with self._session().post(
                self.endpoint_url, data=_RequestBody(body, content_type), headers=headers
            ) as resp:
                raw = await resp.read()
                status = resp.status
                answer_type = resp.headers.get("Content-Type", "")
        except TimeoutError as exc:
            raise TransportError(
                f"{operation} timed out after {self._request_timeout_s:g}s", code="RequestTimeout"
            ) from exc
        except aiohttp.ClientError as exc:
            raise TransportError(
                f"{operation} to {self.endpoint_url} failed: {exc or type(exc).__name__}",
                code=type(exc).__name__,
            ) from exc
        if status == 200:
            try:
                answer = _decode(raw, answer_type)
            except (orjson.JSONDecodeError, CborError) as exc:
                raise TransportError(
                    f"{operation} answered 200 with a body that does not decode",
                    code="MalformedAnswer",
                ) from exc
            if not isinstance(answer, dict):
                raise TransportError(
                    f"{operation} answered 200 with a body that is not an object",
                    code="MalformedAnswer",
                )
            return answer
        raise _error_from_answer(operation, status, raw, answer_type)

    async def list_shards(self, stream: str) -> list[dict[str, Any]]:
        """Every shard of a stream (closed ones included), following ListShards' pages.

        Args:
            stream: stream name or ARN.

        Raises:
            StreamNotFoundError: the stream does not exist.
            KinesisError: any other failure.
        """
        shards: list[dict[str, Any]] = []
        member = "StreamARN" if stream.startswith("arn:") else "StreamName"
        params: dict[str, Any] = {member: stream}
        while True:
            answer = await self.call("ListShards", params)
            shards.extend(answer.get("Shards", []))
            token = answer.get("NextToken")
            if not token:
                return shards
            # A page token stands for the stream: Kinesis refuses both together.
            params = {"NextToken": token}

    async def close(self) -> None:
        """Close pooled connections. The transport opens new ones if used again."""
        if self._http is not None:
            await self._http.close()
            self._http = None


def _decode(raw: bytes, content_type: str) -> Any:
    if not raw:
        return {}
    if "cbor" in content_type:
        return cbor_decode(raw)
    return orjson.loads(raw)


def _error_from_answer(operation: str, status: int, raw: bytes, content_type: str) -> KinesisError:
    code: str | None = None
    message = ""
    try:
        body = _decode(raw, content_type)
        if isinstance(body, dict):
            code = str(body.get("__type") or body.get("code") or "") or None
            message = str(body.get("message") or body.get("Message") or "")
    except (orjson.JSONDecodeError, CborError):
        message = raw[:200].decode("utf-8", "replace")
    if code and "#" in code:
        code = code.rsplit("#", 1)[1]  # "com.amazonaws.kinesis.v20131202#Code" -> "Code"
    if code is None:
        code = "ServiceUnavailable" if status in (502, 503, 504) else f"HTTP{status}"
    text = f"{operation} failed with {code} (HTTP {status})" + (f": {message}" if message else "")
    if code == "ResourceNotFoundException":
        return StreamNotFoundError(text, http_status=status)
    return KinesisError(text, code=code, http_status=status)
