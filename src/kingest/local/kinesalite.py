"""The embedded Kinesis endpoint: installs the kinesalite emulator and runs it as a child process.

kinesalite (an npm package, pure JavaScript, in-memory store) is installed with npm into a
directory kingest owns, then started as a separate Node.js process in its own process group with
its output in a log file. :class:`LocalKinesis` waits until it answers, creates the streams asked
for and stops it again (also at interpreter exit). :class:`ServerProcess` is the child-process
handling, shared with :mod:`kingest.local.null_endpoint`.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from kingest.errors import ConfigError, KinesisError
from kingest.local.process import ServerProcess, connect_url, run_sync
from kingest.producer.transport import LOCAL_REGION, KinesisTransport

log = logging.getLogger(__name__)

KINESALITE_VERSION = "3.3.3"
MIN_NODE_MAJOR = 18
NEEDS_NODE = "the embedded endpoint needs Node.js 18+ and npm: apt-get install nodejs npm"
NPM_INSTALL_TIMEOUT_S = 600.0

# Started with `node -e` instead of kinesalite's cli.js, with the same store options, because
# cli.js can neither bind one address (it listens on every interface, which would expose an
# unauthenticated endpoint to the network) nor listen on port 0 (it turns 0 into 4567). With
# listen(0) the kernel picks the port and reports it here, so there is no pick-then-bind race.
# The interval ends the emulator when its parent dies without stopping it (SIGKILL, crash): a
# child in its own process group gets no signal from the parent's terminal.
_LAUNCHER = r"""
const [dir, port, host, parentPid] = process.argv.slice(1);
// kinesalite keeps a CBOR request's record data as a Buffer where a JSON request gives it
// base64 text, and GetRecords in JSON then answers {"type":"Buffer",...}. Stored as base64
// like JSON's, data written in either protocol reads back right in both.
const path = require('path');
for (const name of ['putRecord', 'putRecords']) {
  const file = require.resolve(path.join(dir, 'actions', name));
  const original = require(file);
  const asBase64 = (record) => {
    if (record && Buffer.isBuffer(record.Data)) record.Data = record.Data.toString('base64');
  };
  require.cache[file].exports = function (store, data, cb) {
    if (name === 'putRecord') asBase64(data); else (data.Records || []).forEach(asBase64);
    return original(store, data, cb);
  };
}
// kinesalite answers CBOR requests with cbor's Encoder.encodeOne, which returns only the first
// highWaterMark (16 KiB) of a larger answer: a PutRecords of 200+ plain records came back cut.
const cbor = require(require.resolve('cbor', { paths: [dir] }));
const encodeOne = cbor.Encoder.encodeOne;
cbor.Encoder.encodeOne = (obj, options) =>
  encodeOne(obj, Object.assign({ highWaterMark: 64 * 1024 * 1024 }, options));
const server = require(dir)({
  createStreamMs: 0, deleteStreamMs: 0, updateStreamMs: 0, shardLimit: 10000,
});
// Node closes connections idle for 5 s; a client reusing one at that moment gets "Server
// disconnected". Clients close their idle connections themselves (aiohttp after 15 s).
server.keepAliveTimeout = 0;
server.on('error', (err) => {
  const reason = err.code || err.message;
  console.error('kinesalite: cannot listen on ' + host + ':' + port + ': ' + reason);
  process.exit(98);
});
server.listen(Number(port), host, () => {
  const address = server.address();
  console.log('Listening at http://%s:%s', address.address, address.port);
});
setInterval(() => { if (String(process.ppid) !== parentPid) process.exit(0); }, 1000).unref();
process.on('SIGTERM', () => process.exit(0));
"""
_LISTENING = re.compile(r"^Listening at \S+:(\d+)\s*$", re.MULTILINE)

T = TypeVar("T")

_install_announced = False
_install_lock = threading.Lock()


def install_dir() -> Path:
    """Directory that holds (or will hold) kingest's kinesalite installation.

    Returns:
        ``$KINGEST_LOCAL_HOME`` when set; else ``<sys.prefix>/share/kingest/kinesalite`` when it
        can be written (so a virtualenv carries its own copy); else
        ``~/.cache/kingest/kinesalite``.
    """
    configured = os.environ.get("KINGEST_LOCAL_HOME")
    if configured:
        return Path(configured).expanduser()
    in_prefix = Path(sys.prefix) / "share" / "kingest" / "kinesalite"
    if _writable(in_prefix):
        return in_prefix
    return Path.home() / ".cache" / "kingest" / "kinesalite"


def _writable(path: Path) -> bool:
    """True when path exists writable, or could be created under its nearest existing parent."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate.is_dir() and os.access(candidate, os.W_OK | os.X_OK)
    return False


def _cli_path(directory: Path) -> Path:
    return directory / "node_modules" / "kinesalite" / "cli.js"


