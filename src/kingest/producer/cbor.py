"""CBOR (RFC 8949), the subset the Kinesis ``application/x-amz-cbor-1.1`` protocol uses.

Kinesis takes requests in CBOR as well as JSON; CBOR carries record data as raw bytes where JSON
needs base64, which saves a third of the bytes on the wire and the CPU of encoding them. The
encoder writes definite lengths; the decoder also reads the indefinite-length maps, arrays and
strings that AWS's own CBOR writers produce, and skips tags (timestamps are tag 1).
"""

from __future__ import annotations

import struct
from typing import Any

from kingest.errors import KingestError

_MAJOR_UINT = 0
_MAJOR_NINT = 1
_MAJOR_BYTES = 2
_MAJOR_TEXT = 3
_MAJOR_ARRAY = 4
_MAJOR_MAP = 5
_MAJOR_TAG = 6
_MAJOR_SIMPLE = 7
_BREAK = 0xFF
_MAX_DEPTH = 64  # answers are shallow; deeper input is damage


class CborError(KingestError):
    """Input that is not well-formed CBOR (or uses a feature this subset does not read)."""


def head(major: int, length: int) -> bytes:
    """The initial bytes of an item: major type and length or value."""
    if length < 24:
        return bytes((major << 5 | length,))
    if length < 0x100:
        return bytes((major << 5 | 24, length))
    if length < 0x10000:
        return bytes((major << 5 | 25,)) + length.to_bytes(2, "big")
    if length < 0x100000000:
        return bytes((major << 5 | 26,)) + length.to_bytes(4, "big")
    return bytes((major << 5 | 27,)) + length.to_bytes(8, "big")


def encode(value: Any) -> bytes:
    """Encode dicts (str keys), lists, str, bytes, int, float, bool and None.

    Raises:
        TypeError: a value of another type.
    """
    parts: list[bytes] = []
    _encode_into(value, parts)
    return b"".join(parts)


def _encode_into(value: Any, parts: list[bytes]) -> None:
    if value is None:
        parts.append(b"\xf6")
    elif value is True:
        parts.append(b"\xf5")
    elif value is False:
        parts.append(b"\xf4")
    elif isinstance(value, int):
        if value >= 0:
            parts.append(head(_MAJOR_UINT, value))
        else:
            parts.append(head(_MAJOR_NINT, -1 - value))
    elif isinstance(value, float):
        parts.append(b"\xfb" + struct.pack(">d", value))
    elif isinstance(value, str):
        raw = value.encode()
        parts.append(head(_MAJOR_TEXT, len(raw)))
        parts.append(raw)
    elif isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        parts.append(head(_MAJOR_BYTES, len(raw)))
        parts.append(raw)
    elif isinstance(value, list | tuple):
        parts.append(head(_MAJOR_ARRAY, len(value)))
        for item in value:
            _encode_into(item, parts)
    elif isinstance(value, dict):
        parts.append(head(_MAJOR_MAP, len(value)))
        for key, item in value.items():
            _encode_into(key, parts)
            _encode_into(item, parts)
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as CBOR")


def decode(data: bytes) -> Any:
    """Decode one CBOR item that fills ``data`` exactly.

    Raises:
        CborError: malformed input, trailing bytes, or an unsupported feature.
    """
    value, end = _decode(memoryview(data), 0, 0)
    if end != len(data):
        raise CborError(f"{len(data) - end} bytes after the CBOR item")
    return value


def _argument(buf: memoryview, pos: int, info: int) -> tuple[int, int]:
    if info < 24:
        return info, pos
    size = {24: 1, 25: 2, 26: 4, 27: 8}.get(info)
    if size is None:
        raise CborError(f"reserved additional information {info}")
    if pos + size > len(buf):
        raise CborError("truncated CBOR head")
    return int.from_bytes(buf[pos : pos + size], "big"), pos + size


