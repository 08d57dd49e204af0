"""PS3.10 7.1: where a file's data set starts. The fast reader of the File Meta Information must
find what pydicom's reader finds (UIDs, offset, preamble), on every file of the shared corpus
and on made-up edge cases, and leave the file at the same place."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from pacsnode.data import part10
from pacsnode.data.part10 import Part10Layout, file_meta, meta_values, read_layout
from peerkit import TESTDATA

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
DATASET = b"\x08\x00\x16\x00UI\x1a\x00" + b"1.2.840.10008.5.1.4.1.1.2\0"


def _both(
    data: bytes, start: int = 0
) -> tuple[tuple[Part10Layout | str, int], tuple[Part10Layout | str, int]]:
    """(layout or error, position after) by the fast reader and by pydicom's, from ``start``."""
    out = []
    for reader in (read_layout, part10._read_layout_pydicom):
        fp = io.BytesIO(data)
        fp.seek(start)
        try:
            result: Part10Layout | str = reader(fp)
        except Exception as exc:
            result = type(exc).__name__
        out.append((result, fp.tell()))
    return out[0], out[1]


def _corpus() -> list[Path]:
    return sorted(
        p for p in TESTDATA.rglob("*") if p.is_file() and p.suffix.lower() not in (".tsv", ".md", ".json")
    )


def test_the_fast_reader_agrees_with_pydicom_on_the_whole_corpus() -> None:
    files = _corpus()
    assert len(files) > 50, "the shared test data is missing"
    fast_read = 0
    for path in files:
        data = path.read_bytes()
        fast, slow = _both(data)
        assert fast == slow, path
        fast_read += meta_values(data[:4096], 132) is not None and data[128:132] == b"DICM"
    assert fast_read > len(files) // 2  # most files take the fast way


@pytest.mark.parametrize("preamble", [True, False])
def test_our_own_meta_is_read_the_fast_way(preamble: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    meta = file_meta(CT_IMAGE, "1.2.3.4.5", EXPLICIT, "MODALITY")
    data = meta if preamble else meta[132:]
    monkeypatch.setattr(part10, "_read_layout_pydicom", _refuse)
    fp = io.BytesIO(b"junk" + data + DATASET)
    fp.seek(4)
    layout = read_layout(fp)
    assert layout == Part10Layout(EXPLICIT, CT_IMAGE, "1.2.3.4.5", 4 + len(data), preamble)
    assert fp.read() == DATASET  # left at the data set


def _refuse(fp: object) -> Part10Layout:
    raise AssertionError("pydicom's reader was used")


@pytest.mark.parametrize(
    "case",
    [
        "padded with spaces",
        "a multi-valued UID",
        "a non-ASCII byte",
        "an unknown VR",
        "meta past the first 4 KiB",
        "meta to the end of the file",
        "an element longer than the file",
        "no preamble and no meta",
        "empty",
    ],
)
def test_edge_cases_agree_with_pydicom(case: str) -> None:
    meta = file_meta(CT_IMAGE, "1.2.3.4.5", EXPLICIT, "")
    body = DATASET
    if case == "padded with spaces":
        meta = meta.replace(b"1.2.3.4.5\0", b"1.2.3.4.5 ")
    elif case == "a multi-valued UID":
        meta = meta.replace(b"1.2.3.4.5\0", b"1.2\\3.4.56")
    elif case == "a non-ASCII byte":
        meta = meta.replace(b"1.2.3.4.5\0", b"1.2.3.4.\xe9\0")
    elif case == "an unknown VR":
        meta = meta.replace(b"\x02\x00\x13\x00SH", b"\x02\x00\x13\x00xx")
    elif case == "meta past the first 4 KiB":
        private = b"\x02\x00\x00\x01OB\0\0" + (5000).to_bytes(4, "little") + bytes(5000)
        meta += private
    elif case == "meta to the end of the file":
        body = b""
    elif case == "an element longer than the file":
        meta = meta[:-20]
        body = b""
    elif case == "no preamble and no meta":
        meta = b""
    elif case == "empty":
        meta, body = b"", b""
    assert len(meta) % 2 == 0  # the cases change no element's length
    fast, slow = _both(meta + body)
    assert fast == slow
