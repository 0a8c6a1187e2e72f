"""Fixtures shared by the whole suite: one embedded Kinesis endpoint per session, streams on it."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from kingest.local.kinesalite import LocalKinesis
from tests.helpers import require_embedded_endpoint

# Fixtures of the database servers (pg_conn, mysql_conn) and of agent processes (agents).
pytest_plugins = ["tests.servers", "tests.agents"]


@pytest.fixture(scope="session")
def local_kinesis() -> Iterator[LocalKinesis]:
    """The session's embedded Kinesis endpoint (kinesalite), started once and stopped at the end.

    Skips the tests that need it when Node.js or npm is missing; under CI=true that fails them
    instead, so a CI image without Node.js cannot pass by skipping.
    """
    require_embedded_endpoint()
    local = LocalKinesis()
    try:
        local.start()
        yield local
    finally:
        local.stop()


@pytest.fixture(scope="session")
def endpoint_url(local_kinesis: LocalKinesis) -> str:
    """URL of the session's embedded Kinesis endpoint."""
    return local_kinesis.endpoint_url


@pytest.fixture(scope="session")
def stream_factory(local_kinesis: LocalKinesis) -> Callable[..., str]:
    """A function ``make(shards=1, name=None) -> str`` creating an ACTIVE stream on the endpoint.

    The name is ``name`` (default ``test``) with a unique suffix, so tests never share a stream.
    """

    def make(shards: int = 1, name: str | None = None) -> str:
        stream = f"{name or 'test'}-{uuid.uuid4().hex[:12]}"
        local_kinesis.create_stream(stream, shards)
        return stream

    return make