def _decode(buf: memoryview, pos: int, depth: int) -> tuple[Any, int]:
    if depth > _MAX_DEPTH:
        raise CborError("CBOR nested too deeply")
    if pos >= len(buf):
        raise CborError("truncated CBOR item")
    initial = buf[pos]
    pos += 1
    major, info = initial >> 5, initial & 0x1F
    if major == _MAJOR_SIMPLE:
        return _decode_simple(buf, pos, info)
    if info == 31:
        return _decode_indefinite(buf, pos, major, depth)
    argument, pos = _argument(buf, pos, info)
    if major == _MAJOR_UINT:
        return argument, pos
    if major == _MAJOR_NINT:
        return -1 - argument, pos
    if major in (_MAJOR_BYTES, _MAJOR_TEXT):
        end = pos + argument
        if end > len(buf):
            raise CborError("truncated CBOR string")
        raw = bytes(buf[pos:end])
        return (raw if major == _MAJOR_BYTES else _text(raw)), end
    if major == _MAJOR_ARRAY:
        items: list[Any] = []
        for _ in range(argument):
            item, pos = _decode(buf, pos, depth + 1)
            items.append(item)
        return items, pos
    if major == _MAJOR_MAP:
        mapping: dict[Any, Any] = {}
        for _ in range(argument):
            key, pos = _decode(buf, pos, depth + 1)
            mapping[_hashable(key)], pos = _decode(buf, pos, depth + 1)
        return mapping, pos
    # A tag (major 6): the tagged value stands for itself (epoch seconds for tag 1).
    return _decode(buf, pos, depth + 1)


def _decode_indefinite(buf: memoryview, pos: int, major: int, depth: int) -> tuple[Any, int]:
    if major in (_MAJOR_BYTES, _MAJOR_TEXT):
        chunks: list[bytes] = []
        while True:
            if pos >= len(buf):
                raise CborError("unterminated indefinite-length string")
            if buf[pos] == _BREAK:
                raw = b"".join(chunks)
                return (raw if major == _MAJOR_BYTES else _text(raw)), pos + 1
            if buf[pos] >> 5 != major or buf[pos] & 0x1F == 31:
                raise CborError("bad chunk in an indefinite-length string")
            chunk, pos = _decode(buf, pos, depth + 1)
            chunks.append(chunk.encode() if isinstance(chunk, str) else chunk)
    if major == _MAJOR_ARRAY:
        items: list[Any] = []
        while True:
            if pos >= len(buf):
                raise CborError("unterminated indefinite-length array")
            if buf[pos] == _BREAK:
                return items, pos + 1
            item, pos = _decode(buf, pos, depth + 1)
            items.append(item)
    if major == _MAJOR_MAP:
        mapping: dict[Any, Any] = {}
        while True:
            if pos >= len(buf):
                raise CborError("unterminated indefinite-length map")
            if buf[pos] == _BREAK:
                return mapping, pos + 1
            key, pos = _decode(buf, pos, depth + 1)
            mapping[_hashable(key)], pos = _decode(buf, pos, depth + 1)
    raise CborError(f"major type {major} cannot have an indefinite length")


def _decode_simple(buf: memoryview, pos: int, info: int) -> tuple[Any, int]:
    if info == 20:
        return False, pos
    if info == 21:
        return True, pos
    if info in (22, 23):
        return None, pos  # null, undefined
    sizes = {25: (2, ">e"), 26: (4, ">f"), 27: (8, ">d")}
    if info in sizes:
        size, fmt = sizes[info]
        if pos + size > len(buf):
            raise CborError("truncated CBOR float")
        return struct.unpack(fmt, buf[pos : pos + size])[0], pos + size
    if info == 24:
        if pos >= len(buf):
            raise CborError("truncated CBOR simple value")
        return None, pos + 1
    if info < 20:
        return None, pos
    raise CborError("unexpected CBOR break" if info == 31 else f"reserved simple value {info}")


def _text(raw: bytes) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError as exc:
        raise CborError("CBOR text string is not valid UTF-8") from exc


def _hashable(key: Any) -> Any:
    if isinstance(key, list | dict):
        raise CborError("CBOR map key is an array or a map")
    return key