def _installed_version(directory: Path) -> str | None:
    package_json = directory / "node_modules" / "kinesalite" / "package.json"
    if not _cli_path(directory).is_file():
        return None
    try:
        version = json.loads(package_json.read_text(encoding="utf-8")).get("version")
    except (OSError, ValueError):
        return None
    return version if isinstance(version, str) else None


def node_executable() -> str:
    """Path of a Node.js executable of a supported version.

    Returns:
        The ``node`` found on PATH.

    Raises:
        ConfigError: node is missing, does not run, or is older than version 18.
    """
    node = shutil.which("node")
    if node is None:
        raise ConfigError(f"node is not on PATH; {NEEDS_NODE}")
    try:
        answer = subprocess.run(
            [node, "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        raise ConfigError(f"{node} --version failed ({exc}); {NEEDS_NODE}") from exc
    match = re.match(r"v?(\d+)\.", answer)
    if match is None or int(match.group(1)) < MIN_NODE_MAJOR:
        raise ConfigError(f"{node} is version {answer or 'unknown'}; {NEEDS_NODE}")
    return node


def ensure_installed(*, quiet: bool = False) -> Path:
    """Install kinesalite unless the right version is already there.

    Cheap when installed: one file check, one small JSON read and ``node --version``. Concurrent
    callers (parallel test workers, two terminals) are serialised by a lock file so that npm
    never runs twice into one directory.

    Args:
        quiet: do not announce the installation on standard error.

    Returns:
        Path of kinesalite's ``cli.js``; its directory is the package to ``require``.

    Raises:
        ConfigError: node or npm is missing or too old, or ``npm install`` failed.
    """
    directory = install_dir()
    node_executable()
    if _installed_version(directory) == KINESALITE_VERSION:
        return _cli_path(directory)
    npm = shutil.which("npm")
    if npm is None:
        raise ConfigError(f"npm is not on PATH; {NEEDS_NODE}")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {directory} for kinesalite: {exc}") from exc
    with _install_lock, open(directory / ".kingest-install.lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        if _installed_version(directory) != KINESALITE_VERSION:
            _npm_install(npm, directory, quiet=quiet)
    return _cli_path(directory)


def _npm_install(npm: str, directory: Path, *, quiet: bool) -> None:
    global _install_announced
    if not quiet and not _install_announced:
        _install_announced = True
        print(
            f"kingest: installing kinesalite {KINESALITE_VERSION} (the embedded Kinesis "
            f"endpoint) with npm into {directory}",
            file=sys.stderr,
            flush=True,
        )
    command = [
        npm,
        "install",
        "--prefix",
        str(directory),
        f"kinesalite@{KINESALITE_VERSION}",
        "--no-audit",
        "--no-fund",
        "--loglevel=error",
    ]
    log.info("Running %s.", " ".join(command))
    try:
        result = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=NPM_INSTALL_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ConfigError(
            f"npm install of kinesalite did not finish within {NPM_INSTALL_TIMEOUT_S:g}s"
        ) from exc
    except OSError as exc:
        raise ConfigError(f"cannot run npm ({exc}); {NEEDS_NODE}") from exc
    version = _installed_version(directory)
    if result.returncode != 0 or version != KINESALITE_VERSION:
        output = (result.stdout + result.stderr).strip().splitlines()
        tail = "\n".join(output[-15:]) or "(no output)"
        raise ConfigError(
            f"npm install of kinesalite@{KINESALITE_VERSION} into {directory} failed "
            f"(exit status {result.returncode}):\n{tail}"
        )


async def create_stream(
    transport: KinesisTransport, name: str, shards: int, *, timeout_s: float = 30.0
) -> None:
    """Create a stream (an existing one of that name is fine) and wait until it is ACTIVE.

    Works against any endpoint, the real service included.

    Args:
        transport: where to create it.
        name: the stream name.
        shards: shard count of a new stream; an existing stream keeps its own.
        timeout_s: how long to wait for the stream to become ACTIVE.

    Raises:
        KinesisError: the service refused, or the stream was not ACTIVE within timeout_s.
    """
    try:
        await transport.call("CreateStream", {"StreamName": name, "ShardCount": shards})
        log.info("Created stream %s with %d shards.", name, shards)
    except KinesisError as exc:
        if exc.code != "ResourceInUseException":
            raise
    deadline = time.monotonic() + timeout_s
    delay = 0.02
    status = "unknown"
    while True:
        summary = (await transport.call("DescribeStreamSummary", {"StreamName": name})).get(
            "StreamDescriptionSummary", {}
        )
        status = str(summary.get("StreamStatus", "unknown"))
        if status == "ACTIVE":
            open_shards = summary.get("OpenShardCount")
            if isinstance(open_shards, int) and open_shards != shards:
                log.warning(
                    "Stream %s already exists with %d open shards, not %d.",
                    name,
                    open_shards,
                    shards,
                )
            return
        if time.monotonic() + delay > deadline:
            raise KinesisError(
                f"stream {name} was not ACTIVE within {timeout_s:g}s (status {status})",
                code="StreamNotActive",
                retriable=True,
            )
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)


class LocalKinesis:
    """The embedded Kinesis endpoint: a kinesalite process on this machine.

    Streams are created (and deleted, resharded) immediately, the shard limit is 10,000 and
    everything is kept in memory until :meth:`stop`.

    Args:
        port: TCP port; 0 lets the system pick a free one.
        host: address to listen on.
        streams: streams to create at start, name to shard count.
        start_timeout_s: how long start() waits for the emulator to answer.

    Example::

        with LocalKinesis(streams={"events": 4}) as local:
            transport = KinesisTransport(endpoint_url=local.endpoint_url)
    """

    def __init__(
        self,
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        streams: Mapping[str, int] | None = None,
        start_timeout_s: float = 30.0,
    ) -> None:
        self.host = host
        self.port = port
        self.streams = dict(streams or {})
        self.start_timeout_s = start_timeout_s
        self._process: ServerProcess | None = None
        self._url: str | None = None
        self._transport: KinesisTransport | None = None
        self._lock = threading.Lock()

    @property
    def endpoint_url(self) -> str:
        """URL of the running endpoint.

        Raises:
            ConfigError: the endpoint is not running.
        """
        if self._url is None:
            raise ConfigError("the local Kinesis endpoint is not running; call start() first")
        return self._url

    @property
    def process(self) -> ServerProcess | None:
        """The emulator's process while it runs."""
        return self._process

    def start(self) -> str:
        """Install kinesalite if needed, launch it, wait until it answers and create the streams.

        Returns:
            The endpoint URL (``http://127.0.0.1:PORT``).

        Raises:
            ConfigError: Node.js or npm is missing, the port is taken, or the emulator died or
                did not answer within start_timeout_s.
            KinesisError: a stream could not be created.
        """
        if self._url is not None:
            return self._url
        cli = ensure_installed()
        deadline = time.monotonic() + self.start_timeout_s
        process = ServerProcess(
            "kinesalite",
            [
                node_executable(),
                "-e",
                _LAUNCHER,
                str(cli.parent),
                str(self.port),
                self.host,
                str(os.getpid()),
            ],
        )
        process.start()
        self._process = process
        try:
            try:
                match = process.wait_for_output(_LISTENING, deadline)
            except ConfigError:
                output = process.read_log()
                if "EADDRINUSE" in output:
                    raise ConfigError(
                        f"cannot listen on {self.host}:{self.port}: the address is already in use"
                    ) from None
                if "EADDRNOTAVAIL" in output:
                    raise ConfigError(
                        f"cannot listen on {self.host}:{self.port}: no such local address"
                    ) from None
                raise
            self.port = int(match.group(1))
            url = connect_url(self.host, self.port)
            self._transport = KinesisTransport(endpoint_url=url, region=LOCAL_REGION)
            run_sync(lambda: self._until_ready(deadline))
        except BaseException:
            self.stop()
            raise
        self._url = url
        log.info("Local Kinesis endpoint listening on %s.", url)
        return url

    async def _until_ready(self, deadline: float) -> None:
        transport = self._transport
        assert transport is not None
        try:
            delay = 0.01
            while True:
                try:
                    await transport.call("ListStreams", {})
                    break
                except KinesisError as exc:
                    if self._process is not None and self._process.returncode() is not None:
                        raise ConfigError(
                            f"kinesalite exited while starting:\n{self._process.log_tail()}"
                        ) from exc
                    if time.monotonic() + delay > deadline:
                        raise ConfigError(
                            f"kinesalite did not answer within {self.start_timeout_s:g}s: {exc}"
                        ) from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.2)
            timeout_s = max(deadline - time.monotonic(), 5.0)
            await asyncio.gather(
                *(
                    create_stream(transport, name, shards, timeout_s=timeout_s)
                    for name, shards in self.streams.items()
                )
            )
        finally:
            await transport.close()

    def create_stream(self, name: str, shards: int) -> None:
        """Create a stream on the running endpoint and wait until it is ACTIVE.

        Args:
            name: the stream name; an existing stream of that name is left as it is.
            shards: shard count.

        Raises:
            ConfigError: the endpoint is not running.
            KinesisError: the emulator refused (invalid name or shard count).
        """
        transport = self._transport
        if self._url is None or transport is None:
            raise ConfigError("the local Kinesis endpoint is not running; call start() first")

        async def create() -> None:
            try:
                await create_stream(transport, name, shards)
            finally:
                await transport.close()

        # One transport, one loop at a time: its connection pool belongs to the loop that made it.
        with self._lock:
            run_sync(create)
        self.streams.setdefault(name, shards)

    def stop(self) -> None:
        """Stop the emulator; everything it stored is gone. Idempotent."""
        if self._process is not None:
            self._process.stop()
            self._process = None
            log.info("Local Kinesis endpoint on port %d stopped.", self.port)
        self._url = None

    def __enter__(self) -> LocalKinesis:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
