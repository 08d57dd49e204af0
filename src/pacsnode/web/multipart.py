"""RFC 2046 5.1 / RFC 2387 multipart/related as PS3.18 8.6 and 8.7 use it (STOW-RS in, WADO-RS out)."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Mapping

__all__ = [
    "MultipartError",
    "MultipartReader",
    "MultipartWriter",
    "Part",
    "close_delimiter",
    "format_media_type",
    "new_boundary",
    "parse_media_type",
    "part_head",
]

# Bytes of a boundary the reader accepts: RFC 2046 5.1.1 allows 70; we take longer ones from lenient senders.
_MAX_READ_BOUNDARY = 256

# RFC 9110 5.6.2 token (tchar), which also covers RFC 2045 5.1 token for the names we meet.
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_TOKEN_RE = re.compile(_TOKEN)
_TYPE_RE = re.compile(rf"[ \t]*({_TOKEN})/({_TOKEN})[ \t]*")
# RFC 9110 5.6.6: parameters = *( OWS ";" OWS [ parameter ] ); RFC 2045 5.1: value := token / quoted-string.
# An unquoted value runs to the next ';' or blank (lenient: boundaries like 'a/b' arrive unquoted).
_QUOTED = r'"((?:[^"\\]|\\.)*)"'
_PARAM_RE = re.compile(rf'[ \t]*;[ \t]*(?:({_TOKEN})[ \t]*=[ \t]*(?:{_QUOTED}|([^\s;"]+)))?[ \t]*', re.S)
_ESCAPE_RE = re.compile(r"\\(.)", re.S)
# RFC 2046 5.1.1: boundary := 0*69<bchars> bcharsnospace (the writer is strict).
_BOUNDARY_RE = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
_HEADER_VALUE_FORBIDDEN = re.compile(r"[\r\n\0]")
_PADDING = b" \t"


class MultipartError(ValueError):
    """A malformed multipart body or media type; the message is fit for an HTTP 400 response body."""


def _shorten(value: str) -> str:
    return repr(value if len(value) <= 80 else value[:77] + "...")


def parse_media_type(value: str) -> tuple[str, dict[str, str]]:
    """Split a Content-Type value (or one Accept element) into the lower-cased media type and its parameters.

    Parameter names are lower-cased, values unquoted and un-escaped (RFC 9110 5.6.4) and otherwise kept as
    sent (a boundary is case-sensitive). Raises `MultipartError` on anything that is not a media type.
    """
    match = _TYPE_RE.match(value)
    if match is None:
        raise MultipartError(f"malformed media type {_shorten(value)}")
    media_type = f"{match[1]}/{match[2]}".lower()  # RFC 2045 5.1: type and subtype are case-insensitive
    params: dict[str, str] = {}
    pos = match.end()
    while pos < len(value):
        match = _PARAM_RE.match(value, pos)
        if match is None:
            raise MultipartError(f"malformed media type parameters in {_shorten(value)}")
        pos = match.end()
        name, quoted, token = match[1], match[2], match[3]
        if name is None:  # RFC 9110 5.6.6: an empty parameter
            continue
        name = name.lower()  # RFC 2045 5.1: parameter names are case-insensitive
        if name in params:
            raise MultipartError(f"duplicate parameter {name!r} in media type {_shorten(value)}")
        params[name] = token if quoted is None else _ESCAPE_RE.sub(r"\1", quoted)  # RFC 9110 5.6.4
    return media_type, params


def format_media_type(media_type: str, params: Mapping[str, str] | None = None) -> str:
    """The inverse of `parse_media_type`: ``type/subtype; name=value ...``, quoting values that need it."""
    if _TYPE_RE.fullmatch(media_type) is None:
        raise ValueError(f"not a media type: {media_type!r}")
    out = [media_type.strip()]
    for name, value in (params or {}).items():
        if _TOKEN_RE.fullmatch(name) is None or _HEADER_VALUE_FORBIDDEN.search(value):
            raise ValueError(f"invalid media type parameter {name!r}={value!r}")
        if _TOKEN_RE.fullmatch(value) is None:  # RFC 2045 5.1: otherwise a quoted-string
            value = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        out.append(f"{name}={value}")
    return "; ".join(out)


def new_boundary() -> str:
    """A fresh random boundary: 32 hex digits, valid bchars (RFC 2046 5.1.1) and never seen in any body."""
    return uuid.uuid4().hex


def _check_boundary(boundary: str) -> bytes:
    if _BOUNDARY_RE.fullmatch(boundary) is None:  # RFC 2046 5.1.1
        raise ValueError(f"invalid multipart boundary {boundary!r}")
    return boundary.encode("ascii")


def part_head(
    boundary: str, content_type: str, headers: Mapping[str, str] | None = None, *, first: bool = False
) -> bytes:
    """The delimiter and header block that open one body part; the part's bytes follow it.

    The first part of a body is opened with ``first=True`` (the body starts with ``--boundary``); every
    later part with ``first=False`` (a CRLF ends the previous part). ``headers`` are extra part headers
    such as Content-Location; they are written after Content-Type.
    """
    dash_boundary = b"--" + _check_boundary(boundary)
    lines = [
        dash_boundary if first else b"\r\n" + dash_boundary,  # RFC 2046 5.1.1: CRLF dash-boundary
        b"Content-Type: " + _header_value(content_type),
    ]
    for name, value in (headers or {}).items():
        if _TOKEN_RE.fullmatch(name) is None or name.lower() == "content-type":
            raise ValueError(f"invalid part header name {name!r}")
        lines.append(name.encode("ascii") + b": " + _header_value(value))
    lines.append(b"\r\n")  # RFC 2046 5.1.1: the header block ends with an empty line
    return b"\r\n".join(lines)


def _header_value(value: str) -> bytes:
    if _HEADER_VALUE_FORBIDDEN.search(value):
        raise ValueError(f"invalid part header value {value!r}")
    return value.encode("latin-1")


def close_delimiter(boundary: str) -> bytes:
    """The close delimiter that ends a multipart body (RFC 2046 5.1.1), with a final CRLF."""
    return b"\r\n--" + _check_boundary(boundary) + b"--\r\n"


class MultipartWriter:
    """Builds the pieces of one multipart/related body, for a streaming response.

    ``head()`` before each part's bytes, ``close()`` once at the end; ``content_type()`` is the value of
    the response's Content-Type header.
    """

    __slots__ = ("_closed", "_first", "boundary")

    def __init__(self, boundary: str | None = None) -> None:
        self.boundary = new_boundary() if boundary is None else boundary
        _check_boundary(self.boundary)
        self._first = True
        self._closed = False

    def content_type(self, root_type: str) -> str:
        """``multipart/related; type="<root_type>"; boundary=...`` (RFC 2387 3.1, PS3.18 8.7.3)."""
        return format_media_type("multipart/related", {"type": root_type, "boundary": self.boundary})

    def head(self, content_type: str, headers: Mapping[str, str] | None = None) -> bytes:
        """The delimiter and headers that open the next part (see `part_head`)."""
        if self._closed:
            raise ValueError("multipart body already closed")
        head = part_head(self.boundary, content_type, headers, first=self._first)
        self._first = False
        return head

    def close(self) -> bytes:
        """The close delimiter; nothing may follow it."""
        if self._closed:
            raise ValueError("multipart body already closed")
        self._closed = True
        return close_delimiter(self.boundary)


class Part:
    """One body part being read: its headers, then its bytes by ``async for`` or `read`.

    The part's bytes are read from the reader's body as they are asked for; `MultipartReader.next_part`
    skips whatever of them was not read. A part left behind that way yields nothing more.
    """

    __slots__ = ("_reader", "content_type", "headers", "params")

    def __init__(self, reader: MultipartReader, headers: dict[str, str]) -> None:
        self._reader = reader
        self.headers = headers
        value = headers.get("content-type")
        # RFC 2046 5.1: no Content-Type means text/plain; us-ascii, which we leave to the caller as ''.
        self.content_type, self.params = ("", {}) if value is None else parse_media_type(value)

    def __repr__(self) -> str:
        return f"Part(headers={self.headers!r})"

    def __aiter__(self) -> AsyncIterator[bytes]:
        """The part's bytes in pieces no bigger than about one input chunk plus the delimiter."""
        return self

    async def __anext__(self) -> bytes:
        """The next piece of the part's bytes."""
        chunk = await self._reader._part_chunk(self)
        if chunk is None:
            raise StopAsyncIteration
        return chunk

    async def read(self, limit: int) -> bytes:
        """The rest of the part's bytes at once; `MultipartError` if they are more than ``limit``."""
        data = bytearray()
        async for chunk in self:
            if len(data) + len(chunk) > limit:
                raise MultipartError(f"multipart part longer than {limit} bytes")
            data += chunk
        return bytes(data)


