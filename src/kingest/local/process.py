"""Local servers as child processes, shared by the embedded and the null endpoint.

A :class:`ServerProcess` runs in its own process group with its output in a log file, and is
stopped when its owner stops it or, at the latest, when this interpreter exits.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from kingest.errors import ConfigError

log = logging.getLogger(__name__)

T = TypeVar("T")


class ServerProcess:
    """A local server as a child process: own process group, output in a log file.

    The process gets its own session so that a Ctrl-C in the terminal reaches only the parent,
    which then stops the child in order. Every started process is stopped at interpreter exit
    at the latest.

    Args:
        name: what the process is, for messages.
        argv: the command line.
        env: environment of the child; None inherits this process's.
    """

    def __init__(self, name: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None):
        self.name = name
        self._argv = list(argv)
        self._env = dict(env) if env is not None else None
        self._process: subprocess.Popen[bytes] | None = None
        self._log_dir: Path | None = None

    @property
    def pid(self) -> int | None:
        """Process id of the running child, None when not started or stopped."""
        return self._process.pid if self._process is not None else None

    @property
    def log_path(self) -> Path | None:
        """File that receives the child's standard output and error while it runs."""
        return self._log_dir / f"{self.name}.log" if self._log_dir is not None else None

    def start(self) -> None:
        """Launch the child.

        Raises:
            ConfigError: the executable cannot be run.
        """
        if self._process is not None:
            return
        self._log_dir = Path(tempfile.mkdtemp(prefix=f"kingest-{self.name}-"))
        log_path = self._log_dir / f"{self.name}.log"
        try:
            with open(log_path, "wb") as log_file:
                self._process = subprocess.Popen(
                    self._argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    env=self._env,
                    start_new_session=True,
                )
        except OSError as exc:
            self._cleanup()
            raise ConfigError(f"cannot start {self.name}: {exc}") from exc
        _LIVE.add(self)
        log.debug("Started %s as pid %d, output in %s.", self.name, self._process.pid, log_path)

    def returncode(self) -> int | None:
        """Exit status when the child has ended, None while it runs (or was never started)."""
        return self._process.poll() if self._process is not None else None

    def read_log(self) -> str:
        """Everything the child wrote so far."""
        path = self.log_path
        if path is None:
            return ""
        try:
            return path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 20) -> str:
        """The last lines the child wrote, or a note that it wrote nothing."""
        text = "\n".join(self.read_log().strip().splitlines()[-lines:])
        return text or "(no output)"

    def wait_for_output(self, pattern: re.Pattern[str], deadline: float) -> re.Match[str]:
        """Poll the log until pattern matches in it.

        Args:
            pattern: what the child prints once it is ready.
            deadline: ``time.monotonic()`` value after which to give up.

        Returns:
            The match.

        Raises:
            ConfigError: the child exited first, or the deadline passed.
        """
        delay = 0.005
        while True:
            match = pattern.search(self.read_log())
            if match is not None:
                return match
            status = self.returncode()
            if status is not None:
                # It may have printed the line and exited; read once more before failing.
                match = pattern.search(self.read_log())
                if match is not None:
                    return match
                raise ConfigError(
                    f"{self.name} exited with status {status} while starting:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise ConfigError(f"{self.name} did not start in time:\n{self.log_tail()}")
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the child's process group: SIGTERM, then SIGKILL after timeout_s. Idempotent."""
        process = self._process
        if process is not None:
            if process.poll() is None:
                self._signal_group(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    log.warning(
                        "%s (pid %d) ignored SIGTERM for %gs; killing it.",
                        self.name.capitalize(),
                        process.pid,
                        timeout_s,
                    )
                    self._signal_group(process.pid, signal.SIGKILL)
                    process.wait()
            self._process = None
        _LIVE.discard(self)
        self._cleanup()

    @staticmethod
    def _signal_group(pgid: int, signum: int) -> None:
        # Only called while the leader is unreaped, so its pid (the group id) is still ours.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signum)

    def _cleanup(self) -> None:
        if self._log_dir is not None:
            shutil.rmtree(self._log_dir, ignore_errors=True)
            self._log_dir = None


_LIVE: set[ServerProcess] = set()


@atexit.register
def _stop_all() -> None:
    for process in list(_LIVE):
        process.stop(timeout_s=2.0)


def run_sync(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from synchronous code, even inside a running event loop.

    Args:
        factory: makes the coroutine; called in the thread that runs it.

    Returns:
        The coroutine's result.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    # A running loop cannot be re-entered; give the coroutine a loop of its own in a thread.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


def connect_url(host: str, port: int) -> str:
    """URL a client on this machine uses to reach a server bound to host:port."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"
