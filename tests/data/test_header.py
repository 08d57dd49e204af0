"""The fast header reader (PS3.5 7.1) gives the same index keys as pydicom, on every test file."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydicom import dcmread

from pacsnode.archive.records import instance_record, read_keys
from pacsnode.data.header import HeaderError, read_header
from pacsnode.data.part10 import read_layout

TESTDATA = Path(__file__).resolve().parents[3] / "shared" / "testdata"
FILES = sorted(
    p
    for p in TESTDATA.rglob("*")
    if p.is_file() and p.suffix not in {".tsv", ".md", ".txt", ".png"} and "DICOMDIR" not in p.name
)
WHEN = datetime(2026, 1, 1, tzinfo=UTC)


def _record(header, ts):
    return instance_record(
        header, transfer_syntax_uid=ts, path="p", size=1, sha256="h", source_ae_title="A", received_at=WHEN
    )


def test_the_corpus_is_there() -> None:
    assert len(FILES) > 200


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(TESTDATA)))
def test_fast_reader_agrees_with_pydicom(path: Path) -> None:
    data = path.read_bytes()
    with path.open("rb") as fp:
        try:
            layout = read_layout(fp)
        except Exception:
            pytest.skip("not a Part 10 file")
    if not layout.transfer_syntax_uid:
        pytest.skip("no File Meta Information")
    fast = read_keys(data, layout.dataset_offset, layout.transfer_syntax_uid)
    try:
        ds = dcmread(path, stop_before_pixels=True)
        slow = _record(ds, layout.transfer_syntax_uid)
    except Exception:
        slow = None
    if fast is None:
        # Not handled by the fast reader (big endian, deflate, odd encodings): pydicom's turn.
        return
    try:
        quick = _record(fast, layout.transfer_syntax_uid)
    except Exception:
        quick = None
    if slow is None:
        return  # pydicom cannot read it either: the pipeline refuses it either way
    assert quick == slow


def test_undefined_length_sequences_are_skipped() -> None:
    # (0008,1140) SQ of undefined length holding one undefined-length item, then (0010,0010).
    body = (
        b"\x08\x00\x40\x11SQ\x00\x00\xff\xff\xff\xff"
        b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
        b"\x08\x00\x50\x11UI\x04\x001.2\x00"
        b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
        b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
        b"\x10\x00\x10\x00PN\x08\x00Doe^John"
    )
    header = read_header(body, 0, "1.2.840.10008.1.2.1", {0x00100010: b"PN"})
    assert header.text(0x00100010) == "Doe^John"


def test_truncated_header_is_refused() -> None:
    body = b"\x10\x00\x10\x00PN\x40\x00Doe"
    with pytest.raises(HeaderError):
        read_header(body, 0, "1.2.840.10008.1.2.1", {0x00100010: b"PN"})


def test_big_endian_goes_to_pydicom() -> None:
    with pytest.raises(HeaderError):
        read_header(b"", 0, "1.2.840.10008.1.2.2", {0x00100010: b"PN"})


def test_truncation_is_found_in_the_truncated_files_only() -> None:
    from pacsnode.data.header import truncation

    flagged = set()
    for path in FILES:
        with path.open("rb") as fp:
            try:
                layout = read_layout(fp)
            except Exception:
                continue
        if layout.transfer_syntax_uid and truncation(
            path.read_bytes(), layout.dataset_offset, layout.transfer_syntax_uid
        ):
            flagged.add(str(path.relative_to(TESTDATA)))
    assert flagged == {
        "malformed/MR_3GB_bulkdata_truncated.dcm",
        "malformed/MR_j2k_pixeldata_too_short.dcm",
        "malformed/MR_truncated_pixeldata.dcm",
        "malformed/RTPLAN_truncated.dcm",
    }


def test_whole_reading_finds_what_truncation_finds() -> None:
    """read_keys(whole=True) walks the data set once: it raises Truncated exactly where
    truncation() reports a cut, at every cut point of real files, and otherwise reads
    the same keys as without it."""
    from pacsnode.data.header import Truncated, truncation

    checked = 0
    for name in ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm"):
        found = [p for p in FILES if p.name == name]
        if not found:
            continue
        data = found[0].read_bytes()
        with found[0].open("rb") as fp:
            layout = read_layout(fp)
        offset, ts = layout.dataset_offset, layout.transfer_syntax_uid
        for cut in range(offset + 1, len(data) + 1, max(1, (len(data) - offset) // 97)):
            part = data[:cut]
            expected = truncation(part, offset, ts)
            try:
                header = read_keys(part, offset, ts, whole=True)
            except Truncated:
                assert expected is not None, (name, cut)
            else:
                assert expected is None, (name, cut)
                plain = read_keys(part, offset, ts)
                assert (header and header.values) == (plain and plain.values), (name, cut)
            checked += 1
    assert checked > 100
