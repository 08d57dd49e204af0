"""RFC 2046 5.1 / RFC 2387 multipart/related (PS3.18 8.6, 8.7): writer, streaming reader, interop."""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import hashlib
import io
import os
import random
import tracemalloc
from collections.abc import AsyncIterator, Iterable

import pytest
import requests
from dicomweb_client.web import DICOMwebClient
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pacsnode.web.multipart import (
    MultipartError,
    MultipartReader,
    MultipartWriter,
    Part,
    close_delimiter,
    format_media_type,
    new_boundary,
    parse_media_type,
    part_head,
)

BOUNDARY = "b0undary-x"
DELIMITER = b"\r\n--" + BOUNDARY.encode()


async def chunks_of(data: bytes, sizes: Iterable[int]) -> AsyncIterator[bytes]:
    """``data`` cut at the given sizes (cycled), as Starlette's request.stream() would hand it over."""
    pos = 0
    sizes = list(sizes)
    i = 0
    while pos < len(data):
        size = sizes[i % len(sizes)]
        i += 1
        yield data[pos : pos + size]
        pos += size
    yield b""  # Starlette ends the stream with an empty chunk


async def read_all(reader: MultipartReader) -> list[tuple[dict[str, str], bytes]]:
    parts = []
    while (part := await reader.next_part()) is not None:
        parts.append((part.headers, b"".join([chunk async for chunk in part])))
    return parts


async def parse(
    data: bytes, sizes: Iterable[int] = (1 << 16,), **kwargs: int
) -> list[tuple[dict[str, str], bytes]]:
    return await read_all(MultipartReader(chunks_of(data, sizes), BOUNDARY, **kwargs))


def build(bodies: list[bytes], boundary: str = BOUNDARY, content_type: str = "application/dicom") -> bytes:
    writer = MultipartWriter(boundary)
    out = bytearray()
    for i, body in enumerate(bodies):
        out += writer.head(content_type, {"Content-Location": f"/part/{i}"}) + body
    return bytes(out + writer.close())


# Pieces that look like a delimiter without being one, to build part bodies from.
TRICKY = [
    b"\r\n",
    b"\r",
    b"\n",
    b"-",
    b"--",
    b"\r\n--",
    b"--" + BOUNDARY.encode(),
    b"--" + BOUNDARY.encode() + b"--",
    BOUNDARY.encode(),
    *(DELIMITER[:k] for k in range(1, len(DELIMITER))),
    b"\r\n-" + BOUNDARY.encode(),
    b"\r\n--" + BOUNDARY.upper().encode(),
    b"\r\n\r\n",
]
bodies = st.lists(st.one_of(st.binary(max_size=40), st.sampled_from(TRICKY)), max_size=12).map(b"".join)
chunkings = st.one_of(
    st.just([1]),
    st.just([7]),
    st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=20),
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(parts=st.lists(bodies, max_size=6), sizes=chunkings)
def test_round_trip(parts: list[bytes], sizes: list[int]) -> None:
    for body in parts:
        assume(DELIMITER not in body)  # RFC 2046 5.1.1: the boundary never occurs in the content
    data = build(parts)
    result = asyncio.run(parse(data, sizes))
    assert [body for _, body in result] == parts
    assert [headers for headers, _ in result] == [
        {"content-type": "application/dicom", "content-location": f"/part/{i}"} for i in range(len(parts))
    ]


@settings(max_examples=100)
@given(
    preamble=st.binary(max_size=50),
    epilogue=st.binary(max_size=50),
    parts=st.lists(bodies, min_size=1, max_size=3),
    sizes=chunkings,
)
def test_preamble_and_epilogue_are_ignored(
    preamble: bytes, epilogue: bytes, parts: list[bytes], sizes: list[int]
) -> None:
    assume(DELIMITER not in b"\r\n" + preamble and all(DELIMITER not in body for body in parts))
    data = preamble + b"\r\n" + build(parts) + epilogue + DELIMITER + b"\r\n\r\nnot a part"
    result = asyncio.run(parse(data, sizes))
    assert [body for _, body in result] == parts


async def test_part_api() -> None:
    writer = MultipartWriter(BOUNDARY)
    data = (
        writer.head('application/dicom; transfer-syntax="1.2.840.10008.1.2.1"')
        + b"DICM"
        + writer.head("application/json")
        + b'{"a": 1}'
        + writer.close()
    )
    reader = MultipartReader(chunks_of(data, [3]), BOUNDARY)
    first = await reader.next_part()
    assert first is not None
    assert first.content_type == "application/dicom"
    assert first.params == {"transfer-syntax": "1.2.840.10008.1.2.1"}
    second = await reader.next_part()  # skips the unread bytes of the first part
    assert second is not None
    assert [chunk async for chunk in first] == []
    assert second.content_type == "application/json" and second.params == {}
    assert await second.read(100) == b'{"a": 1}'
    assert await second.read(100) == b""
    assert await reader.next_part() is None
    assert await reader.next_part() is None


