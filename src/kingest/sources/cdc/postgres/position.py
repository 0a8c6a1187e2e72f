"""PostgreSQL's position type: a log sequence number (LSN).

An LSN is a 64-bit byte position in the write-ahead log, written by PostgreSQL as two
hexadecimal halves: ``16/B374D848`` is ``0x16B374D848``. kingest stores and emits it as an
integer (Debezium's ``source.lsn`` is one too) and shows the text form to people::

    {"slot": "kingest", "lsn": 97500059720, "lsn_text": "16/B374D848"}
"""

from __future__ import annotations

__all__ = ["format_lsn", "parse_lsn"]

_MAX_LSN = (1 << 64) - 1


def parse_lsn(text: str) -> int:
    """The integer of an LSN in its text form, two hexadecimal halves: ``16/B374D848``.

    Raises:
        ValueError: ``text`` is not an LSN.
    """
    high, sep, low = text.strip().partition("/")
    if not sep or not high or not low or len(high) > 8 or len(low) > 8:
        raise ValueError(f"not an LSN: {text!r}")
    try:
        return (int(high, 16) << 32) | int(low, 16)
    except ValueError:
        raise ValueError(f"not an LSN: {text!r}") from None


def format_lsn(lsn: int) -> str:
    """PostgreSQL's text form of an LSN.

    Raises:
        ValueError: ``lsn`` is negative or wider than 64 bits.
    """
    if not 0 <= lsn <= _MAX_LSN:
        raise ValueError(f"LSN out of range: {lsn}")
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"
