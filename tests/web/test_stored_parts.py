"""WADO-RS as stored: the batched reader gives exactly the multipart body its Content-Length
announces, whatever the batch size, and refuses to lie when a file changes under it."""

from __future__ import annotations

import email

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pacsnode.web import retrieve
from pacsnode.web.multipart import MultipartWriter


def _read_all(parts) -> bytes:
    out = bytearray()
    while (batch := parts.read()) is not None:
        assert len(batch) > 0
        out += batch
    return bytes(out)


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=5000), min_size=0, max_size=6),
    batch=st.integers(min_value=1, max_value=6000),
)
def test_batches_make_the_whole_body(tmp_path_factory, sizes, batch):
    folder = tmp_path_factory.mktemp("files")
    writer = MultipartWriter("b0undary")
    items, expected = [], b""
    for i, size in enumerate(sizes):
        data = bytes((i * 7 + j) % 251 for j in range(size))
        path = folder / f"{i}.dcm"
        path.write_bytes(data)
        head = writer.head("application/dicom")
        items.append((head, path, size))
        expected += head + data
    close = writer.close()
    expected += close
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(retrieve, "_BATCH", batch)
        parts = retrieve._StoredParts(items, close)
        body = _read_all(parts)
    assert body == expected
    assert parts.length == len(expected)
    if sizes:
        message = email.message_from_bytes(
            b'Content-Type: multipart/related; boundary="b0undary"\r\n\r\n' + body
        )
        assert [p.get_payload(decode=True) for p in message.get_payload()] == [
            path.read_bytes() for _, path, _ in items
        ]


def test_a_file_that_shrinks_is_an_error_not_a_short_body(tmp_path):
    path = tmp_path / "a.dcm"
    path.write_bytes(b"x" * 100)
    writer = MultipartWriter("b")
    parts = retrieve._StoredParts([(writer.head("application/dicom"), path, 100)], writer.close())
    path.write_bytes(b"x" * 10)
    with pytest.raises(OSError, match="changed size"):
        _read_all(parts)
