"""The committed position of one tailed file: its identity and the offset read up to.

A file is known by device + inode, checked against a fingerprint (SHA-256) of its first
``fp_len`` bytes, so a reused inode or a rewritten file is never taken for the one read
before. The JSON value kept in the checkpoint store::

    {"dev": 2049, "ino": 1835012, "fp": "9f86d08...", "fp_len": 1024, "offset": 53211,
     "path": "/var/log/nginx/access.log"}
"""

from __future__ import annotations

import hashlib
from typing import Any, NamedTuple

# How many leading bytes identify a file's content (enough to hold a few timestamped lines).
FP_BYTES = 1024


class FilePosition(NamedTuple):
    """A committed position as :meth:`FileTailer.checkpoint_value` wrote it."""

    key: str
    ident: tuple[int, int]  # (st_dev, st_ino)
    fp: str
    fp_len: int
    offset: int
    path: str

    def matches(self, head: bytes) -> bool:
        """True when ``head`` (the file's first bytes) has this position's fingerprint."""
        fp_len = self.fp_len
        return len(head) >= fp_len and hashlib.sha256(head[:fp_len]).hexdigest() == self.fp

    @classmethod
    def from_json(cls, key: str, value: Any) -> FilePosition | None:
        """Read a stored value back; None when it is not one the tailer wrote."""
        v: dict[str, Any] = value if isinstance(value, dict) else {}
        ints: list[Any] = [v.get(k) for k in ("dev", "ino", "fp_len", "offset")]
        fp, path = v.get("fp"), v.get("path", "")
        if not all(type(i) is int and i >= 0 for i in ints) or ints[2] > FP_BYTES:
            return None
        if not isinstance(fp, str) or not isinstance(path, str):
            return None
        return cls(key, (ints[0], ints[1]), fp, ints[2], ints[3], path)