async def test_transport_padding_no_headers_empty_bodies_and_close_without_crlf() -> None:
    data = (
        b"--" + BOUNDARY.encode() + b" \t \r\n"  # RFC 2046 5.1.1 transport padding
        b"\r\n"  # no header fields: the part's bytes start right after the empty line
        b"abc" + DELIMITER + b"\t\r\n"
        b"Content-Type: Application/DICOM+JSON ; Charset=utf-8\r\n"
        b"X-Folded: one\r\n two\r\n\r\n" + DELIMITER + b"\r\n"
        b"Content-Type: text/plain\r\n\r\n" + DELIMITER + b"--"
    )
    for sizes in ([1], [2], [len(data)]):
        reader = MultipartReader(chunks_of(data, sizes), BOUNDARY)
        part = await reader.next_part()
        assert part is not None and part.headers == {} and part.content_type == "" and part.params == {}
        assert await part.read(10) == b"abc"
        part = await reader.next_part()
        assert part is not None
        assert part.content_type == "application/dicom+json" and part.params == {"charset": "utf-8"}
        assert part.headers["x-folded"] == "one two"
        assert await part.read(10) == b""
        part = await reader.next_part()
        assert part is not None and part.content_type == "text/plain"
        assert [chunk async for chunk in part] == []
        assert await reader.next_part() is None


async def test_no_parts_at_all() -> None:
    assert await parse(close_delimiter(BOUNDARY)) == []
    assert await parse(b"--" + BOUNDARY.encode() + b"--") == []


async def test_repeated_part_header_is_joined() -> None:
    data = b"--" + BOUNDARY.encode() + b"\r\nX-A: 1\r\nx-a: 2\r\n\r\nz" + close_delimiter(BOUNDARY)
    assert await parse(data) == [({"x-a": "1, 2"}, b"z")]


MALFORMED = {
    "no opening delimiter": (b"just some text, no delimiter\r\n", "without a boundary delimiter"),
    "empty body": (b"", "without a boundary delimiter"),
    "unterminated part": (b"--" + BOUNDARY.encode() + b"\r\n\r\nabc", "ends inside a part"),
    "ends after a delimiter": (b"--" + BOUNDARY.encode() + b"\r\n\r\nabc" + DELIMITER, "before the close"),
    "ends after a padded delimiter": (b"--" + BOUNDARY.encode() + b"   ", "before the close"),
    "ends in the headers": (b"--" + BOUNDARY.encode() + b"\r\nContent-Type: a/b\r\n", "before the close"),
    "ends before the headers": (b"--" + BOUNDARY.encode() + b"\r\n", "before the close"),
    "garbage after a delimiter": (b"--" + BOUNDARY.encode() + b"X\r\n\r\n", "malformed multipart boundary"),
    "header without a colon": (
        b"--" + BOUNDARY.encode() + b"\r\nbogus\r\n\r\n",
        "malformed multipart part header",
    ),
    "header with a bad name": (
        b"--" + BOUNDARY.encode() + b"\r\nA B: c\r\n\r\n",
        "malformed multipart part header",
    ),
    "headers too large": (
        b"--" + BOUNDARY.encode() + b"\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n" + close_delimiter(BOUNDARY),
        "headers longer than 16384 bytes",
    ),
    "headers too large, never ending": (
        b"--" + BOUNDARY.encode() + b"\r\nX-Big: " + b"a" * 20000,
        "headers longer than 16384 bytes",
    ),
    "bad part content type": (
        b"--" + BOUNDARY.encode() + b"\r\nContent-Type: nonsense\r\n\r\n" + close_delimiter(BOUNDARY),
        "malformed media type",
    ),
}


@pytest.mark.parametrize("sizes", [[1], [7], [1 << 16]], ids=["1", "7", "64k"])
@pytest.mark.parametrize(("data", "message"), MALFORMED.values(), ids=MALFORMED.keys())
async def test_malformed_body(data: bytes, message: str, sizes: list[int]) -> None:
    reader = MultipartReader(chunks_of(data, sizes), BOUNDARY)
    with pytest.raises(MultipartError, match=message):
        await read_all(reader)
    with pytest.raises(MultipartError, match=message):  # the reader stays failed
        await reader.next_part()


async def test_unterminated_part_raises_while_reading_the_part() -> None:
    reader = MultipartReader(chunks_of(b"--" + BOUNDARY.encode() + b"\r\n\r\n" + b"x" * 100, [10]), BOUNDARY)
    part = await reader.next_part()
    assert part is not None
    with pytest.raises(MultipartError, match="ends inside a part"):
        await part.read(1000)


