"""Agents in tests: commands run as real processes (stopped by signal, killed), and agents run
in-process on an event loop of their own."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kingest.agent.config import AgentConfig
from kingest.agent.runner import Agent
from tests.helpers import wait_until


class AgentProcess:
    """A ``kingest`` agent command running in the background, output captured to files."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        self.cwd = cwd
        self.stderr_path = cwd / f"agent-{time.monotonic_ns()}.err"
        with self.stderr_path.open("wb") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "kingest", *args],
                cwd=cwd,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )

    def stop(self, signum: int = signal.SIGTERM, timeout_s: float = 60) -> int:
        self.process.send_signal(signum)
        return self.process.wait(timeout_s)

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def agents() -> Iterator[Callable[[list[str], Path], AgentProcess]]:
    started: list[AgentProcess] = []

    def start(args: list[str], cwd: Path) -> AgentProcess:
        agent = AgentProcess(args, cwd)
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.kill()


class InProcessAgent:
    """An agent on its own event loop in a thread, stopped like SIGTERM would."""

    def __init__(self, config: AgentConfig, endpoint_url: str) -> None:
        self.agent = Agent(config, endpoint_url=endpoint_url)
        self.loop = asyncio.new_event_loop()
        self.error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self._ready.wait(10)
        # Every source started: a slot made, a subscription taken, a port bound.
        wait_until(
            lambda: self.agent.started.is_set() or not self.thread.is_alive(), 60, "the agent"
        )

    def _run(self) -> None:
        async def main() -> None:
            self._stop = asyncio.Event()
            self._ready.set()
            await self.agent.run(self._stop)

        try:
            self.loop.run_until_complete(main())
        except BaseException as exc:
            self.error = exc
        finally:
            self._ready.set()
            self.loop.close()

    def stop(self) -> None:
        if self.thread.is_alive() and self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(60)
        assert not self.thread.is_alive(), "the agent did not stop"
        if self.error is not None:
            raise self.error


def tail_args(stream: str, endpoint_url: str, pattern: Path, *extra: str) -> list[str]:
    """The arguments of a ``kingest tail`` of combined-format files, quick to flush."""
    return [
        "tail",
        "--path",
        str(pattern),
        "--format",
        "combined",
        "--stream",
        stream,
        "--endpoint-url",
        endpoint_url,
        "--checkpoint",
        "checkpoints.db",
        "--linger-ms",
        "20",
        *extra,
    ]
