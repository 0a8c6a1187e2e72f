"""Agent commands run as real processes in tests: started, stopped by signal, killed."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


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