_PREAMBLE, _BODY, _DELIMITER, _DONE = 0, 1, 2, 3


class MultipartReader:
    """Reads a multipart body from an async iterator of byte chunks of any size, one part at a time.

    Memory stays bounded by about one input chunk plus the delimiter (plus ``max_header_size`` while
    reading part headers), whatever the sizes of the parts. The preamble and the epilogue are ignored;
    the body may start with ``--boundary`` directly. Not safe for concurrent use by several tasks.
    After it raises `MultipartError` the reader raises the same error again.
    """

    __slots__ = (
        "_body",
        "_buf",
        "_delimiter",
        "_error",
        "_part",
        "_parts",
        "_state",
        "max_header_size",
        "max_parts",
    )

    def __init__(
        self,
        body: AsyncIterator[bytes],
        boundary: str,
        *,
        max_header_size: int = 16384,
        max_parts: int = 100_000,
    ) -> None:
        if not boundary:
            raise MultipartError("multipart body without a boundary parameter")
        if len(boundary) > _MAX_READ_BOUNDARY or "\r" in boundary or "\n" in boundary:
            raise MultipartError("invalid multipart boundary")
        self._body = body
        self._delimiter = b"\r\n--" + boundary.encode("utf-8")  # RFC 2046 5.1.1: CRLF dash-boundary
        # RFC 2046 5.1.1: the first dash-boundary may open the body without a CRLF before it.
        self._buf = bytearray(b"\r\n")
        self._state = _PREAMBLE
        self._part: Part | None = None
        self._parts = 0
        self._error: MultipartError | None = None
        self.max_header_size = max_header_size
        self.max_parts = max_parts

    async def next_part(self) -> Part | None:
        """The next part, its headers read; None after the close delimiter.

        Skips (reads and drops) whatever the caller left unread of the previous part.
        """
        if self._error is not None:
            raise self._error
        try:
            return await self._next_part()
        except MultipartError as exc:
            self._fail(exc)
            raise

    def _fail(self, exc: MultipartError) -> None:
        self._error = exc
        self._state = _DONE
        self._part = None
        self._buf = bytearray()

    async def _next_part(self) -> Part | None:
        while self._state == _BODY:  # skip the unread rest of the previous part
            await self._body_chunk()
        if self._state == _PREAMBLE:
            await self._skip_preamble()
        if self._state == _DONE:
            return None
        if await self._delimiter_line():
            self._state = _DONE  # RFC 2046 5.1.1: the epilogue after the close delimiter is ignored
            self._part = None
            self._buf = bytearray()
            return None
        if self._parts >= self.max_parts:
            raise MultipartError(f"multipart body with more than {self.max_parts} parts")
        part = Part(self, await self._headers())
        self._parts += 1
        self._part = part
        self._state = _BODY
        return part

    async def _more(self) -> bool:
        """Append the next non-empty chunk of the body to the buffer; False at its end."""
        while True:
            try:
                chunk = await anext(self._body)
            except StopAsyncIteration:
                return False
            if chunk:
                self._buf += chunk
                return True

    def _take(self, n: int) -> bytes:
        with memoryview(self._buf) as view:
            out = bytes(view[:n])
        del self._buf[:n]
        return out

    async def _skip_preamble(self) -> None:
        buf, delimiter = self._buf, self._delimiter
        while (index := buf.find(delimiter)) < 0:
            del buf[: max(0, len(buf) - len(delimiter) + 1)]  # RFC 2046 5.1.1: the preamble is ignored
            if not await self._more():
                raise MultipartError("multipart body without a boundary delimiter")
        del buf[: index + len(delimiter)]
        self._state = _DELIMITER

    async def _delimiter_line(self) -> bool:
        """Read what follows a delimiter; True if it was the close delimiter."""
        buf = self._buf
        while len(buf) < 2:
            if not await self._more():
                raise MultipartError("multipart body ends before the close delimiter")
        if buf.startswith(b"--"):  # RFC 2046 5.1.1: close-delimiter := delimiter "--"
            return True
        start = 0
        while (end := buf.find(b"\r\n", start)) < 0:
            if len(buf) > self.max_header_size:
                raise MultipartError("malformed multipart boundary delimiter line")
            start = max(0, len(buf) - 1)
            if not await self._more():
                raise MultipartError("multipart body ends before the close delimiter")
        if buf[:end].strip(_PADDING):  # RFC 2046 5.1.1: delimiter transport-padding CRLF
            raise MultipartError("malformed multipart boundary delimiter line")
        del buf[: end + 2]
        return False

    async def _headers(self) -> dict[str, str]:
        buf = self._buf
        start = 0
        while True:
            if buf.startswith(b"\r\n"):  # RFC 2046 5.1.1: a part may have no header fields at all
                del buf[:2]
                return {}
            end = buf.find(b"\r\n\r\n", start)
            if end >= 0:
                break
            if len(buf) > self.max_header_size:
                raise MultipartError(f"multipart part headers longer than {self.max_header_size} bytes")
            start = max(0, len(buf) - 3)
            if not await self._more():
                raise MultipartError("multipart body ends before the close delimiter")
        if end > self.max_header_size:
            raise MultipartError(f"multipart part headers longer than {self.max_header_size} bytes")
        block = self._take(end).decode("latin-1")
        del buf[:4]
        headers: dict[str, str] = {}
        name = ""
        for line in block.split("\r\n"):
            if line[:1] in (" ", "\t") and name:  # RFC 5322 4.2: obsolete folding continues the field
                headers[name] = f"{headers[name]} {line.strip()}".strip()
                continue
            raw_name, colon, value = line.partition(":")
            name = raw_name.strip().lower()  # RFC 2045 / RFC 5322 1.2.2: field names are case-insensitive
            if not colon or _TOKEN_RE.fullmatch(name) is None:
                raise MultipartError("malformed multipart part header")
            value = value.strip()
            # RFC 9110 5.3: a repeated field is the comma-joined list of its values
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        return headers

    async def _part_chunk(self, part: Part) -> bytes | None:
        """The next piece of ``part``'s bytes, or None at its end (the delimiter after it consumed)."""
        if self._error is not None:
            raise self._error
        if part is not self._part or self._state != _BODY:
            return None
        try:
            return await self._body_chunk()
        except MultipartError as exc:
            self._fail(exc)
            raise

    async def _body_chunk(self) -> bytes | None:
        buf, delimiter = self._buf, self._delimiter
        while True:
            index = buf.find(delimiter)
            if index >= 0:  # RFC 2046 5.1.1: the CRLF before "--boundary" belongs to the delimiter
                data = self._take(index)
                del buf[: len(delimiter)]
                self._state = _DELIMITER
                return data or None
            # Hold back what may be the start of a delimiter split across chunks; hand out the rest.
            safe = len(buf) - len(delimiter) + 1
            if safe > 0:
                return self._take(safe)
            if not await self._more():
                raise MultipartError("multipart body ends inside a part (no closing boundary delimiter)")
