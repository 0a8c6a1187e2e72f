"""Web access logs: line parsers for Apache and Nginx formats, and the file tailer.

:func:`compile_format` turns a format name or a server's format string into a
:class:`LineParser`; see :mod:`kingest.sources.weblog.formats`.
"""

from kingest.sources.weblog.formats import (
    FORMAT_NAMES,
    LineParser,
    ParseError,
    compile_format,
)

__all__ = ["FORMAT_NAMES", "LineParser", "ParseError", "compile_format"]
