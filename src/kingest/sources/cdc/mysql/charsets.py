"""MySQL character sets to Python codecs, for decoding the bytes of text columns.

MySQL names its character sets its own way (``utf8mb4``, ``latin1``, ``koi8r``); :data:`CODECS`
maps each one Python can decode to its codec. A character set not listed has no Python codec,
and its values are sent as base64 (see :mod:`~kingest.sources.cdc.mysql.decode`).
"""

from __future__ import annotations

import codecs
from typing import Final

__all__ = ["CODECS", "LATIN1_ERRORS"]


# MySQL character set -> Python codec. MySQL's latin1 is Windows-1252 with the five bytes that
# code page leaves undefined mapped to the C1 controls; see LATIN1_ERRORS.
CODECS: Final = {
    "utf8mb4": "utf-8",
    "utf8mb3": "utf-8",
    "utf8": "utf-8",
    "latin1": "cp1252",
    "ascii": "ascii",
    "ucs2": "utf-16-be",
    "utf16": "utf-16-be",
    "utf16le": "utf-16-le",
    "utf32": "utf-32-be",
    "latin2": "iso8859-2",
    "latin5": "iso8859-9",
    "latin7": "iso8859-13",
    "greek": "iso8859-7",
    "hebrew": "iso8859-8",
    "cp1250": "cp1250",
    "cp1251": "cp1251",
    "cp1256": "cp1256",
    "cp1257": "cp1257",
    "cp850": "cp850",
    "cp852": "cp852",
    "cp866": "cp866",
    "koi8r": "koi8-r",
    "koi8u": "koi8-u",
    "sjis": "shift_jis",
    "cp932": "cp932",
    "ujis": "euc-jp",
    "eucjpms": "euc-jp",
    "gbk": "gbk",
    "gb2312": "gb2312",
    "gb18030": "gb18030",
    "big5": "big5",
    "euckr": "euc-kr",
    "tis620": "tis-620",
    "macroman": "mac-roman",
    "macce": "mac-latin2",
    "hp8": "hp-roman8",
}
# The error handler, registered below, that decodes those five bytes as MySQL does.
LATIN1_ERRORS: Final = "kingest-mysql-latin1"


def _latin1_undefined(exc: UnicodeError) -> tuple[str, int]:
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    chunk = exc.object[exc.start : exc.end]
    return "".join(chr(byte) for byte in chunk), exc.end


codecs.register_error(LATIN1_ERRORS, _latin1_undefined)
