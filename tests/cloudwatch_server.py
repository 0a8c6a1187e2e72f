"""A local CloudWatch endpoint for integration tests: moto's server in a child process.

moto 5.2 answers PutMetricData, GetMetricStatistics and ListMetrics in each protocol botocore
may speak to CloudWatch: AWS JSON 1.0 (what botocore 1.44 picks: its protocol priority puts
``json`` before ``smithy-rpc-v2-cbor``, although the service model lists CBOR first), RPC v2
CBOR (``POST /service/GraniteServiceVersion20100801/operation/PutMetricData``) and query. So no
endpoint of our own is needed.

The server runs as a separate process (``python -m moto.server``), so nothing of moto, Flask or
Werkzeug is imported into the test process: their warnings stay in the child's log instead of
tripping ``filterwarnings = error``, and stopping the child is a real outage (connection
refused) rather than a simulated one. Its state lives in that process: a restart forgets every
metric, which the outage test relies on.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import time
from collections.abc import Mapping
from types import TracebackType

from kingest.local.process import ServerProcess, connect_url
from tests.servers import unavailable

HOST = "127.0.0.1"
# Werkzeug prints this once the socket listens (with the real port when asked for port 0).
_READY = re.compile(r"Running on http://127\.0\.0\.1:(\d+)")
# Werkzeug's access log line: 127.0.0.1 - - [date] "POST / HTTP/1.1" 200 -
# (colored when the status is an error).
_REQUEST = re.compile(r'"(?:\x1b\[[0-9;]*m)*POST [^"]* HTTP/1\.1')
START_TIMEOUT_S = 30.0


def require_moto_server() -> None:
    """Skip (fail under CI=true) when moto's server cannot run here."""
    for module in ("moto", "flask", "werkzeug"):
        if importlib.util.find_spec(module) is None:
            unavailable(f"{module} is not installed; the local CloudWatch needs moto[server]")


class LocalCloudWatch:
    """moto's server as a child process on a loopback port, stoppable and restartable.

    Args:
        env: extra environment of the server (``INITIAL_NO_AUTH_ACTION_COUNT=0`` makes moto
            check credentials and refuse unknown ones with HTTP 403).
    """

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self.port = 0
        self._env = {
            # The server needs no AWS configuration of the machine, and must not read any.
            **{k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
            **(env or {}),
        }
        self._process: ServerProcess | None = None

    @property
    def endpoint_url(self) -> str:
        """The URL a client on this machine uses."""
        assert self.port, "the server was never started"
        return connect_url(HOST, self.port)

    def start(self) -> str:
        """Start the server: on a free port the first time, on the same port after a stop.

        Returns:
            The endpoint URL.
        """
        argv = [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(self.port)]
        process = ServerProcess("moto-cloudwatch", argv, env=self._env)
        process.start()
        self._process = process
        match = process.wait_for_output(_READY, time.monotonic() + START_TIMEOUT_S)
        self.port = int(match.group(1))
        return self.endpoint_url

    def requests_seen(self) -> int:
        """Requests the running server answered (Werkzeug logs each one)."""
        if self._process is None:
            return 0
        return len(_REQUEST.findall(self._process.read_log()))

    def stop(self) -> None:
        """Stop the server; its port refuses connections until :meth:`start`."""
        if self._process is not None:
            self._process.stop()
            self._process = None

    def __enter__(self) -> LocalCloudWatch:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
