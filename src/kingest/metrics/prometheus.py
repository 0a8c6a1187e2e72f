"""Prometheus exposition: the registry rendered as text format 0.0.4, served over HTTP.

``/metrics`` answers with every family of the registry; ``/health`` with the agent's state as
JSON (200 while it runs, 503 while it starts, stops or has failed), for load balancers and
orchestrators. The server runs on the agent's event loop: a scrape reads the live counters
between two batches, never in the middle of one.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from typing import Any

from aiohttp import web

from kingest.errors import ConfigError
from kingest.metrics.registry import MetricFamily, Registry

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DEFAULT_METRICS_PORT = 9108


def render(families: Iterable[MetricFamily]) -> str:
    """The families in the Prometheus text format, ending with a newline."""
    lines: list[str] = []
    for family in families:
        lines.append(f"# HELP {family.name} {_escape_help(family.help)}")
        lines.append(f"# TYPE {family.name} {family.type.value}")
        for sample in family.samples:
            if sample.labels:
                labels = ",".join(f'{k}="{_escape_label(v)}"' for k, v in sample.labels)
                lines.append(f"{sample.name}{{{labels}}} {format_value(sample.value)}")
            else:
                lines.append(f"{sample.name} {format_value(sample.value)}")
    lines.append("")
    return "\n".join(lines)


def format_value(value: float) -> str:
    """A sample value as Prometheus writes it: integers without a fraction, ``+Inf``, ``NaN``."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


class MetricsServer:
    """Serves ``/metrics`` and ``/health`` on HOST:PORT.

    Args:
        registry: what ``/metrics`` shows.
        host: the address to listen on.
        port: the port (0: any free one, see :attr:`port` once started).
        health: returns (healthy, details) for ``/health``.
    """

    def __init__(
        self,
        registry: Registry,
        host: str,
        port: int,
        health: Callable[[], tuple[bool, dict[str, Any]]],
    ) -> None:
        self.registry = registry
        self.host = host
        self.port = port
        self._health = health
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Bind and serve.

        Raises:
            ConfigError: the address cannot be bound (taken, or not this host's).
        """
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/health", self._health_check)
        app.router.add_get("/", self._index)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(
                f"cannot serve metrics on {self.host}:{self.port}: {exc.strerror or exc}"
            ) from exc
        self._runner = runner
        addresses = runner.addresses
        if addresses:
            self.port = int(addresses[0][1])
        log.info("Serving metrics.", extra={"address": f"{self.host}:{self.port}"})

    async def close(self) -> None:
        """Stop serving (idempotent)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _metrics(self, _: web.Request) -> web.Response:
        body = render(self.registry.collect())
        return web.Response(body=body.encode(), headers={"Content-Type": CONTENT_TYPE})

    async def _health_check(self, _: web.Request) -> web.Response:
        healthy, details = self._health()
        return web.json_response(details, status=200 if healthy else 503)

    async def _index(self, _: web.Request) -> web.Response:
        return web.Response(text="kingest: see /metrics and /health\n")
