"""PS3.5 7.1, 8.2 and Annex A: reading a data set in its transfer syntax and re-encoding it in another.

Used wherever a data set must change encoding: `pacsnode store` and `import`
when a peer or the archive will not take a file's own transfer syntax, and the
Query/Retrieve SCUs for identifiers.  pydicom does the element work (and its
pixel data handlers the decompression); this module says which encoding a
transfer syntax means, fixes what pydicom leaves alone (byte order of OW/OL/OF/
OD/OV values, odd-length binary values) and wraps failures in `TranscodeError`.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from typing import BinaryIO

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.tag import BaseTag
from pydicom.uid import UID

from pacsnode.data.uids import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
)

# PS3.5 Table 6.2-1: the two-letter VR codes an explicit VR element can carry.
VR_CODES = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM".split()
    + b"UC UI UL UN UR US UT UV".split()
)
# Values held as raw bytes whose byte order depends on the transfer syntax: width in bytes.
_SWAP_WIDTH = {"OW": 2, "OL": 4, "OF": 4, "OD": 8, "OV": 8}
# What transcode() writes: the encodings every peer reads (PS3.5 10.1), and deflate (PS3.5 A.5).
TARGETS = (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN, DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN)

StopWhen = Callable[[BaseTag, str | None, int], bool]


class TranscodeError(Exception):
    """The data set cannot be read in its transfer syntax, or re-encoded in the one asked for."""


class Encoding:
    """(implicit VR, little endian) of the three uncompressed encodings (PS3.5 7.1, 7.3)."""

    IMPLICIT_LE = (True, True)
    EXPLICIT_LE = (False, True)
    EXPLICIT_BE = (False, False)


def encoding_of(transfer_syntax: str) -> tuple[bool, bool]:
    """How a data set in this transfer syntax is encoded (PS3.5 A: every other one is explicit LE)."""
    if transfer_syntax == IMPLICIT_VR_LITTLE_ENDIAN:
        return Encoding.IMPLICIT_LE
    if transfer_syntax == EXPLICIT_VR_BIG_ENDIAN:
        return Encoding.EXPLICIT_BE
    return Encoding.EXPLICIT_LE


def uncompressed_for(encoding: tuple[bool, bool]) -> str:
    """The uncompressed transfer syntax of an encoding (PS3.5 A.1, A.2, A.3)."""
    return {
        Encoding.IMPLICIT_LE: IMPLICIT_VR_LITTLE_ENDIAN,
        Encoding.EXPLICIT_BE: EXPLICIT_VR_BIG_ENDIAN,
    }.get(encoding, EXPLICIT_VR_LITTLE_ENDIAN)


def is_encapsulated(transfer_syntax: str) -> bool:
    """True when Pixel Data is encapsulated (compressed); a syntax pydicom does not know counts as such."""
    if transfer_syntax in (
        IMPLICIT_VR_LITTLE_ENDIAN,
        EXPLICIT_VR_LITTLE_ENDIAN,
        EXPLICIT_VR_BIG_ENDIAN,
        DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    ):
        return False
    uid = UID(transfer_syntax)
    return not uid.is_transfer_syntax or uid.is_encapsulated


def guess_encoding(head: bytes, size: int) -> tuple[bool, bool] | None:
    """The encoding of a data set whose first bytes are `head` (of `size` in all), or None.

    The first element of a data set is in a low, even group (almost always 0008);
    an explicit VR element has a VR code at bytes 4-5 (PS3.5 7.1.2).
    """
    if len(head) < 8:
        return None
    group_le, group_be = struct.unpack_from("<H", head)[0], struct.unpack_from(">H", head)[0]
    vr = head[4:6]
    if 0x0004 <= group_le <= 0x0040 and not group_le & 1:
        if vr in VR_CODES:
            return Encoding.EXPLICIT_LE
        length = struct.unpack_from("<I", head, 4)[0]
        if length == 0xFFFFFFFF or length <= size:
            return Encoding.IMPLICIT_LE
    if 0x0004 <= group_be <= 0x0040 and not group_be & 1 and vr in VR_CODES:
        return Encoding.EXPLICIT_BE
    return None


def first_line(exc: BaseException, limit: int = 240) -> str:
    """The exception on one line: pydicom puts whole tracebacks into some messages."""
    lines = [line.strip() for line in str(exc).strip().splitlines()]
    lines = [line for line in lines if line and not line.startswith(("Traceback", "File ", "^"))]
    text = f"{type(exc).__name__}: {' '.join(lines)}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------- reading


def decode(
    source: bytes | BinaryIO,
    transfer_syntax: str,
    *,
    encoding: tuple[bool, bool] | None = None,
    stop_when: StopWhen | None = None,
) -> Dataset:
    """A data set (bytes, or a stream at its first byte) read in its transfer syntax.

    The result carries a file_meta with the transfer syntax, as pydicom's pixel
    data handlers need.  Text is decoded lazily with the data set's own Specific
    Character Set (PS3.5 6.1.2.3).  `encoding` overrides the one of the transfer
    syntax; without it, a data set that says it is encapsulated but starts with an
    element of another encoding (a File Meta Information that lies) is read as
    what its bytes are.
    """
    fp: BinaryIO = io.BytesIO(source) if isinstance(source, bytes | bytearray | memoryview) else source
    if transfer_syntax == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        # PS3.5 A.5: the whole data set is one raw deflate stream (RFC 1951, no zlib header).
        fp = io.BytesIO(zlib.decompressobj(-zlib.MAX_WBITS).decompress(fp.read()))
    if encoding is None:
        encoding = encoding_of(transfer_syntax)
        if is_encapsulated(transfer_syntax):
            start = fp.tell()
            size = fp.seek(0, io.SEEK_END) - start
            fp.seek(start)
            encoding = guess_encoding(fp.read(16), size) or encoding
            fp.seek(start)
    ds = read_dataset(fp, encoding[0], encoding[1], stop_when=stop_when)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    return ds


# ---------------------------------------------------------------- writing


def _swap_byte_order(ds: Dataset) -> None:
    """Big to little endian for the values pydicom keeps as raw bytes (OW, OL, OF, OD, OV)."""
    for elem in ds.iterall():
        width = _SWAP_WIDTH.get(str(elem.VR))
        value = elem.value
        if width and isinstance(value, bytes | bytearray) and len(value) % width == 0:
            swapped = bytearray(len(value))
            for i in range(width):
                # byte i of each value moves to position width-1-i
                swapped[width - 1 - i :: width] = value[i::width]
            elem.value = bytes(swapped)


def _pad_odd_values(ds: Dataset) -> None:
    """PS3.5 7.1.1: pad an odd-length binary value with one NUL (pydicom pads text, not bytes)."""
    for elem in ds.iterall():
        value = elem.value
        if isinstance(value, bytes | bytearray) and len(value) % 2:
            elem.value = bytes(value) + b"\0"


def encode(ds: Dataset, transfer_syntax: str) -> bytes:
    """A data set with native (or already encapsulated) values, written in one of `TARGETS`.

    Raises `TranscodeError` for any other transfer syntax or a value pydicom cannot write.
    """
    if transfer_syntax not in TARGETS:
        raise TranscodeError(f"cannot encode in {UID(transfer_syntax).name or transfer_syntax}")
    out = DicomBytesIO()
    out.is_little_endian = True
    out.is_implicit_VR = transfer_syntax == IMPLICIT_VR_LITTLE_ENDIAN
    try:
        write_dataset(out, ds)
    except Exception as exc:
        raise TranscodeError(first_line(exc)) from exc
    data = out.getvalue()
    if transfer_syntax == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        packer = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -zlib.MAX_WBITS)
        data = packer.compress(data) + packer.flush()  # PS3.5 A.5: raw deflate, no zlib header
        if len(data) % 2:
            data += b"\0"  # PS3.5 A.5: an odd-length deflated stream is padded with one NUL
    return data


def transcode(dataset: bytes, source: str, target: str) -> bytes:
    """Re-encode a bare data set (no File Meta Information) from transfer syntax `source` to `target`.

    `target` is Explicit or Implicit VR Little Endian, or Deflated Explicit VR
    Little Endian.  PS3.5 8.2 / A.4: encapsulated pixel data are decoded with
    pydicom's handlers and stored native; Big Endian values are swapped; odd-length
    values are padded.  The SOP Instance UID is kept (a change of transfer syntax is
    not a new instance; Lossy Image Compression (0028,2110) stays as it was).
    """
    if target not in TARGETS:
        raise TranscodeError(f"cannot convert to {UID(target).name or target}")
    if not UID(source).is_transfer_syntax:
        raise TranscodeError(f"no decoder for the pixel data of transfer syntax {source}")
    try:
        ds = decode(dataset, source)
    except Exception as exc:
        raise TranscodeError(f"unreadable data set: {first_line(exc)}") from exc
    try:
        if is_encapsulated(source) and "PixelData" in ds:
            ds.decompress(generate_instance_uid=False)
        elif source == EXPLICIT_VR_BIG_ENDIAN:
            _swap_byte_order(ds)
        _pad_odd_values(ds)
    except Exception as exc:
        raise TranscodeError(first_line(exc)) from exc
    return encode(ds, target)