@pytest.mark.parametrize("boundary", ["", "x" * 300, "a\r\nb"])
def test_bad_boundary_for_reader(boundary: str) -> None:
    with pytest.raises(MultipartError, match="boundary"):
        MultipartReader(chunks_of(b"", [1]), boundary)


async def test_too_many_parts() -> None:
    data = build([b"a", b"b", b"c"])
    assert len(await parse(data, max_parts=3)) == 3
    with pytest.raises(MultipartError, match="more than 2 parts"):
        await parse(data, max_parts=2)


async def test_read_limit() -> None:
    reader = MultipartReader(chunks_of(build([b"x" * 101, b"y"]), [10]), BOUNDARY)
    part = await reader.next_part()
    assert part is not None
    with pytest.raises(MultipartError, match="longer than 100 bytes"):
        await part.read(100)
    part = await reader.next_part()  # the rest of the oversized part is skipped
    assert part is not None and await part.read(1) == b"y"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("application/dicom", ("application/dicom", {})),
        ("  Application/DICOM  ", ("application/dicom", {})),
        (
            'multipart/related; type="application/dicom"; boundary=abc',
            ("multipart/related", {"type": "application/dicom", "boundary": "abc"}),
        ),
        (
            'Multipart/Related;TYPE="application/dicom+xml";Boundary="AbC d"',
            ("multipart/related", {"type": "application/dicom+xml", "boundary": "AbC d"}),
        ),
        ("multipart/related; type=application/dicom", ("multipart/related", {"type": "application/dicom"})),
        (
            'application/dicom; transfer-syntax=1.2.840.10008.1.2.4.50; q="0.5"',
            ("application/dicom", {"transfer-syntax": "1.2.840.10008.1.2.4.50", "q": "0.5"}),
        ),
        (r'a/b; x="q\"uo\\te;d"', ("a/b", {"x": 'q"uo\\te;d'})),
        ('a/b; x=""', ("a/b", {"x": ""})),
        ("a/b;", ("a/b", {})),
        ("a/b ; ; c = d ;", ("a/b", {"c": "d"})),
        ("*/*", ("*/*", {})),
        ("image/*; q=0.9", ("image/*", {"q": "0.9"})),
    ],
)
def test_parse_media_type(value: str, expected: tuple[str, dict[str, str]]) -> None:
    assert parse_media_type(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "application",
        "/dicom",
        "application/",
        "application/dicom garbage",
        "application/dicom; boundary",
        "application/dicom; boundary=",
        'application/dicom; boundary="unterminated',
        "application/dicom; a=1; A=2",
        "application/dicom, image/jpeg",
        "a b/c",
        "text/plain; x=a b",
    ],
)
def test_parse_media_type_rejects(value: str) -> None:
    with pytest.raises(MultipartError, match="media type"):
        parse_media_type(value)


@given(
    params=st.dictionaries(
        st.from_regex(r"[a-z][a-z0-9\-]{0,10}", fullmatch=True),
        st.text(st.characters(codec="latin-1", exclude_characters="\r\n\0"), max_size=20),
        max_size=4,
    )
)
def test_format_media_type_round_trips(params: dict[str, str]) -> None:
    assert parse_media_type(format_media_type("multipart/related", params)) == ("multipart/related", params)


def test_writer_pieces() -> None:
    assert part_head("b", "a/b", first=True) == b"--b\r\nContent-Type: a/b\r\n\r\n"
    assert part_head("b", "a/b", {"Content-Location": "/x"}) == (
        b"\r\n--b\r\nContent-Type: a/b\r\nContent-Location: /x\r\n\r\n"
    )
    assert close_delimiter("b") == b"\r\n--b--\r\n"
    writer = MultipartWriter("b")
    assert (
        writer.content_type("application/dicom") == 'multipart/related; type="application/dicom"; boundary=b'
    )
    assert writer.head("a/b").startswith(b"--b\r\n")
    assert writer.head("a/b").startswith(b"\r\n--b\r\n")
    assert writer.close() == b"\r\n--b--\r\n"
    with pytest.raises(ValueError, match="closed"):
        writer.head("a/b")


@pytest.mark.parametrize("boundary", ["", "x" * 71, "ends in space ", "semi;colon", "new\nline"])
def test_writer_rejects_bad_boundary(boundary: str) -> None:
    with pytest.raises(ValueError, match="boundary"):
        MultipartWriter(boundary)


@pytest.mark.parametrize(
    ("content_type", "headers"),
    [
        ("a/b\r\nX-Injected: 1", None),
        ("a/b", {"X": "1\r\n2"}),
        ("a/b", {"Bad Name": "1"}),
        ("a/b", {"content-type": "x/y"}),
    ],
)
def test_writer_rejects_bad_headers(content_type: str, headers: dict[str, str] | None) -> None:
    with pytest.raises(ValueError, match="invalid part header"):
        part_head("b", content_type, headers)


