"""Network addresses as the command line and configs write them: ``HOST:PORT``."""

from __future__ import annotations

__all__ = ["parse_host_port"]


def parse_host_port(
    text: str, default_port: int | None = None, *, any_port: bool = False
) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) as host and port.

    Args:
        text: the address.
        default_port: the port when ``text`` names a host alone; None makes the port required.
        any_port: accept port 0 (an address to listen on: any free port).

    Raises:
        ValueError: not a host and port.
    """
    stripped = text.strip()
    host, sep, port = stripped.rpartition(":")
    if not sep or (stripped.startswith("[") and not host.endswith("]")):
        if default_port is None:
            raise ValueError(f"expected HOST:PORT, not {text!r}")
        host, port = stripped, str(default_port)
    host = host.strip("[]")
    if not host or not port.isdigit() or not (0 if any_port else 1) <= int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, not {text!r}")
    return host, int(port)
