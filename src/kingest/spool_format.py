"""The spool's frame format: one item per frame, checked by a CRC, found again after damage.

Each item is a 16-byte little-endian header ``<IQI`` (payload length in bytes, sequence number,
CRC32 of the 8 sequence-number bytes followed by the payload), then the payload. The sequence
number inside the CRC makes a frame from another place (a stale block, a misdirected write)
fail its check even when its bytes are intact.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence

__all__ = [
    "HEADER",
    "HEADER_BYTES",
    "MAX_ITEM_BYTES",
    "encode",
    "frame_at",
    "frame_crc",
    "intact_frame_from",
]

# Frame header: payload length (bytes), sequence number, CRC32 of (sequence bytes + payload).
HEADER = struct.Struct("<IQI")
_SEQ = struct.Struct("<Q")
HEADER_BYTES = HEADER.size
MAX_ITEM_BYTES = 2**32 - 1  # the length field is an unsigned 32-bit integer


def frame_crc(seq: int, payload: bytes | memoryview) -> int:
    """The CRC32 of a frame: its sequence number's 8 bytes, then the payload."""
    return zlib.crc32(payload, zlib.crc32(_SEQ.pack(seq)))


def encode(first: int, items: Sequence[bytes]) -> bytes:
    """Frame ``items`` with consecutive sequence numbers from ``first``, as one buffer.

    Raises:
        ValueError: an item is longer than :data:`MAX_ITEM_BYTES`.
    """
    parts: list[bytes] = []
    for seq, item in enumerate(items, start=first):
        if len(item) > MAX_ITEM_BYTES:
            raise ValueError(f"a spool item is at most {MAX_ITEM_BYTES} bytes, got {len(item)}")
        parts.append(HEADER.pack(len(item), seq, frame_crc(seq, item)))
        parts.append(item)
    return b"".join(parts)


def frame_at(buf: memoryview, offset: int, seq: int) -> int | None:
    """Check the frame at ``offset`` holds item ``seq`` intact.

    Returns:
        The offset just past the frame, or None when the frame is cut short, holds another
        sequence number or fails its CRC.
    """
    end = len(buf)
    if offset + HEADER_BYTES > end:
        return None
    length: int
    found_seq: int
    crc: int
    length, found_seq, crc = HEADER.unpack_from(buf, offset)
    body = offset + HEADER_BYTES
    if found_seq != seq or body + length > end:
        return None
    if frame_crc(seq, buf[body : body + length]) != crc:
        return None
    return body + length


def intact_frame_from(buf: memoryview, start: int, min_seq: int) -> int | None:
    """Find an intact frame of any item numbered ``min_seq`` or later at ``start`` or after.

    Tells a torn tail (nothing intact after the damage) from damage in the middle. Costs a
    header unpack per byte of the region, so a damaged region of a full 16 MiB segment takes
    seconds; that is only paid on an open after a crash or damage.

    Returns:
        The offset of the first such frame, or None.
    """
    end = len(buf)
    # Every frame is at least a header long, so no intact frame can carry a larger number.
    max_seq = min_seq + (end - start) // HEADER_BYTES
    for offset in range(start, end - HEADER_BYTES + 1):
        length, seq, crc = HEADER.unpack_from(buf, offset)
        if seq < min_seq or seq > max_seq:
            continue
        body = offset + HEADER_BYTES
        if body + length <= end and frame_crc(seq, buf[body : body + length]) == crc:
            return offset
    return None
