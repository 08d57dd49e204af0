"""PS3.5 7.1 and 6.1.2: plain data elements encoded in Little Endian without pydicom (answers, fast)."""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

from pydicom.datadict import dictionary_VR

# PS3.5 7.1.2: VRs with a 2-byte reserved field and a 4-byte length in Explicit VR.
_LONG_VRS = frozenset(("OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"))
# PS3.5 6.1.2.3: the VRs whose text the Specific Character Set applies to.
_CHARSET_VRS = frozenset(("SH", "LO", "ST", "LT", "UC", "UT", "PN"))
_TEXT_VRS = frozenset(("AE", "AS", "CS", "DA", "DS", "DT", "IS", "TM", "UI", "UR")) | _CHARSET_VRS
_BINARY = {
    "US": struct.Struct("<H"),
    "UL": struct.Struct("<I"),
    "SS": struct.Struct("<h"),
    "SL": struct.Struct("<i"),
}
# PS3.3 C.12.1.1.2 defined terms -> Python codecs, for the single-byte and UTF-8 character sets
# (code extensions, ISO 2022 ..., are left to pydicom).
CODECS = {
    "": "ascii",
    "ISO_IR 6": "ascii",
    "ISO_IR 100": "latin_1",
    "ISO_IR 101": "iso8859_2",
    "ISO_IR 109": "iso8859_3",
    "ISO_IR 110": "iso8859_4",
    "ISO_IR 144": "iso8859_5",
    "ISO_IR 127": "iso8859_6",
    "ISO_IR 126": "iso8859_7",
    "ISO_IR 138": "iso8859_8",
    "ISO_IR 148": "iso8859_9",
    "ISO_IR 203": "iso8859_15",
    "ISO_IR 166": "tis_620",
    "ISO_IR 13": "shift_jis",
    "ISO_IR 192": "utf_8",
    "GB18030": "gb18030",
    "GBK": "gbk",
}
_HEADER_SHORT = struct.Struct("<HH2sH")
_HEADER_LONG = struct.Struct("<HH2s2xI")
_HEADER_IMPLICIT = struct.Struct("<HHI")


def codec_of(charset: Sequence[str]) -> str | None:
    """The Python codec of a single character set (no code extensions), or None."""
    terms = [t.strip() for t in charset] or [""]
    if len(terms) > 1:
        return None
    return CODECS.get(terms[0])


def _value_bytes(vr: str, value: Any, codec: str) -> bytes | None:
    if value is None:
        return b""
    if vr in _BINARY:
        values = value if isinstance(value, list | tuple) else [value]
        return b"".join(_BINARY[vr].pack(int(v)) for v in values)
    if vr not in _TEXT_VRS:
        return None
    text = "\\".join(str(v) for v in value) if isinstance(value, list | tuple) else str(value)
    data = text.encode(codec if vr in _CHARSET_VRS else "ascii")
    if len(data) % 2:
        data += b"\0" if vr == "UI" else b" "  # PS3.5 6.2: padded to an even length
    return data


def encode_elements(
    elements: Iterable[tuple[int, str, Any]], *, implicit: bool, codec: str = "ascii"
) -> bytes | None:
    """Encode (tag, VR, value) in ascending tag order; None when a value needs pydicom.

    Values may be None (zero length), str, int, or a list of them; any other VR or
    value type (sequences, binary data, floats) returns None, and so does text the
    codec cannot encode.
    """
    out: list[bytes] = []
    try:
        for tag, vr, value in elements:
            data = _value_bytes(vr, value, codec)
            if data is None:
                return None
            group, element = tag >> 16, tag & 0xFFFF
            if implicit:
                out.append(_HEADER_IMPLICIT.pack(group, element, len(data)))
            elif vr in _LONG_VRS:
                out.append(_HEADER_LONG.pack(group, element, vr.encode("ascii"), len(data)))
            else:
                if len(data) > 0xFFFF:
                    return None
                out.append(_HEADER_SHORT.pack(group, element, vr.encode("ascii"), len(data)))
            out.append(data)
    except (UnicodeError, ValueError, TypeError):
        return None
    return b"".join(out)


# ---------------------------------------------------------------- decoding flat data sets

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_TAG = struct.Struct("<HH")
_UNDEFINED = 0xFFFFFFFF


@lru_cache(maxsize=4096)
def _dictionary_vr(tag: int) -> str:
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return "UN"
    return str(vr).split(" or ")[0]


class MalformedDataSet(ValueError):
    """The bytes are not a data set: an element runs past the end, or a VR is not a VR."""


# PS3.5 Table 6.2-1: every VR an explicit VR element may carry.
_ALL_VRS = _LONG_VRS | _TEXT_VRS | frozenset(("AT", "FD", "FL", "SL", "SS", "UL", "US"))


def decode_flat(data: bytes, *, implicit: bool) -> list[tuple[int, str, bytes]] | None:
    """The elements of a data set without sequences, as (tag, VR, value bytes).

    PS3.5 7.1.2 / 7.1.3: explicit or implicit VR, Little Endian. A sequence or an
    undefined length returns None (pydicom reads those); bytes that cannot be a data
    set (cut short, an unknown VR) raise MalformedDataSet.
    """
    out: list[tuple[int, str, bytes]] = []
    pos, end = 0, len(data)
    while pos < end:
        if pos + 8 > end:
            raise MalformedDataSet("the data set ends inside an element header")
        group, element = _TAG.unpack_from(data, pos)
        tag = group << 16 | element
        if implicit:
            vr = _dictionary_vr(tag)
            length = _U32.unpack_from(data, pos + 4)[0]
            pos += 8
        else:
            vr = data[pos + 4 : pos + 6].decode("latin-1")
            if vr not in _ALL_VRS:
                raise MalformedDataSet(f"({group:04X},{element:04X}) has no valid VR ({vr!r})")
            if vr in _LONG_VRS:
                if pos + 12 > end:
                    raise MalformedDataSet("the data set ends inside an element header")
                length = _U32.unpack_from(data, pos + 8)[0]
                pos += 12
            else:
                length = _U16.unpack_from(data, pos + 6)[0]
                pos += 8
        if vr == "SQ" or length == _UNDEFINED:
            return None
        if pos + length > end:
            raise MalformedDataSet(f"({group:04X},{element:04X}) runs past the end of the data set")
        out.append((tag, vr, data[pos : pos + length]))
        pos += length
    return out


def text_value(vr: str, raw: bytes, codec: str) -> str | None:
    """A flat element's value as text (PS3.5 6.2): decoded, padding removed; None for binary VRs."""
    if vr in _BINARY:
        size = _BINARY[vr].size
        return "\\".join(str(_BINARY[vr].unpack_from(raw, i)[0]) for i in range(0, len(raw) - size + 1, size))
    if vr not in _TEXT_VRS:
        return None
    return raw.decode(codec if vr in _CHARSET_VRS else "latin-1").rstrip("\0 ")
