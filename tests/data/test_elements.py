"""The answer fast path (data/elements.py) writes the same bytes as pydicom."""

from __future__ import annotations

from typing import Any

import pytest
from pydicom.dataset import Dataset

from pacsnode.data.elements import codec_of, encode_elements
from pacsnode.data.transcode import encode
from pacsnode.data.uids import EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN

ELEMENTS: list[tuple[int, str, Any]] = [
    (0x00080020, "DA", "20200105"),
    (0x00080030, "TM", "101500.5"),
    (0x00080052, "CS", "STUDY"),
    (0x00080054, "AE", "PACSNODE"),
    (0x00080061, "CS", ["CT", "SR"]),
    (0x00080090, "PN", None),
    (0x00081030, "LO", "odd"),
    (0x00100010, "PN", "Müller^Jürgen"),
    (0x00100020, "LO", "P%3_"),
    (0x0020000D, "UI", "1.2.3.45"),
    (0x00201208, "IS", "12"),
    (0x00280010, "US", 512),
    (0x00280011, "US", [1, 2]),
]


@pytest.mark.parametrize("charset", ["ISO_IR 100", "ISO_IR 192"])
@pytest.mark.parametrize("transfer_syntax", [EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN])
def test_same_bytes_as_pydicom(charset: str, transfer_syntax: str) -> None:
    elements = [(0x00080005, "CS", charset), *ELEMENTS]
    codec = codec_of([charset])
    assert codec is not None
    fast = encode_elements(elements, implicit=transfer_syntax == IMPLICIT_VR_LITTLE_ENDIAN, codec=codec)
    ds = Dataset()
    for tag, vr, value in elements:
        ds.add_new(tag, vr, value)
    assert fast == encode(ds, transfer_syntax)


def test_what_it_cannot_encode_goes_to_pydicom() -> None:
    assert encode_elements([(0x00100010, "PN", "山田")], implicit=False, codec="latin_1") is None
    assert encode_elements([(0x00081110, "SQ", [])], implicit=False) is None
    assert encode_elements([(0x00189087, "FD", 1.5)], implicit=False) is None
    assert codec_of(["", "ISO 2022 IR 87"]) is None
    assert codec_of([]) == "ascii"


@pytest.mark.parametrize("transfer_syntax", [EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN])
def test_flat_decoding_agrees_with_pydicom(transfer_syntax: str) -> None:
    from pacsnode.archive.query import elements_of
    from pacsnode.data.elements import decode_flat, text_value
    from pacsnode.data.transcode import decode

    ds = Dataset()
    for tag, vr, value in [(0x00080005, "CS", "ISO_IR 100"), *ELEMENTS]:
        ds.add_new(tag, vr, value)
    data = encode(ds, transfer_syntax)
    flat = decode_flat(data, implicit=transfer_syntax == IMPLICIT_VR_LITTLE_ENDIAN)
    assert flat is not None
    fast = [(tag, vr, text_value(vr, raw, "latin_1")) for tag, vr, raw in flat]
    slow = elements_of(decode(data, transfer_syntax))
    assert [(t, v or None) for t, _, v in fast] == [(t, v or None) for t, _, v in slow]


def test_flat_decoding_gives_up_on_what_it_cannot_read() -> None:
    from pacsnode.data.elements import MalformedDataSet, decode_flat

    item = Dataset()
    item.CodeValue = "X"
    ds = Dataset()
    ds.ProcedureCodeSequence = [item]
    assert decode_flat(encode(ds, EXPLICIT_VR_LITTLE_ENDIAN), implicit=False) is None  # pydicom's job
    for broken, implicit in (
        (b"\x10\x00\x10\x00PN\x10\x00abc", False),  # the value runs past the end
        (b"\x10\x00", True),  # half a header
        (b"\x10\x00\x20\x00\x01\x02\x04\x00ABCD", False),  # not a VR
    ):
        with pytest.raises(MalformedDataSet):
            decode_flat(broken, implicit=implicit)
