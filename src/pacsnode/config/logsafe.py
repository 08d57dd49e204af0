"""Log records made safe to write one per line: peer-supplied text escaped and cut (a logging.Filter)."""

from __future__ import annotations

import logging
import numbers
import re
import traceback
from collections.abc import Mapping
from types import TracebackType
from typing import Any

# How much of one argument (an AE title, a UID, a user name, a path, an exception's text) a
# log line shows, and of a whole message; beyond that the text is cut, with "…(N chars)".
ARG_LIMIT = 512
MESSAGE_LIMIT = 8192

# C0 controls (CR, LF, TAB, ESC...), DEL, C1 controls (NEL...), the Unicode line and paragraph
# separators, the bidirectional overrides and isolates ("Trojan Source": they reorder what a
# terminal shows) and lone surrogates (a JSON "\ud800": a stream cannot encode them).
_OTHER = "\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff"
_UNSAFE_RE = re.compile(f"[\x00-\x1f{_OTHER}]")
_UNSAFE_BUT_BREAKS_RE = re.compile(f"[\x00-\x08\x0b\x0c\x0e-\x1f{_OTHER}]")  # TAB, LF, CR kept
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}

_ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
# traceback's own lines between the tracebacks of chained exceptions.
_CHAINS = (
    "\nThe above exception was the direct cause of the following exception:\n\n",
    "\nDuring handling of the above exception, another exception occurred:\n\n",
)


def _escaped(char: str) -> str:
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _sub(match: re.Match[str]) -> str:
    return _escaped(match.group())


def escape(text: str, *, keep_breaks: bool = False) -> str:
    """``text`` with every control character written out: \\n, \\r, \\t, \\x1b, \\x85, \\u2028...

    ``keep_breaks``: tabs, line feeds and carriage returns stay as they are (free text that XML
    carries). Backslashes are not doubled: the result is for reading, not to be unescaped.
    """
    pattern = _UNSAFE_BUT_BREAKS_RE if keep_breaks else _UNSAFE_RE
    return pattern.sub(_sub, text) if pattern.search(text) else text


def clean(text: str, limit: int | None = ARG_LIMIT, *, keep_breaks: bool = False) -> str:
    """``text`` escaped, and cut to ``limit`` characters (None: whole) plus "…(N chars)", N its length."""
    if limit is None:
        return escape(text, keep_breaks=keep_breaks)
    head = text[:limit]
    safe = escape(head, keep_breaks=keep_breaks)
    if len(safe) > limit:
        # Escapes made it longer: keep whole escapes only, up to the limit.
        pattern = _UNSAFE_BUT_BREAKS_RE if keep_breaks else _UNSAFE_RE
        pieces: list[str] = []
        size = 0
        for char in head:
            piece = _escaped(char) if pattern.fullmatch(char) else char
            if size + len(piece) > limit:
                break
            pieces.append(piece)
            size += len(piece)
        safe = "".join(pieces)
    elif len(text) <= limit:
        return safe
    return f"{safe}…({len(text)} chars)"


class _Shown:
    """An argument shown escaped and cut, whether the format asks for %s or %r."""

    __slots__ = ("limit", "value")

    def __init__(self, value: object, limit: int | None) -> None:
        self.value = value
        self.limit = limit

    def __str__(self) -> str:
        return clean(str(self.value), self.limit)

    def __repr__(self) -> str:
        return clean(repr(self.value), self.limit)


def _arg(value: object, limit: int | None) -> object:
    if value is None or isinstance(value, numbers.Number):
        return value  # %d, %x, %.1f need the number itself; its text is safe
    if isinstance(value, str) and (limit is None or len(value) <= limit) and not _UNSAFE_RE.search(value):
        return value  # the common case, as fast as it can be
    return _Shown(value, limit)


def _lines(text: str, limit: int) -> str:
    # Text of several lines that are ours (a traceback's frames, a stack): each line escaped and cut.
    return "\n".join(clean(line, limit) for line in text.split("\n"))


def format_exception(exc_info: _ExcInfo, limit: int = MESSAGE_LIMIT) -> str:
    """A traceback as `logging` writes it, but each exception's own text on one escaped line.

    The frames (file names, line numbers, our source lines) keep their lines; what an
    exception says (which may quote a peer) cannot start a line of its own.
    """
    chunks: list[str] = []
    for chunk in traceback.format_exception(*exc_info):
        body = chunk[:-1] if chunk.endswith("\n") else chunk
        if chunk in _CHAINS:
            chunks.append(body)
        elif chunk.startswith(("Traceback (most recent call last):", '  File "')):
            chunks.append(_lines(body, limit))
        else:
            chunks.append(clean(body, limit))  # "ValueError: what it says", a note: one line each
    return "\n".join(chunks)


class LogSafeFilter(logging.Filter):
    """Escapes control characters and cuts over-long arguments in every record a handler writes.

    Put it on handlers (a logger's filters do not see records from its children): a peer's
    AE title, UID, user name or URL then cannot forge a log line or flood the log. Each
    argument is escaped and cut to ``arg_limit`` characters, the whole message escaped and cut
    to ``message_limit``; numbers pass as they are. A traceback keeps its lines (the frames
    are ours) but each exception's message is one escaped line. A record logged with
    ``extra=WHOLE`` is escaped but not cut (an audit message logged as the last resort).
    """

    def __init__(self, arg_limit: int = ARG_LIMIT, message_limit: int = MESSAGE_LIMIT) -> None:
        super().__init__()
        self.arg_limit = arg_limit
        self.message_limit = message_limit

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record in place (once, whichever handler sees it first); never drops one."""
        if getattr(record, "logsafe", False):
            return True
        whole = bool(getattr(record, "logsafe_whole", False))
        arg_limit = None if whole else self.arg_limit
        args = record.args
        if isinstance(args, Mapping):
            record.args = {key: _arg(value, arg_limit) for key, value in args.items()}
        elif args:
            record.args = tuple(_arg(value, arg_limit) for value in args)
        try:
            message = record.getMessage()
        except Exception:
            record.args = args  # e.g. %d of an object with __int__: the original arguments
            try:
                message = record.getMessage()
            except Exception:
                return True  # a bad format: logging reports the call itself
        record.msg = clean(message.rstrip("\r\n"), None if whole else self.message_limit)
        record.args = None
        exc_info = record.exc_info
        if exc_info is not None and exc_info[0] is not None and exc_info[1] is not None:
            record.exc_text = format_exception((exc_info[0], exc_info[1], exc_info[2]), self.message_limit)
        elif record.exc_text:
            record.exc_text = _lines(record.exc_text, self.message_limit)
        if record.stack_info:
            record.stack_info = _lines(record.stack_info, self.message_limit)
        record.__dict__["logsafe"] = True
        return True


# Pass as ``extra=`` to log a long text (an audit message) escaped but whole.
WHOLE: dict[str, Any] = {"logsafe_whole": True}


def install(
    logger: logging.Logger | None = None, *, arg_limit: int = ARG_LIMIT, message_limit: int = MESSAGE_LIMIT
) -> LogSafeFilter:
    """Put one LogSafeFilter on every handler of ``logger`` (default: the root) that has none yet.

    Call it after the handlers are set up (``logging.basicConfig``); handlers added later need
    ``handler.addFilter(LogSafeFilter())`` of their own.
    """
    target = logger if logger is not None else logging.getLogger()
    safe = LogSafeFilter(arg_limit, message_limit)
    for handler in target.handlers:
        if not any(isinstance(f, LogSafeFilter) for f in handler.filters):
            handler.addFilter(safe)
    return safe