def test_new_boundary() -> None:
    boundaries = {new_boundary() for _ in range(100)}
    assert len(boundaries) == 100
    for boundary in boundaries:
        MultipartWriter(boundary)  # valid bchars
        assert parse_media_type(f"multipart/related; boundary={boundary}")[1]["boundary"] == boundary


INTEROP_BODIES = [
    b"",
    b"DICM" + bytes(range(256)) * 3,
    b'{"00080018": {"vr": "UI"}}',
    b"\r\n\r\n--x\r\n",
    b"z",
]


def _response(data: bytes, content_type: str) -> requests.Response:
    response = requests.Response()
    response.status_code = 200
    response.headers["Content-Type"] = content_type
    response.raw = io.BytesIO(data)
    return response


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("chunk_size", [1, 7, 1 << 20])
def test_dicomweb_client_decodes_writer_output(stream: bool, chunk_size: int) -> None:
    writer = MultipartWriter()
    data = b"".join(writer.head("application/dicom") + body for body in INTEROP_BODIES) + writer.close()
    client = DICOMwebClient("http://localhost:8042/dicom-web", chunk_size=chunk_size)
    response = _response(data, writer.content_type("application/dicom"))
    assert list(client._decode_multipart_message(response, stream=stream)) == INTEROP_BODIES


async def test_reader_reads_dicomweb_client_encoding() -> None:
    content_type = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
    data = DICOMwebClient._encode_multipart_message(INTEROP_BODIES, content_type)
    _, params = parse_media_type(content_type)
    result = await read_all(MultipartReader(chunks_of(data, [5]), params["boundary"]))
    assert [body for _, body in result] == INTEROP_BODIES
    assert {headers["content-type"] for headers, _ in result} == {"application/dicom"}


def test_email_parser_reads_writer_output() -> None:
    writer = MultipartWriter()
    bodies = [b'{"a": [1, 2]}', b"line one\r\nline two\r\n", b"binary \x00\x01\x02 end"]
    data = writer.head("application/dicom+json", {"Content-Location": "/studies/1"}) + bodies[0]
    data += writer.head("text/plain") + bodies[1]
    data += writer.head("application/octet-stream") + bodies[2] + writer.close()
    header = f"Content-Type: {writer.content_type('application/dicom+json')}\r\nMIME-Version: 1.0\r\n\r\n"
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(header.encode() + data)
    assert message.is_multipart() and not message.defects
    assert message.get_content_type() == "multipart/related"
    assert message.get_param("type") == "application/dicom+json"
    parts = message.get_payload()
    assert isinstance(parts, list)
    assert [part.get_content_type() for part in parts] == [
        "application/dicom+json",
        "text/plain",
        "application/octet-stream",
    ]
    assert parts[0]["Content-Location"] == "/studies/1"
    assert [part.get_payload(decode=True) for part in parts] == bodies


async def test_large_part_streams_in_bounded_chunks() -> None:
    """A 200 MB part in 64 KiB chunks: no piece handed out over 128 KiB, nothing accumulated."""
    chunk, count = 1 << 16, 3200
    sent = hashlib.sha256()
    block = os.urandom(chunk)
    boundary = new_boundary()
    delimiter = b"\r\n--" + boundary.encode()

    async def body() -> AsyncIterator[bytes]:
        yield part_head(boundary, "application/dicom", first=True)
        for i in range(count):
            piece = block[i % 251 :] + block[: i % 251]  # rotated so the pieces differ
            sent.update(piece)
            if i == count - 1:
                yield piece + delimiter[:5]  # the delimiter split across chunks
                yield delimiter[5:] + b"--\r\n"
            else:
                yield piece

    tracemalloc.start()
    try:
        reader = MultipartReader(body(), boundary)
        part = await reader.next_part()
        assert part is not None
        received, total, largest = hashlib.sha256(), 0, 0
        async for piece in part:
            received.update(piece)
            total += len(piece)
            largest = max(largest, len(piece))
        assert await reader.next_part() is None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == chunk * count
    assert received.hexdigest() == sent.hexdigest()
    assert largest <= 128 * 1024
    assert peak < 2 * 1024 * 1024


async def test_drop_unread_large_part() -> None:
    """next_part() drains an unread part without holding it."""
    boundary = "bb"

    async def body() -> AsyncIterator[bytes]:
        yield b"--bb\r\n\r\n"
        for _ in range(100):
            yield random.randbytes(1 << 16).replace(b"\r\n--bb", b"xxxxxx")
        yield b"\r\n--bb\r\n\r\nsecond\r\n--bb--"

    reader = MultipartReader(body(), boundary)
    assert await reader.next_part() is not None
    part = await reader.next_part()
    assert isinstance(part, Part) and await part.read(10) == b"second"
    assert await reader.next_part() is None
